"""A few-shot learning library's MAML: oscarknagg/few-shot @
672de83a853cc2d5e9fe304dc100b4a735c10c15, ``few_shot/maml.py``, ``meta_gradient_step``.

What it computes, read off ``meta_gradient_step``: each task's batch is the ``n·k``
support points followed by the ``q·k`` query points, labelled ``create_nshot_task_label``
(0…0, 1…1, …: balanced and sorted by class, as the audit's batches are); the fast weights
start as ``model.named_parameters()`` and take ``inner_train_steps`` steps ``w − lr·g``
with ``create_graph = (order == 2)``, through ``model.functional_forward``. With order 2
the mean of the query losses is backpropagated (second-order MAML, mean over tasks); with
order 1 the mean of the per-task gradients w.r.t. the fast weights is written into
``.grad`` by hooks on a dummy backward pass (first-order MAML).

``few_shot.core`` imports ``collections.Iterable`` (removed in Python 3.10) through
``few_shot.callbacks``: the adapter restores that alias before importing. It wraps the
audit's model in a module with the ``functional_forward(x, weights)`` the function calls,
passes an SGD optimiser with learning rate 0, and reads ``.grad``:

    python -m metagrad_bench.real_code.few_shot --repo PATH [--out DIR]
"""

from __future__ import annotations

import collections
import collections.abc
import sys
from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from metagrad.testing import module_target
from metagrad.testing.modules import fresh_model

from . import _common

SETTINGS = dict(steps=2, inner_lr=0.1)


class Functional(nn.Module):
    """The audit's model with the ``functional_forward(x, weights)`` few-shot's code calls."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)

    def functional_forward(self, x, weights):
        inner = {name.removeprefix("model."): w for name, w in weights.items()}
        return functional_call(self.model, inner, (x,))


def adapter(order: int):
    def factory(*, steps, inner_lr):
        if not hasattr(collections, "Iterable"):
            collections.Iterable = collections.abc.Iterable  # type: ignore[attr-defined]
        from few_shot.maml import meta_gradient_step

        def run(model, tasks):
            (x, y), (x_q, _) = tasks.train, tasks.val
            k = int(y[0].max()) + 1
            n, q = x.shape[1] // k, x_q.shape[1] // k
            net = Functional(model)
            meta_gradient_step(net, torch.optim.SGD(net.parameters(), lr=0.0), F.cross_entropy,
                               torch.cat([x, x_q], 1), None, n, k, q, order, steps, inner_lr,
                               True, "cpu")

        return run

    return factory


def independent_check() -> str:
    """order 2: Π(I − αH(θ⁽ᵏ⁾))∇L_val(φ); order 1: ∇L_val(φ); means over tasks."""
    given, flat = _common.problem("softmax", "maml", SETTINGS)
    second, first = [], []
    for train, val in flat.tasks:
        points = [flat.theta]
        for _ in range(SETTINGS["steps"]):
            points.append(points[-1] - SETTINGS["inner_lr"] * flat.g(points[-1], train))
        g = flat.g(points[-1], val)
        first.append(g)
        for x in reversed(points[:-1]):
            g = g - SETTINGS["inner_lr"] * flat.h(x, train) @ g
        second.append(g)
    errs = []
    for order, expected in ((2, second), (1, first)):
        model = fresh_model(given.module, given.params)
        adapter(order)(**SETTINGS)(model, given.tasks)
        got = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        errs.append(_common.rel(got, torch.stack(expected).mean(0)))
    return (f"few-shot meta_gradient_step on softmax, T=3: order 2 vs second-order MAML "
            f"{errs[0]:.1e}, order 1 vs ∇L_val(φ) {errs[1]:.1e} (relative errors)")


def main(argv: Sequence[str] | None = None) -> int:
    args = _common.parse(__doc__.splitlines()[0], argv)
    _common.on_path(args.repo, "few_shot/maml.py")
    runs = [
        _common.Run("few_shot-maml", "maml", module_target(adapter(2), "cross_entropy"),
                    SETTINGS, "few_shot/maml.py meta_gradient_step, order=2"),
        _common.Run("few_shot-fomaml", "fomaml", module_target(adapter(1), "cross_entropy"),
                    SETTINGS, "few_shot/maml.py meta_gradient_step, order=1"),
    ]
    return _common.run_all(runs, [independent_check], args.out, "few_shot", args.repo)


if __name__ == "__main__":
    sys.exit(main())
