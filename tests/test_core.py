"""Unit tests of the core building blocks, each against an independent computation:
dense Hessians (torch.autograd.functional.hessian), scipy's CG, numpy matrix powers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse.linalg as spla
import torch

import metagrad as mg
from metagrad import _pytree as pt
from metagrad.compiled import VERIFIED_TORCH

F64 = torch.float64


def tanh_mlp_problem(seed=0, tasks=3, sizes=(1, 6, 6, 1)):
    from metagrad.models import mlp

    model = mlp(sizes, torch.nn.Tanh, seed=seed, dtype=torch.float64)
    loss = mg.module_loss(model, lambda a, b: ((a - b) ** 2).mean())
    params = pt.detach(mg.params_of(model))
    task = mg.Sinusoid(shots=5, query=5).sample(tasks, seed=seed, dtype=torch.float64)
    return loss, params, task


def dense_hessian(loss, params, batch):
    flat = pt.flatten(params)

    def f(vec):
        return loss(pt.unflatten(vec, params), batch)

    return torch.autograd.functional.hessian(f, flat)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


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


ALL = [
    mg.MAML(steps=3, inner_lr=0.1),
    mg.MAML(steps=3, inner_lr=0.1, backward="trajectory"),
    mg.FOMAML(steps=3, inner_lr=0.1),
    mg.Reptile(steps=3, inner_lr=0.1),
    mg.IMAML(steps=3, inner_lr=0.1, lam=2.0, cg_iters=4),
    mg.Neumann(steps=3, inner_lr=0.1, lam=2.0, terms=4, step=0.5),
    mg.Penalty(steps=3, inner_lr=0.1, lam=0.1),
]


@pytest.mark.parametrize("method", ALL, ids=lambda m: f"{m.name}-{getattr(m, 'backward', '')}")
def test_vmap_and_loop_agree(method):
    loss, params, tasks = tanh_mlp_problem(tasks=4)
    a = method(loss, params, tasks)
    b = type(method)(**{**method.config(), "batching": "loop"})(loss, params, tasks)
    assert rel(pt.flatten(a.grad), pt.flatten(b.grad)) < 1e-12
    assert math.isclose(float(a.post_update_loss), float(b.post_update_loss), rel_tol=1e-12)
    assert math.isclose(float(a.pre_update_loss), float(b.pre_update_loss), rel_tol=1e-12)


@pytest.mark.parametrize("method", ALL, ids=lambda m: f"{m.name}-{getattr(m, 'backward', '')}")
def test_mean_of_single_task_results(method):
    """The meta-batch result is the mean of the one-task results (linearity of the API)."""
    loss, params, tasks = tanh_mlp_problem(tasks=3)
    full = method(loss, params, tasks)
    singles = []
    for i in range(3):
        one = mg.Task(*(torch.utils._pytree.tree_map(lambda x, i=i: x[i : i + 1], s)
                        for s in (tasks.train, tasks.val)))
        singles.append(method(loss, params, one))
    mean_grad = sum(pt.flatten(s.grad) for s in singles) / 3
    assert rel(pt.flatten(full.grad), mean_grad) < 1e-12
    post = sum(float(s.post_update_loss) for s in singles) / 3
    assert math.isclose(float(full.post_update_loss), post, rel_tol=1e-12)


@pytest.mark.parametrize("method", ALL, ids=lambda m: f"{m.name}-{getattr(m, 'backward', '')}")
def test_float32_agrees_with_float64(method):
    loss, params, tasks = tanh_mlp_problem(tasks=4)
    g64 = pt.flatten(method(loss, params, tasks).grad)
    p32 = {k: v.float() for k, v in params.items()}
    from metagrad.models import mlp

    model32 = mlp((1, 6, 6, 1), torch.nn.Tanh, seed=0, dtype=torch.float32)
    loss32 = mg.module_loss(model32, lambda a, b: ((a - b) ** 2).mean())
    out32 = method(loss32, p32, tasks.to(torch.float32))
    assert all(v.dtype == torch.float32 for v in out32.grad.values())
    g32 = pt.flatten(out32.grad).double()
    # Forward-error bound: each of the ~(3K + 2m + small) sequential passes adds relative
    # rounding of order n·ε₃₂ where n ≈ 50 (largest dot-product length, layers of width 6
    # plus 10 data points); 1e3·ε₃₂ ≈ 1.2e-4 covers that with margin, and is still 1e8
    # times looser than float64 agreement, so a float32-only bug would show.
    assert rel(g32, g64) < 1e3 * torch.finfo(torch.float32).eps


def test_maml_trajectory_equals_unrolled_at_larger_k():
    loss, params, tasks = tanh_mlp_problem(tasks=2)
    a = mg.MAML(steps=8, inner_lr=0.05)(loss, params, tasks)
    b = mg.MAML(steps=8, inner_lr=0.05, backward="trajectory")(loss, params, tasks)
    assert rel(pt.flatten(b.grad), pt.flatten(a.grad)) < 1e-12


def test_module_helpers_drive_torch_optim():
    from metagrad.models import mlp

    model = mlp((1, 5, 1), torch.nn.Tanh, seed=1, dtype=torch.float64)
    loss = mg.module_loss(model, lambda a, b: ((a - b) ** 2).mean())
    tasks = mg.Sinusoid(shots=4, query=4).sample(2, seed=1, dtype=torch.float64)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    out = mg.FOMAML(steps=1, inner_lr=0.1)(loss, dict(model.named_parameters()), tasks)
    mg.set_grads(model, out.grad)
    torch.optim.SGD(model.parameters(), lr=0.5).step()
    for k, p in model.named_parameters():
        assert torch.allclose(p.detach(), before[k] - 0.5 * out.grad[k], rtol=0, atol=1e-15)
    with pytest.raises(KeyError, match="no entry"):
        mg.set_grads(model, {})


def test_pre_and_post_update_losses_are_the_losses():
    loss, params, tasks = tanh_mlp_problem(tasks=3)
    out = mg.FOMAML(steps=2, inner_lr=0.1)(loss, params, tasks)
    pre, post = [], []
    for i in range(3):
        train, val = tasks.task(i)
        pre.append(float(loss(params, train)))
        phi = params
        for _ in range(2):  # plain loop with torch.autograd, independent of mg.adapt
            p = {k: v.clone().requires_grad_(True) for k, v in phi.items()}
            grads = torch.autograd.grad(loss(p, train), list(p.values()))
            phi = {k: v.detach() - 0.1 * g for (k, v), g in zip(p.items(), grads)}
        post.append(float(loss(phi, val)))
    assert math.isclose(float(out.pre_update_loss), sum(pre) / 3, rel_tol=1e-13)
    assert math.isclose(float(out.post_update_loss), sum(post) / 3, rel_tol=1e-13)


def test_distributions_are_seeded_and_shaped():
    a = mg.Sinusoid().sample(7, seed=3)
    b = mg.Sinusoid().sample(7, seed=3)
    assert torch.equal(a.train[0], b.train[0]) and a.num_tasks == 7
    assert a.train[0].shape == (7, 10, 1) and a.val[1].shape == (7, 10, 1)
    amp, phase = a.info["amplitude"], a.info["phase"]
    assert ((amp >= 0.1) & (amp <= 5)).all() and ((phase >= 0) & (phase <= math.pi)).all()
    x, y = a.train
    expected = amp.view(-1, 1, 1) * torch.sin(x.double() - phase.view(-1, 1, 1))
    assert torch.allclose(y.double(), expected, atol=1e-6)
    lin = mg.LinearRegression(dim=4, noise=0.0).sample(3, seed=0)
    x, y = lin.train
    assert torch.allclose(y, x @ lin.info["weights"], atol=1e-12)
    cls = mg.GaussianClusters(ways=3, shots=2, query=4, dim=5).sample(2, seed=0)
    assert cls.train[0].shape == (2, 6, 5) and cls.val[1].shape == (2, 12)
    assert cls.train[1].dtype == torch.int64 and set(cls.train[1][0].tolist()) == {0, 1, 2}


def test_softmax_regression_runs_on_classification_tasks():
    tasks = mg.GaussianClusters(ways=3, shots=2, query=3, dim=4).sample(3, seed=0,
                                                                         dtype=torch.float64)

    def loss(params, batch):
        x, y = batch
        return torch.nn.functional.cross_entropy(x @ params["W"] + params["b"], y)

    params = {"W": torch.zeros(4, 3, dtype=F64), "b": torch.zeros(3, dtype=F64)}
    a = mg.MAML(steps=2, inner_lr=0.5)(loss, params, tasks)
    b = mg.MAML(steps=2, inner_lr=0.5, backward="trajectory")(loss, params, tasks)
    assert math.isclose(float(a.pre_update_loss), math.log(3), rel_tol=1e-14)
    assert rel(pt.flatten(a.grad), pt.flatten(b.grad)) < 1e-12


@pytest.mark.parametrize("steps,checkpoint", [(7, 1), (7, 2), (7, 3), (7, 7), (7, 10), (1, 4)])
def test_checkpointed_trajectory_equals_unrolled(steps, checkpoint):
    loss, params, tasks = tanh_mlp_problem(tasks=2)
    a = mg.MAML(steps=steps, inner_lr=0.05)(loss, params, tasks)
    b = mg.MAML(steps=steps, inner_lr=0.05, backward="trajectory",
                checkpoint=checkpoint)(loss, params, tasks)
    assert rel(pt.flatten(b.grad), pt.flatten(a.grad)) < 1e-12


def test_compiled_path_matches_eager_and_caches_per_signature():
    # aot_eager traces the same graph inductor would compile, without minutes of C++ codegen
    # on this CPU; it checks that the batched meta-gradient is traceable as one graph.
    loss, params, tasks = tanh_mlp_problem(tasks=2, sizes=(1, 4, 1))
    method = mg.MAML(steps=2, inner_lr=0.1)
    compiled = mg.compile(method, backend="aot_eager")
    try:
        a = compiled(loss, params, tasks)
    except RuntimeError as err:
        # Older dynamo (e.g. torch 2.4) cannot trace vmap(grad(...)): the error must say so,
        # and it must never happen on a release the compiled path is verified on.
        assert not torch.__version__.startswith(VERIFIED_TORCH)
        assert "could not trace maml's batched meta-gradient" in str(err)
        return
    b = method(loss, params, tasks)
    assert rel(pt.flatten(a.grad), pt.flatten(b.grad)) < 1e-12
    assert math.isclose(float(a.post_update_loss), float(b.post_update_loss), rel_tol=1e-12)
    compiled(loss, params, tasks)
    assert len(compiled.compile_seconds) == 1  # same signature: no second compilation
    with pytest.raises(ValueError, match="batching='vmap'"):
        mg.compile(mg.MAML(steps=1, inner_lr=0.1, batching="loop"))
