"""The oracle checks itself: ``reference/`` (installed as ``metagrad_reference``) against
its own independent pieces.

Dense-Hessian formulas vs closed forms (no autograd) on linear regression, vs
finite differences on the nonlinear problems; Newton's φ* vs the optimality
condition; the implicit gradient vs finite differences of θ ↦ L_val(φ*(θ));
dense CG vs the Krylov closed form; and the rule that reference/ never imports
metagrad.
"""

from __future__ import annotations

import ast
import math
import subprocess
import sys
from pathlib import Path

import metagrad_reference as reference
import pytest
import torch
from helpers import DEFAULTS, flat, get, rel_error
from metagrad_reference import closed_form as cf
from metagrad_reference import dense, finite_diff, targets
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from metagrad import Task

REFERENCE_DIR = Path(reference.__file__).parent
SETTINGS = {
    "maml": dict(steps=4, inner_lr=0.1),
    "fomaml": dict(steps=4, inner_lr=0.1),
    "reptile": dict(steps=4, inner_lr=0.1),
    "imaml": dict(steps=6, inner_lr=0.1, lam=2.0, cg_iters=3),
    "neumann": dict(steps=6, inner_lr=0.1, lam=2.0, terms=4, step=0.4),
    "penalty": dict(steps=3, inner_lr=0.1, lam=0.5),
}


