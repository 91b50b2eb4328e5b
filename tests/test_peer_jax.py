"""The JAX peer column (bench/peers/jax_.py) computes the same meta-gradients as metagrad.

Each JAX case, written in plain JAX with no metagrad code, is compared with metagrad's
method with the same settings on a float64 sinusoid problem (MLP 1-40-40-1 ReLU, 6 tasks,
10 + 10 shots); two independent implementations agreeing to 1e-10 in float64 is the
check. Negative controls show the tolerance separates the methods: first-order MAML
against second-order MAML, and 4 against 5 CG iterations, differ by far more.

jaxopt (Blondel et al. 2022): ``custom_root`` with ``solve_cg(maxiter=m, tol=0)`` is the
m-iteration CG iterate of iMAML (Rajeswaran et al. 2019); with its default ``tol=1e-5``
each task stops at the first k with ‖r_k‖ ≤ 1e-5‖b‖, i.e. gives metagrad's iterate at
``cg_iters=k``, which the last test checks task by task.

Skipped when jax or jaxopt is not installed (they are optional peers).
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import torch
from metagrad_bench.peers import PeerCase as Case
from torch.nn import functional as F

import metagrad as mg
from metagrad.models import mlp

jax = pytest.importorskip("jax")
pytest.importorskip("jaxopt")
jax_ = pytest.importorskip("metagrad_bench.peers.jax_")

TOL = 1e-10


@pytest.fixture(autouse=True)
def x64():
    # 64-bit JAX only inside these tests (jax.enable_x64 is a scoped config context).
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="module")
def problem():
    model = mlp((1, 40, 40, 1), dtype=torch.float64, seed=0)
    return SimpleNamespace(module=model, loss=mg.module_loss(model, F.mse_loss),
                           params=mg.params_of(model),
                           tasks=mg.Sinusoid().sample(6, seed=1, dtype=torch.float64))


def rel_error(g: list[torch.Tensor], ref: list[torch.Tensor]) -> float:
    a = torch.cat([t.reshape(-1) for t in g])
    b = torch.cat([t.reshape(-1) for t in ref])
    return float((a - b).norm() / b.norm())


def metagrad_grad(method, problem, tasks=None) -> list[torch.Tensor]:
    with warnings.catch_warnings():
        # λ = 1 makes I + H/λ indefinite on this ReLU net (metagrad warns); the CG iterate
        # is still well defined and is what both sides compute.
        warnings.simplefilter("ignore", mg.MetaGradientWarning)
        out = method(problem.loss, problem.params, tasks or problem.tasks)
    return list(out.grad.values())


def jax_grad(problem, case, **options) -> list[torch.Tensor]:
    run = jax_.build(problem, case, **options)
    g = run.grads()
    assert run.names == list(problem.params)
    assert all(t.dtype == torch.float64 for t in g)
    return g


CASES = [
    (Case("maml K=1", "maml", 1), {}, lambda: mg.MAML(steps=1, inner_lr=0.01)),
    (Case("maml K=5", "maml", 5), {}, lambda: mg.MAML(steps=5, inner_lr=0.01)),
    (Case("maml K=10", "maml", 10), {}, lambda: mg.MAML(steps=10, inner_lr=0.01)),
    (Case("maml K=5", "maml", 5), {"loop": "python"}, lambda: mg.MAML(steps=5, inner_lr=0.01)),
    (Case("fomaml K=5", "fomaml", 5), {}, lambda: mg.FOMAML(steps=5, inner_lr=0.01)),
    (Case("imaml", "imaml", 5), {},
     lambda: mg.IMAML(steps=5, inner_lr=0.01, lam=1.0, cg_iters=5)),
    (Case("imaml", "imaml", 5), {"hvp": "revrev"},
     lambda: mg.IMAML(steps=5, inner_lr=0.01, lam=1.0, cg_iters=5)),
    (Case("imaml", "imaml", 5), {"implicit": "jaxopt", "tol": 0.0},
     lambda: mg.IMAML(steps=5, inner_lr=0.01, lam=1.0, cg_iters=5)),
    (Case("imaml λ=2", "imaml", 3, lam=2.0, cg_iters=7), {"implicit": "jaxopt", "tol": 0.0},
     lambda: mg.IMAML(steps=3, inner_lr=0.01, lam=2.0, cg_iters=7)),
]


@pytest.mark.parametrize("case,options,method", CASES,
                         ids=[f"{c.name}{o}" for c, o, _ in CASES])
def test_jax_matches_metagrad(problem, case, options, method):
    err = rel_error(jax_grad(problem, case, **options), metagrad_grad(method(), problem))
    assert err <= TOL, f"{case.name} {options}: relative error {err:.3g}"


def test_check_separates_methods(problem):
    """The 1e-10 check fails for a wrong method: first-order "MAML", or one CG step short."""
    fo = jax_grad(problem, Case("fomaml K=5", "fomaml", 5))
    assert rel_error(fo, metagrad_grad(mg.MAML(steps=5, inner_lr=0.01), problem)) > 1e-3
    short = jax_grad(problem, Case("imaml", "imaml", 5, cg_iters=4))
    full = mg.IMAML(steps=5, inner_lr=0.01, lam=1.0, cg_iters=5)
    assert rel_error(short, metagrad_grad(full, problem)) > 1e-3


def test_jaxopt_default_tol_on_the_workload(problem):
    """On the benchmark settings (λ = 1, 5 CG steps) no task reaches ‖r‖ ≤ 1e-5‖b‖, so
    jaxopt's default tol runs all 5 iterations and gives the same number as tol = 0."""
    method = mg.IMAML(steps=5, inner_lr=0.01, lam=1.0, cg_iters=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mg.MetaGradientWarning)
        out = method(problem.loss, problem.params, problem.tasks)
    r = out.diagnostics["cg_residual_norms"]
    assert bool((r[:, -1] > 1e-5 * r[:, 0]).all())
    g = jax_grad(problem, Case("imaml", "imaml", 5), implicit="jaxopt", tol=1e-5)
    assert rel_error(g, list(out.grad.values())) <= TOL


