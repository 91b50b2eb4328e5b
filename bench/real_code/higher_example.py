"""The MAML example of a widely used library: facebookresearch/higher @
15a247ac06cac0d22601322677daff0dcfff062e, ``examples/maml-omniglot.py``, function ``train``.

What it computes, read off ``train``: per task, ``higher.innerloop_ctx(net, inner_opt,
copy_initial_weights=False)`` and ``n_inner_iter = 5`` differentiable SGD steps with
``lr = 1e-1`` (both fixed in the function) on ``F.cross_entropy``; then
``qry_loss.backward()`` per task, accumulating into ``net``'s ``.grad``, and
``meta_opt.step()``: the *sum* over tasks of second-order MAML gradients (the query losses
are averaged only for the log).

The adapter imports the example file (its data loader, ``support.omniglot_loaders``, needs
torchvision and the dataset: a stand-in module with the same name is registered before
the import, since ``train`` only receives the loader as an argument), gives ``train`` a
loader whose ``next()`` returns the audit's tasks shaped ``[task, set, 1, 1, features]``,
``nn.Sequential(nn.Flatten(), model)`` as ``net`` and an SGD meta-optimizer with learning
rate 0, and reads the model's ``.grad``. The settings are those fixed in ``train``:

    python -m metagrad_bench.real_code.higher_example --repo PATH [--out DIR]
"""

from __future__ import annotations

import importlib.util
import sys
import types
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from metagrad.testing import module_target
from metagrad.testing.modules import fresh_model

from . import _common

SETTINGS = dict(steps=5, inner_lr=0.1)
EXAMPLE: dict[str, types.ModuleType] = {}


def _load(repo: Path) -> types.ModuleType:
    if "module" not in EXAMPLE:
        stand_in = types.ModuleType("support.omniglot_loaders")
        stand_in.OmniglotNShot = object  # type: ignore[attr-defined]
        sys.modules.setdefault("support", types.ModuleType("support"))
        sys.modules["support.omniglot_loaders"] = stand_in
        spec = importlib.util.spec_from_file_location(
            "higher_maml_omniglot", repo / "examples" / "maml-omniglot.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        EXAMPLE["module"] = module
    return EXAMPLE["module"]


class _Loader:
    """What ``train`` reads of its ``db``: ``x_train.shape[0] // batchsz`` batches (one) and
    ``next()``."""

    def __init__(self, tasks):
        (x, y), (x_q, y_q) = tasks.train, tasks.val
        self.batch = (x[:, :, None, None, :], y, x_q[:, :, None, None, :], y_q)
        self.x_train = x
        self.batchsz = x.shape[0]

    def next(self, mode="train"):
        return self.batch


def target(model, tasks):
    """A module target (not a factory: ``train`` fixes its settings)."""
    module = EXAMPLE["module"]
    net = nn.Sequential(nn.Flatten(), model)
    meta_opt = torch.optim.SGD(net.parameters(), lr=0.0)
    module.train(_Loader(tasks), net, "cpu", meta_opt, 0, [])


def independent_check() -> str:
    """Σ over tasks (not the mean) of Π(I − αH(θ⁽ᵏ⁾))∇L_val(φ), K = 5, α = 0.1."""
    given, flat = _common.problem("softmax", "maml", SETTINGS)
    per_task = []
    for train, val in flat.tasks:
        points = [flat.theta]
        for _ in range(SETTINGS["steps"]):
            points.append(points[-1] - SETTINGS["inner_lr"] * flat.g(points[-1], train))
        g = flat.g(points[-1], val)
        for x in reversed(points[:-1]):
            g = g - SETTINGS["inner_lr"] * flat.h(x, train) @ g
        per_task.append(g)
    model = fresh_model(given.module, given.params)
    target(model, given.tasks)
    got = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    err = _common.rel(got, torch.stack(per_task).sum(0))
    return (f"higher examples/maml-omniglot.py train() on softmax, T=3: the sum over tasks of "
            f"second-order MAML vs the function: relative error {err:.1e}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _common.parse(__doc__.splitlines()[0], argv)
    repo = _common.on_path(args.repo, "examples/maml-omniglot.py")
    _load(repo)
    runs = [_common.Run("higher_example-maml", "maml", module_target(target, "cross_entropy"),
                        SETTINGS, "examples/maml-omniglot.py train")]
    return _common.run_all(runs, [independent_check], args.out, "higher_example", args.repo)


if __name__ == "__main__":
    sys.exit(main())