def test_reference_never_imports_metagrad():
    """Statically (no import statement mentions metagrad) and at runtime (a fresh
    interpreter that imports every reference module has no metagrad module loaded)."""
    for path in REFERENCE_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n.split(".")[0] == "metagrad" for n in names), path
    code = ("import sys, metagrad_reference as r, metagrad_reference.closed_form, "
            "metagrad_reference.dense, metagrad_reference.finite_diff, "
            "metagrad_reference.methods, metagrad_reference.targets, metagrad_reference.flat; "
            "bad = [m for m in sys.modules if m.split('.')[0] == 'metagrad']; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REFERENCE_DIR.parent.parent)


def test_flatten_roundtrip():
    p = get("mlp_softplus")
    vec = reference.flatten(p.params)
    back = reference.unflatten(vec, p.params)
    assert all(torch.equal(back[k], p.params[k]) for k in p.params)
    with pytest.raises(ValueError):
        reference.unflatten(torch.zeros(vec.numel() + 1, dtype=vec.dtype), p.params)


def _linreg_pieces():
    p = get("linreg")
    f, theta = flat(p)
    (xtr, ytr), (xval, yval) = p.task_list()[0]
    return f, theta, (xtr, ytr), (xval, yval), (xtr, ytr.reshape(-1)), (xval, yval.reshape(-1))


def test_dense_hessian_is_the_closed_form():
    f, theta, tr, _, tr_cf, _ = _linreg_pieces()
    H, c = cf.quadratic(*tr_cf)
    assert rel_error(dense.hessian(f, theta, tr), H) < 1e-14
    assert rel_error(dense.gradient(f, theta, tr), H @ theta - c) < 1e-14


@pytest.mark.parametrize("method", list(SETTINGS))
def test_dense_methods_match_closed_forms(method):
    """Two independent oracles (autograd + dense matrices vs pure matrix algebra) agree."""
    f, theta, tr, val, tr_cf, val_cf = _linreg_pieces()
    got = reference.methods.METHODS[method](f, theta, tr, val, **SETTINGS[method]).grad
    want = cf.METHODS[method](tr_cf, val_cf, theta, **SETTINGS[method])
    assert rel_error(got, want) < 1e-12


def test_implicit_gradient_matches_closed_form():
    f, theta, tr, val, tr_cf, val_cf = _linreg_pieces()
    assert rel_error(targets.implicit_gradient(f, theta, tr, val, 2.0),
                     cf.implicit_gradient(tr_cf, val_cf, theta, 2.0)) < 1e-12
    assert rel_error(dense.proximal_newton(f, theta, tr, 2.0),
                     cf.proximal_minimiser(*tr_cf, theta, 2.0)) < 1e-14


@pytest.mark.parametrize("problem", ["softmax", "mlp_softplus"])
def test_newton_solves_the_proximal_problem_to_machine_precision(problem):
    p = get(problem)
    f, theta = flat(p)
    lam = DEFAULTS[problem].lam
    for tr, _ in p.task_list():
        phi = dense.proximal_newton(f, theta, tr, lam)
        residual = dense.gradient(f, phi, tr) + lam * (phi - theta)
        scale = float(dense.gradient(f, theta, tr).norm())
        assert float(residual.norm()) < 1e-13 * scale
        # and it is a minimum: H + λI positive definite there
        eye = torch.eye(theta.numel(), dtype=theta.dtype)
        assert float(torch.linalg.eigvalsh(dense.hessian(f, phi, tr) + lam * eye).min()) > 0


@pytest.mark.parametrize("problem", ["linreg", "softmax", "mlp_softplus"])
def test_implicit_gradient_matches_finite_differences(problem):
    """λ(H(φ*) + λI)⁻¹∇L_val(φ*) is the gradient of θ ↦ L_val(φ*(θ)) (Newton inside)."""
    p = get(problem, meta_batch=1)
    f, theta = flat(p)
    lam = DEFAULTS[problem].lam
    tr, val = p.task_list()[0]
    exact = targets.implicit_gradient(f, theta, tr, val, lam)
    start = dense.proximal_newton(f, theta, tr, lam)
    numeric = finite_diff.central_difference(
        targets.implicit_objective(f, tr, val, lam, warm_start=start), theta)
    assert rel_error(numeric, exact) < 1e-7


@pytest.mark.parametrize("problem", ["softmax", "sinusoid_small"])
def test_maml_and_penalty_references_match_finite_differences(problem):
    p = get(problem, meta_batch=1)
    f, theta = flat(p)
    tr, val = p.task_list()[0]
    lr = DEFAULTS[problem].inner_lr
    maml = reference.methods.maml(f, theta, tr, val, steps=3, inner_lr=lr).grad
    fd = finite_diff.central_difference(targets.maml_objective(f, tr, val, 3, lr), theta,
                                        vectorize=True)
    assert rel_error(fd, maml) < 1e-7
    pen = reference.methods.penalty(f, theta, tr, val, steps=0, inner_lr=lr, lam=0.3).grad
    fd = finite_diff.central_difference(targets.penalty_objective(f, tr, val, 0.3), theta,
                                        vectorize=True)
    assert rel_error(fd, pen) < 1e-7


def test_dense_hessian_matches_finite_differences_of_the_gradient():
    p = get("mlp_softplus", meta_batch=1)
    f, theta = flat(p)
    tr, _ = p.task_list()[0]
    H = dense.hessian(f, theta, tr)
    rows = [finite_diff.central_difference(lambda t, i=i: dense.gradient(f, t, tr)[i], theta,
                                           vectorize=True) for i in range(theta.numel())]
    assert rel_error(torch.stack(rows), H) < 1e-8


def _smooth(x):
    return torch.sum(torch.sin(x) * torch.exp(0.3 * x)) + (x @ x) ** 2 / 7


def _smooth_grad(x):
    return torch.cos(x) * torch.exp(0.3 * x) + 0.3 * torch.sin(x) * torch.exp(0.3 * x) \
        + 4 * (x @ x) * x / 7


def test_finite_differences_step_and_richardson():
    """The default steps reach the ε^(2/3) accuracy the step choice promises, Richardson
    the ε^(4/5); a silly step does much worse (so the test can fail)."""
    x = torch.linspace(-1.5, 2.0, 9, dtype=torch.float64)
    exact = _smooth_grad(x)
    eps = torch.finfo(torch.float64).eps
    plain = rel_error(finite_diff.central_difference(_smooth, x), exact)
    rich = rel_error(finite_diff.central_difference(_smooth, x, richardson=True), exact)
    vec = rel_error(finite_diff.central_difference(_smooth, x, vectorize=True), exact)
    silly = rel_error(finite_diff.central_difference(_smooth, x, step=1e-2), exact)
    assert plain < 100 * eps ** (2 / 3) and vec < 100 * eps ** (2 / 3)
    assert rich < 100 * eps ** (4 / 5) and rich < plain
    assert silly > 1e-7
    v = torch.randn(9, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    d = finite_diff.directional_difference(_smooth, x, v, richardson=True)
    assert math.isclose(d, float(exact @ v), rel_tol=1e-10)


def test_dense_cg_is_the_krylov_closed_form_and_exact_after_d_steps():
    g = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(12, 12, generator=g, dtype=torch.float64))
    A = Q @ torch.diag(torch.linspace(1, 6, 12, dtype=torch.float64)) @ Q.T
    b = torch.randn(12, generator=g, dtype=torch.float64)
    for m in range(0, 6):
        assert rel_error(dense.conjugate_gradient(A, b, m), cf.krylov_solution(A, b, m)) < 1e-10
    assert rel_error(dense.conjugate_gradient(A, b, 12), torch.linalg.solve(A, b)) < 1e-12
    # three distinct eigenvalues: exact after three steps
    A3 = Q @ torch.diag(torch.tensor([1.0, 2.0, 5.0], dtype=torch.float64).repeat(4)) @ Q.T
    assert rel_error(dense.conjugate_gradient(A3, b, 3), torch.linalg.solve(A3, b)) < 1e-12


def test_neumann_sum_is_the_geometric_closed_form():
    g = torch.Generator().manual_seed(1)
    Q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))
    A = Q @ torch.diag(torch.linspace(0.5, 1.8, 8, dtype=torch.float64)) @ Q.T
    b = torch.randn(8, generator=g, dtype=torch.float64)
    eye = torch.eye(8, dtype=torch.float64)
    for terms, step in [(0, 1.0), (3, 1.0), (10, 0.7)]:
        closed = torch.linalg.solve(A, (eye - torch.linalg.matrix_power(eye - step * A,
                                                                         terms + 1)) @ b)
        assert rel_error(dense.neumann_sum(A, b, terms, step), closed) < 1e-13