def test_jaxopt_default_tol_stops_early(problem):
    """λ = 100 (inner_lr 0.001): CG converges fast, and with tol = 1e-5 jaxopt returns each
    task's CG iterate x_k at the first k with ‖r_k‖ ≤ 1e-5‖b‖ (metagrad with cg_iters = k),
    not the 5-iteration one."""
    settings = {"steps": 5, "inner_lr": 0.001, "lam": 100.0}
    case = Case("imaml λ=100", "imaml", 5, inner_lr=0.001, lam=100.0, cg_iters=5)
    full = metagrad_grad(mg.IMAML(cg_iters=5, **settings), problem)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mg.MetaGradientWarning)
        r = mg.IMAML(cg_iters=5, **settings)(problem.loss, problem.params,
                                             problem.tasks).diagnostics["cg_residual_norms"]
    below = r <= 1e-5 * r[:, :1]
    stops = [int(row.nonzero()[0]) if row.any() else 5 for row in below]
    assert min(stops) < 5, f"no task stops early ({stops}); the test needs one"
    tasks = problem.tasks
    per_task = []
    for i, k in enumerate(stops):  # metagrad's iterate x_k, one task at a time
        one = mg.Task(train=tuple(t[i:i + 1] for t in tasks.train),
                      val=tuple(t[i:i + 1] for t in tasks.val))
        per_task.append(metagrad_grad(mg.IMAML(cg_iters=k, **settings), problem, one))
    expected = [torch.stack(ts).mean(0) for ts in zip(*per_task)]
    default_tol = jax_grad(problem, case, implicit="jaxopt", tol=1e-5)
    assert rel_error(default_tol, expected) <= TOL, stops
    assert rel_error(default_tol, full) > 1e-10
    exact = jax_grad(problem, case, implicit="jaxopt", tol=0.0)
    assert rel_error(exact, full) <= TOL


def test_bad_input_is_refused(problem):
    with pytest.raises(ValueError, match="implicit must be one of"):
        jax_.build(problem, Case("imaml", "imaml", 5), implicit="neumann")
    with pytest.raises(ValueError, match="applies to imaml only"):
        jax_.build(problem, Case("maml", "maml", 5), implicit="jaxopt")
    tanh = mlp((1, 8, 1), torch.nn.Tanh, dtype=torch.float64)
    other = SimpleNamespace(module=tanh, params=mg.params_of(tanh), tasks=problem.tasks)
    with pytest.raises(ValueError, match="Linear/ReLU"):
        jax_.build(other, Case("maml", "maml", 1))


def test_float64_without_x64_is_refused(problem):
    with jax.enable_x64(False), pytest.raises(ValueError, match="64-bit"):
        jax_.build(problem, Case("maml", "maml", 1))


def test_peers_adapter_table(problem):
    """``CASES`` (the ``metagrad_bench.peers`` adapter interface) compiles once per problem and case
    and returns the same meta-gradient on every call."""
    case = Case("maml K=5", "maml", 5)
    ref = metagrad_grad(mg.MAML(steps=5, inner_lr=0.01), problem)
    before = len(jax_._BUILT)
    first = jax_.CASES["maml"](problem, case)
    second = jax_.CASES["maml"](problem, case)
    assert len(jax_._BUILT) == before + 1
    assert rel_error(first, ref) <= TOL and rel_error(second, ref) <= TOL
    imaml = Case("imaml K=5 λ=1 cg=5", "imaml", 5)
    g = jax_.CASES["imaml (jaxopt)"](problem, imaml)
    ref = metagrad_grad(mg.IMAML(steps=5, inner_lr=0.01, lam=1.0, cg_iters=5), problem)
    assert rel_error(g, ref) <= TOL
