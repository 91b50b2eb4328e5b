"""A widely copied MAML implementation: dragen1860/MAML-Pytorch @
98a00d41724c133bd29619a2fb2cc46dd128a368 (``meta.py``, ``Meta.forward``).

What it computes, read off ``meta.py``: per task, ``update_step`` inner steps
``fast_weights = w − update_lr·grad`` with ``grad = torch.autograd.grad(loss, weights)``
*without* ``create_graph=True``, so every inner gradient is a constant; the query losses of
the last step are summed over tasks, divided by ``task_num`` and backpropagated into the
``Learner``'s ``vars``; then the Adam meta-optimizer steps. The meta-gradient is therefore
∇L_val(φ) averaged over tasks: first-order MAML, whatever the name says. With
``update_step`` = 1 the only query loss that could be backpropagated is computed under
``torch.no_grad()``, so the step raises.

The adapter builds ``Meta`` with the config ``[("flatten", []), ("linear", [out, in])]``
for the battery's ``nn.Linear`` model (the ``Learner`` has no 0-dim parameter, so the other
two models raise ``NotImplementedError``: "not run"), inputs shaped ``[task, set, 1, 1,
features]`` as ``forward`` unpacks them, meta learning rate 0, and reads ``.grad`` of the
``Learner``'s ``vars``. Settings: the repository's ``miniimagenet_train.py`` defaults
(``--update_step 5 --update_lr 0.01``):

    python -m metagrad_bench.real_code.maml_pytorch --repo PATH [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

import torch

from metagrad.testing import module_target
from metagrad.testing.modules import fresh_model

from . import _common

SETTINGS = dict(steps=5, inner_lr=0.01)


def adapter(*, steps, inner_lr):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)  # `name is 'linear'` in learner.py
        from meta import Meta

    def run(model, tasks):
        if not isinstance(model, torch.nn.Linear):
            raise NotImplementedError(f"the Learner config has no layer for "
                                      f"{type(model).__name__} (a 0-dim parameter)")
        out_f, in_f = model.weight.shape
        (x, y), (x_q, y_q) = tasks.train, tasks.val
        args = argparse.Namespace(update_lr=inner_lr, meta_lr=0.0, n_way=out_f,
                                  k_spt=x.shape[1] // out_f, k_qry=x_q.shape[1] // out_f,
                                  task_num=tasks.num_tasks, update_step=steps,
                                  update_step_test=steps, imgc=1, imgsz=1)
        meta = Meta(args, [("flatten", []), ("linear", [out_f, in_f])]).double()
        with torch.no_grad():
            meta.net.vars[0].copy_(model.weight)
            meta.net.vars[1].copy_(model.bias)
        meta(x[:, :, None, None, :], y, x_q[:, :, None, None, :], y_q)
        return {"weight": meta.net.vars[0].grad, "bias": meta.net.vars[1].grad}

    return run


def independent_check() -> str:
    """mean over tasks of ∇L_val(φ), φ after K plain GD steps, against ``Meta.forward``."""
    given, flat = _common.problem("softmax", "maml", SETTINGS)
    per_task = []
    for train, val in flat.tasks:
        phi = flat.theta
        for _ in range(SETTINGS["steps"]):
            phi = phi - SETTINGS["inner_lr"] * flat.g(phi, train)
        per_task.append(flat.g(phi, val))
    got = adapter(**SETTINGS)(fresh_model(given.module, given.params), given.tasks)
    err = _common.rel(_common.flat_result(got, flat.names), torch.stack(per_task).mean(0))
    return (f"MAML-Pytorch Meta.forward on softmax, T=3, K=5: first-order ∇L_val(φ) vs the "
            f"class: relative error {err:.1e}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _common.parse(__doc__.splitlines()[0], argv)
    _common.on_path(args.repo, "meta.py")
    runs = [_common.Run("maml_pytorch-maml", "maml", module_target(adapter, "cross_entropy"),
                        SETTINGS, "meta.py Meta.forward")]
    return _common.run_all(runs, [independent_check], args.out, "maml_pytorch", args.repo)


if __name__ == "__main__":
    sys.exit(main())
