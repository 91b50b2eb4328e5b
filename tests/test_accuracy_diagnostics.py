"""The per-task diagnostics that travel with a meta-gradient, against the dense oracle.

inner losses L_tr(θ⁽ᵏ⁾) (plain and proximal loops), CG residual norms ‖b − A xᵢ‖,
the smallest CG curvature pᵀAp/pᵀp ≥ λ_min(A), Neumann term norms ‖η(I − ηA)ʲ b‖
and the penalty ‖∇L_tr(φ)‖², each per task.
"""

from __future__ import annotations

import pytest
import torch
from helpers import DEFAULTS, flat, get, rel_error
from metagrad_reference import dense

import metagrad as mg

PROBLEMS = ("softmax", "mlp_softplus")


def _per_task(problem: str):
    p = get(problem)
    f, theta = flat(p)
    return p, f, theta, p.task_list()


@pytest.mark.parametrize("problem", PROBLEMS)
@pytest.mark.parametrize("batching", ["vmap", "loop"])
def test_inner_losses(problem: str, batching: str):
    p, f, theta, tasks = _per_task(problem)
    lr, lam = DEFAULTS[problem].inner_lr, DEFAULTS[problem].lam
    out = mg.FOMAML(4, lr, batching=batching)(p.loss, p.params, p.tasks)
    want = torch.stack([torch.stack([dense.value(f, x, tr) for x in
                                     dense.gd_trajectory(f, theta, tr, 4, lr)[:-1]])
                        for tr, _ in tasks])
    assert rel_error(out.diagnostics["inner_losses"], want) <= 1e-12
    out = mg.IMAML(4, lr, lam=lam, cg_iters=2, batching=batching)(p.loss, p.params, p.tasks)
    want = torch.stack([torch.stack([dense.value(f, x, tr) for x in
                                     dense.proximal_gd(f, theta, tr, 4, lr, lam)[:-1]])
                        for tr, _ in tasks])
    assert rel_error(out.diagnostics["inner_losses"], want) <= 1e-12


def _system(f, theta, tr, val, steps, lr, lam):
    phi = dense.proximal_gd(f, theta, tr, steps, lr, lam)[-1]
    A = torch.eye(theta.numel(), dtype=theta.dtype) + dense.hessian(f, phi, tr) / lam
    return A, dense.gradient(f, phi, val)


@pytest.mark.parametrize("problem", PROBLEMS)
def test_cg_residuals_and_curvature(problem: str):
    p, f, theta, tasks = _per_task(problem)
    lr, lam, m = DEFAULTS[problem].inner_lr, DEFAULTS[problem].lam, 6
    out = mg.IMAML(3, lr, lam=lam, cg_iters=m)(p.loss, p.params, p.tasks)
    for i, (tr, val) in enumerate(tasks):
        A, b = _system(f, theta, tr, val, 3, lr, lam)
        # true residuals of the dense CG iterates; recursive and true residuals agree to
        # roundoff for so few steps
        want = torch.stack([(b - A @ dense.conjugate_gradient(A, b, j)).norm()
                            for j in range(m + 1)])
        got = out.diagnostics["cg_residual_norms"][i]
        assert float((got - want).abs().max()) <= 1e-12 * float(b.norm())
        lo, hi = torch.linalg.eigvalsh(A)[[0, -1]]
        curvature = float(out.diagnostics["cg_min_curvature"][i])
        assert float(lo) * (1 - 1e-12) <= curvature <= float(hi) * (1 + 1e-12)


@pytest.mark.parametrize("problem", PROBLEMS)
def test_neumann_term_norms(problem: str):
    p, f, theta, tasks = _per_task(problem)
    d = DEFAULTS[problem]
    eta, terms = d.neumann_step(d.lam), 5
    out = mg.Neumann(3, d.inner_lr, lam=d.lam, terms=terms, step=eta)(p.loss, p.params, p.tasks)
    for i, (tr, val) in enumerate(tasks):
        A, b = _system(f, theta, tr, val, 3, d.inner_lr, d.lam)
        M = torch.eye(A.shape[0], dtype=A.dtype) - eta * A
        want = torch.stack([eta * (torch.linalg.matrix_power(M, j) @ b).norm()
                            for j in range(terms + 1)])
        assert rel_error(out.diagnostics["neumann_term_norms"][i], want) <= 1e-12
        assert rel_error(out.diagnostics["neumann_last_term_norm"][i], want[-1]) <= 1e-12


@pytest.mark.parametrize("problem", PROBLEMS)
def test_penalty_value(problem: str):
    p, f, theta, tasks = _per_task(problem)
    lr = DEFAULTS[problem].inner_lr
    out = mg.Penalty(3, lr, lam=0.1)(p.loss, p.params, p.tasks)
    want = []
    for tr, _ in tasks:
        g = dense.gradient(f, dense.gd_trajectory(f, theta, tr, 3, lr)[-1], tr)
        want.append(g @ g)
    assert rel_error(out.diagnostics["penalty"], torch.stack(want)) <= 1e-12
