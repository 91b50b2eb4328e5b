"""The linear-algebra seam: parameter pytrees, Hessian-vector products and the two
solvers, each against an independent computation (dense Hessians from
torch.autograd.functional.hessian, scipy's CG, numpy matrix powers)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse.linalg as spla
import torch
from helpers import dense_hessian, rel, tanh_mlp_problem

import metagrad as mg
from metagrad import _pytree as pt

F64 = torch.float64


def test_flatten_roundtrip_and_vdot():
    _, params, _ = tanh_mlp_problem()
    other = {k: torch.randn_like(v) for k, v in params.items()}
    assert torch.equal(pt.flatten(pt.unflatten(pt.flatten(params), params)), pt.flatten(params))
    assert math.isclose(float(pt.vdot(params, other)),
                        float(pt.flatten(params) @ pt.flatten(other)), rel_tol=1e-14)


@pytest.mark.parametrize("mode", ["fwdrev", "revrev"])
def test_hvp_equals_dense_hessian(mode):
    loss, params, tasks = tanh_mlp_problem()
    train, _ = tasks.task(0)
    gen = torch.Generator().manual_seed(1)
    v = {k: torch.randn(p.shape, generator=gen, dtype=p.dtype) for k, p in params.items()}
    H = dense_hessian(loss, params, train)
    got = pt.flatten(mg.hvp(loss, params, train, v, mode))
    assert rel(got, H @ pt.flatten(v)) < 1e-12


def spd_operator(d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
    eig = torch.linspace(0.5, 5.0, d, dtype=F64)
    A = Q @ torch.diag(eig) @ Q.T
    b = {"w": torch.randn(d, generator=g, dtype=F64)}
    return A, b, (lambda v: {"w": A @ v["w"]})


@pytest.mark.parametrize("iters", [0, 1, 3, 7])
def test_cg_matches_scipy(iters):
    A, b, matvec = spd_operator()
    x, info = mg.cg(matvec, b, iters)
    if iters == 0:
        assert torch.count_nonzero(x["w"]) == 0
        return
    # scipy's CG with zero tolerances runs exactly maxiter iterations from x0 = 0.
    ref, _ = spla.cg(A.numpy(), b["w"].numpy(), x0=np.zeros(12), rtol=0.0, atol=0.0,
                     maxiter=iters)
    assert rel(x["w"], torch.from_numpy(ref)) < 1e-10
    true_residual = torch.linalg.norm(b["w"] - A @ x["w"])
    assert math.isclose(float(info.residual_norms[-1]), float(true_residual), rel_tol=1e-6)


def test_cg_exact_after_d_iterations_and_flags_indefinite():
    A, b, matvec = spd_operator(d=8)
    x, info = mg.cg(matvec, b, 8)
    assert rel(x["w"], torch.linalg.solve(A, b["w"])) < 1e-10
    assert float(info.min_curvature) >= 0.5 - 1e-12  # smallest eigenvalue bounds pᵀAp/pᵀp
    indefinite = A - 2.0 * torch.eye(8, dtype=F64)
    _, info = mg.cg(lambda v: {"w": indefinite @ v["w"]}, b, 8)
    assert float(info.min_curvature) <= 0


def test_cg_zero_rhs_gives_zero_not_nan():
    _, b, matvec = spd_operator()
    x, info = mg.cg(matvec, {"w": torch.zeros(12, dtype=F64)}, 5)
    assert torch.count_nonzero(x["w"]) == 0 and torch.isfinite(info.residual_norms).all()


@pytest.mark.parametrize("terms,step", [(0, 1.0), (4, 0.3), (10, 0.15)])
def test_neumann_matches_dense_series(terms, step):
    A, b, matvec = spd_operator()
    x, info = mg.neumann(matvec, b, terms, step)
    M = (torch.eye(12, dtype=F64) - step * A).numpy()
    ref = step * sum(np.linalg.matrix_power(M, j) @ b["w"].numpy() for j in range(terms + 1))
    assert rel(x["w"], torch.from_numpy(ref)) < 1e-12
    last = step * np.linalg.norm(np.linalg.matrix_power(M, terms) @ b["w"].numpy())
    assert math.isclose(float(info.last_term_norm), last, rel_tol=1e-10)

