"""A hypergradient library's iMAML example: prolearner/hypertorch @
6241dfafcf37ddaf14e152ba5e5a3aa7165396d3, ``examples/iMAML.py`` (``Task``, ``inner_loop``)
with ``hypergrad.CG`` and ``hypergrad.CG_torch.cg``.

What it computes, read off the example's training loop (lines 150-171) and the library:
per task, ``Task`` patches the model with ``higher.monkeypatch``; ``inner_loop`` takes T
steps of ``hg.GradientDescent`` on ``train_loss_f``, CE + λ/2‖w − θ‖², but with
``hparams = meta_model.parameters()``, a generator: ``bias_reg_f`` exhausts it in the first
step (where w = θ and the proximal gradient is zero), and every later step sums over an
empty ``zip``, so the inner loop is plain gradient descent on CE (this is what the audit
reported; reading the code again confirmed it); then
``hg.CG`` with the fixed-point map Φ(w) = w − ∇(CE + λ/2‖w − θ‖²) solves
(I − ∂Φ/∂w)ᵀv = ∇L_val(φ), i.e. (H + λI)v = ∇L_val(φ), by ``CG_torch.cg`` with K
iterations and tolerance 1e-10, and adds (∂Φ/∂θ)ᵀv = λv to θ's ``.grad``; the query loss
is divided by the number of tasks. CG iterates on λ(I + H/λ) are those on I + H/λ divided
by λ, so λv is iMAML's CG iterate. ``CG_torch.cg``, however, checks ``‖r‖ < epsilon``
*before* keeping its last update: when the tolerance is met it returns the iterate from
before that update.

The example imports ``torchmeta`` (its data sets) at the top; ``Task`` and ``inner_loop``
do not use it, so stand-in modules with the same names are registered before the import.
Settings: the example's for Omniglot (``reg_param = 2``, ``T = 16``, ``K = 5``,
``inner_lr = 0.1``):

    python -m metagrad_bench.real_code.hypertorch --repo PATH [--out DIR]
"""

from __future__ import annotations

import importlib.util
import sys
import types
from collections.abc import Sequence
from pathlib import Path

import torch

from metagrad.testing import module_target
from metagrad.testing.modules import fresh_model

from . import _common

SETTINGS = dict(steps=16, inner_lr=0.1, lam=2.0, cg_iters=5)
EXAMPLE: dict[str, types.ModuleType] = {}


def _load(repo: Path) -> types.ModuleType:
    if "module" not in EXAMPLE:
        for name in ("torchmeta", "torchmeta.datasets", "torchmeta.datasets.helpers",
                     "torchmeta.utils", "torchmeta.utils.data"):
            sys.modules.setdefault(name, types.ModuleType(name))
        sys.modules["torchmeta.datasets.helpers"].omniglot = None  # type: ignore[attr-defined]
        sys.modules["torchmeta.datasets.helpers"].miniimagenet = None  # type: ignore[attr-defined]
        sys.modules["torchmeta.utils.data"].BatchMetaDataLoader = None  # type: ignore[attr-defined]
        spec = importlib.util.spec_from_file_location("hypertorch_imaml",
                                                      repo / "examples" / "iMAML.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        EXAMPLE["module"] = module
    return EXAMPLE["module"]


def adapter(*, steps, inner_lr, lam, cg_iters):
    module = EXAMPLE["module"]
    hg = module.hg

    def run(model, tasks):
        model.zero_grad()
        for i in range(tasks.num_tasks):
            (x, y), (x_q, y_q) = tasks.task(i)
            task = module.Task(lam, model, (x, y, x_q, y_q), batch_size=tasks.num_tasks)
            inner_opt = hg.GradientDescent(task.train_loss_f, step_size=inner_lr)
            params = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
            last = module.inner_loop(model.parameters(), params, inner_opt, steps,
                                     log_interval=None)[-1]
            fp_map = hg.GradientDescent(loss_f=task.train_loss_f, step_size=1.0)
            hg.CG(last, list(model.parameters()), K=cg_iters, fp_map=fp_map,
                  outer_loss=task.val_loss_f)

    return run


def independent_check() -> str:
    """λ·CG_K on (H + λI)v = ∇L_val(φ) (stopping once ‖r‖ < 1e-10 and returning the
    iterate before), φ after T *plain* GD steps (the proximal term is lost with the
    exhausted generator), against the example; on the one-scalar problem CG converges in
    one iteration and the early return gives zero."""
    s = SETTINGS
    lines = []
    for label in ("softmax", "one scalar"):
        given, flat = _common.problem(label, "imaml", s)
        per_task = []
        for train, val in flat.tasks:
            phi = flat.theta
            for _ in range(s["steps"]):
                phi = phi - s["inner_lr"] * flat.g(phi, train)
            a = flat.h(phi, train) + s["lam"] * torch.eye(phi.numel(), dtype=phi.dtype)
            v = _common.conjugate_gradient(a, flat.g(phi, val), s["cg_iters"], stop_rr=1e-20,
                                           keep_last=False)
            per_task.append(s["lam"] * v)
        expected = torch.stack(per_task).mean(0)
        model = fresh_model(given.module, given.params)
        adapter(**s)(model, given.tasks)
        got = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        if float(torch.linalg.vector_norm(expected)) == 0:
            lines.append(f"{label}: both zero (largest entry of the example's "
                         f"{float(got.abs().max()):.1e})")
        else:
            lines.append(f"{label}: relative error {_common.rel(got, expected):.1e}")
    return ("hypertorch iMAML example, T=3: λ·CG_5 (early return at ‖r‖ < 1e-10) on H + λI "
            "at plain-GD φ vs the example: " + "; ".join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    args = _common.parse(__doc__.splitlines()[0], argv)
    repo = _common.on_path(args.repo, "hypergrad/CG_torch.py")
    _load(repo)
    runs = [_common.Run("hypertorch-imaml", "imaml", module_target(adapter, "cross_entropy"),
                        SETTINGS, "examples/iMAML.py Task + inner_loop, hypergrad.CG")]
    return _common.run_all(runs, [independent_check], args.out, "hypertorch", args.repo)


if __name__ == "__main__":
    sys.exit(main())
