"""The fused and in-place arithmetic of the eager path (pytree updates, the solvers' buffers,
the reused Hessian-vector-product graph, the proximal step), on every path where in-place
updates are restricted: under ``vmap`` (a task-independent leaf), inside autograd (the
solvers differentiated by ``gradcheck`` against finite differences), and the loop path.
Each is compared with an independent computation."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from helpers import dense_hessian, rel, tanh_mlp_problem
from torch.func import vmap

import metagrad as mg
from metagrad import _pytree as pt
from metagrad._hvp import hvp_operator
from metagrad._inner import InnerLoop

F64 = torch.float64


def spd(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
    return q @ torch.diag(torch.linspace(0.5, 4.0, d, dtype=F64)) @ q.T


@pytest.mark.parametrize("solver", ["cg", "neumann"])
def test_solvers_under_vmap_with_a_task_independent_leaf(solver):
    # Under vmap, b's leaf "c" does not depend on the task (as ∇L_val of a parameter the
    # validation loss ignores): the in-place updates must still give each task its own x.
    tasks = 3
    A = torch.stack([spd(5, s) for s in range(tasks)])
    w = torch.randn(tasks, 5, dtype=F64, generator=torch.Generator().manual_seed(9))
    constant = torch.ones(2, dtype=F64)

    def solve(a, wi):
        b = {"w": wi, "c": constant}

        def matvec(v):  # block-diagonal: A on "w", 2·I on "c" (task-dependent via "w")
            return {"w": a @ v["w"], "c": 2 * v["c"] + 0 * v["w"].sum()}

        if solver == "cg":
            return mg.cg(matvec, b, 4)[0]
        return mg.neumann(matvec, b, 4, step=0.2)[0]

    batched = vmap(solve)(A, w)
    for i in range(tasks):
        one = solve(A[i], w[i])
        assert rel(batched["w"][i], one["w"]) < 1e-13 and rel(batched["c"][i], one["c"]) < 1e-13
    if solver == "cg":
        # Independent reference for task 0: 4 CG iterations from 0 minimise the M-norm error
        # over span{b, Mb, M²b, M³b}, M = diag(A, 2I), b = (w, 1, 1): solve the projected
        # system Kᵀ M K y = Kᵀ b densely.
        M = torch.block_diag(A[0], 2 * torch.eye(2, dtype=F64))
        b0 = torch.cat([w[0], constant])
        krylov = torch.stack([torch.linalg.matrix_power(M, j) @ b0 for j in range(4)], 1)
        y = torch.linalg.solve(krylov.T @ M @ krylov, krylov.T @ b0)
        expected = krylov @ y
        assert rel(batched["w"][0], expected[:5]) < 1e-8
        assert rel(batched["c"][0], expected[5:]) < 1e-8


@pytest.mark.parametrize("solver", ["cg", "neumann"])
def test_solvers_differentiable_by_autograd(solver):
    # Inside an autograd graph nothing is updated in place: gradcheck (finite differences)
    # of x(b) through 3 iterations.
    A = spd(4, 1)

    def f(b):
        def matvec(v):
            return {"w": A @ v["w"]}

        if solver == "cg":
            return mg.cg(matvec, {"w": b}, 3)[0]["w"]
        return mg.neumann(matvec, {"w": b}, 3, step=0.2)[0]["w"]

    b = torch.randn(4, dtype=F64, generator=torch.Generator().manual_seed(2), requires_grad=True)
    assert torch.autograd.gradcheck(f, (b,))


@pytest.mark.parametrize("mode", ["revrev", "fwdrev"])
def test_hvp_operator_reuses_one_point_for_many_vectors(mode):
    loss, params, tasks = tanh_mlp_problem()
    train, _ = tasks.task(0)
    H = dense_hessian(loss, params, train)
    op = hvp_operator(loss, params, train, mode)
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):  # the same operator applied to several vectors
        v = {k: torch.randn(p.shape, generator=gen, dtype=F64) for k, p in params.items()}
        assert rel(pt.flatten(op(v)), H @ pt.flatten(v)) < 1e-12


def test_proximal_step_is_the_written_formula():
    loss, params, tasks = tanh_mlp_problem()
    train, _ = tasks.task(0)
    phi = {k: v + 0.1 for k, v in params.items()}
    alpha, lam = 0.05, 3.0
    loop = InnerLoop(1, alpha, lam=lam)
    g = torch.func.grad(loss)(phi, train)
    new, _, value = loop.step(loss, params, phi, loop.init(params), train)
    # φ − α(∇L(φ) + λ(φ − θ)), with ∇L by plain autograd
    leaves = {k: v.clone().requires_grad_(True) for k, v in phi.items()}
    out = loss(leaves, train)
    grads = dict(zip(leaves, torch.autograd.grad(out, list(leaves.values()))))
    for k in phi:
        expected = phi[k] - alpha * (grads[k] + lam * (phi[k] - params[k]))
        assert rel(new[k], expected) < 1e-14 and rel(g[k], grads[k]) < 1e-14
    assert float(value) == pytest.approx(float(out), rel=1e-15)


def test_axpy_forms_agree_with_the_plain_expression():
    gen = torch.Generator().manual_seed(4)
    x = {"a": torch.randn(3, 2, generator=gen, dtype=F64), "b": torch.randn(4, generator=gen,
                                                                           dtype=F64)}
    y = {k: torch.randn(v.shape, generator=gen, dtype=F64) for k, v in x.items()}
    c = torch.tensor(-0.7, dtype=F64)
    for coeff in (0.3, c):
        got = pt.axpy(coeff, x, y)
        assert all(torch.allclose(got[k], y[k] + coeff * x[k], rtol=0, atol=1e-15) for k in x)
    inplace = pt.clone(y)
    pt.axpy_(0.3, x, inplace)
    assert all(torch.allclose(inplace[k], y[k] + 0.3 * x[k], rtol=0, atol=1e-15) for k in x)
    direction = pt.clone(y)
    pt.xpay_(x, c, direction)
    assert all(torch.allclose(direction[k], x[k] + c * y[k], rtol=0, atol=1e-15) for k in x)
    batched = {k: torch.stack([v, 2 * v]) for k, v in x.items()}
    norms = pt.norm_per_task(batched)
    assert torch.allclose(norms, torch.stack([pt.norm(x), 2 * pt.norm(x)]), rtol=1e-14)


@pytest.mark.parametrize("method", [
    mg.IMAML(steps=0, inner_lr=0.1, lam=2.0, cg_iters=4),
    mg.IMAML(steps=3, inner_lr=0.1, lam=2.0, cg_iters=4),
    mg.Neumann(steps=2, inner_lr=0.05, lam=5.0, terms=4),
], ids=["imaml-K0", "imaml-K3", "neumann"])
def test_vmap_and_loop_batching_agree_with_a_parameter_the_validation_loss_ignores(method):
    # b = ∇L_val(φ) has a zero, task-independent leaf for "unused" (at K = 0 φ = θ is not
    # batched either): the solvers' first, out-of-place iteration gives it the task dim.
    base, params, tasks = tanh_mlp_problem(tasks=3)
    params = {**params, "unused": torch.ones(2, dtype=F64)}

    def loss(p, batch):
        return base({k: v for k, v in p.items() if k != "unused"}, batch)

    out = {b: replace(method, batching=b)(loss, params, tasks) for b in ("vmap", "loop")}
    assert rel(pt.flatten(out["vmap"].grad), pt.flatten(out["loop"].grad)) < 1e-12
    assert torch.count_nonzero(out["vmap"].grad["unused"]) == 0