def test_newton_refuses_an_indefinite_proximal_problem():
    p = get("sinusoid_small", meta_batch=1)
    f, theta = flat(p)
    tr, _ = p.task_list()[0]
    with pytest.raises(ValueError, match="Increase lam"):
        dense.proximal_newton(f, theta, tr, lam=0.5)


def test_warm_started_implicit_gradient_matches_finite_differences():
    """λ(H(φ*) + λI)⁻¹∇L_val(φ*), with φ* by L-BFGS then Newton, is the gradient of
    θ ↦ L_val(φ*(θ)) (Rajeswaran et al. 2019, eq. 6): two directional central differences
    of the composed map, on a torch.nn tanh net with F.mse_loss."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 5), nn.Tanh(), nn.Linear(5, 5), nn.Tanh(),
                          nn.Linear(5, 1)).double()
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(ps, batch):
        x, y = batch
        return F.mse_loss(functional_call(model, ps, (x,)), y)

    x = torch.linspace(-3, 3, 16, dtype=torch.float64).view(1, 16, 1)
    y = torch.sin(x)
    tasks = Task(train=(x[:, ::2], y[:, ::2]), val=(x[:, 1::2], y[:, 1::2]))
    lam = 2.0
    f, theta = reference.flat_loss(loss, params), reference.flatten(params)
    train, val = tasks.task(0)
    g = targets.implicit_gradient(f, theta, train, val, lam)
    assert torch.isfinite(g).all()

    def outer(w):
        solution = dense.proximal_minimiser(f, w, train, lam)
        assert solution.converged
        return float(f(solution.phi, val))

    h = 1e-5
    for seed in (1, 2):
        gen = torch.Generator().manual_seed(seed)
        u = torch.randn(theta.shape, dtype=torch.float64, generator=gen)
        fd = (outer(theta + h * u) - outer(theta - h * u)) / (2 * h)
        assert float(g @ u) == pytest.approx(fd, rel=1e-6, abs=1e-10)
