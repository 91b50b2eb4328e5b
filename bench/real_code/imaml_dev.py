"""The official iMAML code: aravindr93/imaml_dev @ 6a2a6697d8b7be72e098d524852eacb448935fbf.

What its meta-gradient is, read off ``examples/omniglot_implicit_maml.py`` (the training
loop, lines 96-128) and ``implicit_maml/learner_model.py`` / ``implicit_maml/utils.py``:
per task, ``Learner.learn_task`` takes K plain SGD steps on the train loss (no proximal
term: ``add_regularization`` is False), then one SGD step on ``regularization_loss(w_k,
lam)`` alone ("pull back for regularization": φ ← φ − αλ(φ − θ)), then
``utils.cg_solve`` runs ``cg_steps`` CG iterations from x₀ = 0 (stopping early once
rᵀr < ``residual_tol`` = 1e-10) with the operator of
``Learner.matrix_evaluator(task, lam, cg_damping)``, (1 + regu_coef)v + Hv/(λ + lam_damping)
with regu_coef = ``--cg_damping`` (1.0) and lam_damping = 10.0; the task results are
averaged. ``lam`` is a float32 tensor (``torch.tensor(args.lam)``). With ``cg_steps ≤ 1`` the
script skips the solve.

The adapter below is that loop, calling the repository's ``Learner`` methods and
``cg_solve`` in the script's order, with the script's defaults (``--n_steps 16
--inner_lr 0.01 --lam 1.0 --cg_steps 5 --cg_damping 1.0``):

    python -m metagrad_bench.real_code.imaml_dev --repo PATH [--out DIR]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch

from metagrad.testing import module_target

from . import _common

DEFAULTS = dict(steps=16, inner_lr=0.01, lam=1.0, cg_iters=5)
CG_DAMPING, LAM_DAMPING = 1.0, 10.0


def adapter(*, steps, inner_lr, lam, cg_iters):
    """A module target: the script's per-task loop on the audit's model."""
    from implicit_maml import utils
    from implicit_maml.learner_model import Learner

    def run(model, tasks):
        learner = Learner(model, torch.nn.CrossEntropyLoss(), inner_lr=inner_lr, outer_lr=0.0)
        lam_t = torch.tensor(lam)  # as the script: a float32 tensor
        w_k = learner.get_params()
        meta_grad = 0.0
        for i in range(tasks.num_tasks):
            (x, y), (x_val, y_val) = tasks.task(i)
            task = {"x_train": x, "y_train": y, "x_val": x_val, "y_val": y_val}
            learner.set_params(w_k.clone())
            learner.learn_task(task, num_steps=steps)
            learner.inner_opt.zero_grad()
            learner.regularization_loss(w_k, lam_t).backward()
            learner.inner_opt.step()
            valid_loss = learner.get_loss(x_val, y_val)
            valid_grad = torch.autograd.grad(valid_loss, learner.model.parameters())
            flat_grad = torch.cat([g.contiguous().view(-1) for g in valid_grad])
            if cg_iters <= 1:
                task_outer_grad = flat_grad
            else:
                evaluator = learner.matrix_evaluator(task, lam_t, CG_DAMPING)
                task_outer_grad = utils.cg_solve(evaluator, flat_grad, cg_iters, x_init=None)
            meta_grad = meta_grad + task_outer_grad / tasks.num_tasks
        out, at = {}, 0
        for name, p in model.named_parameters():
            out[name] = meta_grad[at:at + p.numel()].view(p.shape)
            at += p.numel()
        return out

    return run


def independent_check() -> str:
    """g = CG₅ on ((1 + c)I + H(φ)/(λ + δ)) x = ∇L_val(φ), c = 1, δ = 10, stopped once
    rᵀr < 1e-10 (``cg_solve``'s ``residual_tol``), at φ = φ_K − αλ(φ_K − θ), φ_K after K
    plain GD steps: evaluated densely, against the repository."""
    s = DEFAULTS
    given, flat = _common.problem("softmax", "imaml", s)
    per_task = []
    for train, val in flat.tasks:
        phi = flat.theta
        for _ in range(s["steps"]):
            phi = phi - s["inner_lr"] * flat.g(phi, train)
        phi = phi - s["inner_lr"] * s["lam"] * (phi - flat.theta)
        a = (1 + CG_DAMPING) * torch.eye(phi.numel(), dtype=phi.dtype) + flat.h(phi, train) / (
            s["lam"] + LAM_DAMPING)
        per_task.append(_common.conjugate_gradient(a, flat.g(phi, val), s["cg_iters"],
                                                    stop_rr=1e-10))
    expected = torch.stack(per_task).mean(0)
    from metagrad.testing.modules import fresh_model

    got = adapter(**s)(fresh_model(given.module, given.params), given.tasks)
    err = _common.rel(_common.flat_result(got, flat.names), expected)
    return (f"imaml_dev on softmax, T=3: plain GD (K=16) + pull-back + CG_5 (stop at "
            f"rᵀr < 1e-10) on 2I + H/(λ + 10) vs the repository: relative error {err:.1e}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _common.parse(__doc__.splitlines()[0], argv)
    _common.on_path(args.repo, "implicit_maml/learner_model.py")
    runs = [_common.Run("imaml_dev-imaml", "imaml", module_target(adapter, "cross_entropy"),
                        DEFAULTS, "examples/omniglot_implicit_maml.py training loop with "
                        "implicit_maml.learner_model.Learner and implicit_maml.utils.cg_solve")]
    return _common.run_all(runs, [independent_check], args.out, "imaml_dev", args.repo)


if __name__ == "__main__":
    sys.exit(main())
