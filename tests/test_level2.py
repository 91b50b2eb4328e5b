"""Approximation quality against the bilevel-exact targets.

* Regression baselines: the approximation error of FOMAML, Reptile, Penalty
  (vs MAML's meta-gradient) and IMAML, Neumann (vs the implicit gradient) across
  K, λ, m and J, stored in ``tests/baselines/level2.json``. Update after an
  intended change with

      pytest tests/test_level2.py --update-baselines

  and commit the JSON with the change that explains it.
* Theory: Neumann error decays at the dense spectral radius of I − η(I + H/λ);
  CG is exact after ≤ d iterations; IMAML with a converged inner loop and
  m ≥ d is the implicit gradient; identities across methods.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import metagrad_reference as reference
import pytest
import torch
from helpers import DEFAULTS, Case, flat, get, rel_error
from metagrad_reference import dense, finite_diff, targets

import metagrad as mg
from metagrad.verify import compare
from metagrad.verify.level2 import CONVERGED_STEPS, KEY_COLUMNS, merge, row_key, sweep

BASELINES = Path(__file__).parent / "baselines" / "level2.json"
BASELINE_VERSION = 1
BASELINE_RTOL = 1e-6
"""Approximation errors are deterministic float64 numbers; across platforms and torch
versions they move by roundoff relative to the gradients compared (~1e-15 / error),
so 1e-6 is loose for an error of 1e-8 and up and catches any change of method."""
BASELINE_ATOL = 1e-10
"""Errors below this are roundoff (e.g. CG after ≥ d steps) and differ between platforms."""


def _close(new: float, old: float) -> bool:
    return abs(new - old) <= BASELINE_RTOL * abs(old) + BASELINE_ATOL


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_level2_baselines(update_baselines: bool):
    rows = sweep()
    if update_baselines and BASELINES.exists():
        stored = json.loads(BASELINES.read_text())
        merged, changes = merge(stored["rows"], rows, _close)
        BASELINES.write_text(json.dumps({**stored, "torch": torch.__version__,
                                         "rows": merged}, indent=1) + "\n")
        pytest.skip(f"baselines updated: {len(changes['replaced'])} replaced, "
                    f"{len(changes['added'])} added, {len(changes['dropped'])} dropped, "
                    f"{len(merged) - len(changes['replaced']) - len(changes['added'])} kept "
                    f"as they were ({BASELINES})")
    if not BASELINES.exists():
        BASELINES.parent.mkdir(exist_ok=True)
        BASELINES.write_text(json.dumps({
            "version": BASELINE_VERSION,
            "description": "Level-2 approximation errors (relative, vs the bilevel-exact "
                           "target) of metagrad's methods; see tests/test_level2.py",
            "update_command": "pytest tests/test_level2.py --update-baselines",
            "torch": torch.__version__,
            "rtol": BASELINE_RTOL, "atol": BASELINE_ATOL,
            "key_columns": list(KEY_COLUMNS),
            "rows": rows,
        }, indent=1) + "\n")
        pytest.fail(f"no baselines yet; wrote {BASELINES}, commit it and rerun")
    stored = json.loads(BASELINES.read_text())
    assert stored["version"] == BASELINE_VERSION, "baseline format changed: --update-baselines"
    old = {row_key(r): r for r in stored["rows"]}
    new = {row_key(r): r for r in rows}
    assert set(new) == set(old), (
        f"the sweep's settings changed (new: {sorted(set(new) - set(old))[:3]}, gone: "
        f"{sorted(set(old) - set(new))[:3]}); rerun with --update-baselines")
    drifted = [f"{k}: {old[k]['approx_error']:.6e} -> {new[k]['approx_error']:.6e}"
               for k in new if not _close(new[k]["approx_error"], old[k]["approx_error"])]
    assert not drifted, "approximation error moved:\n" + "\n".join(drifted[:10])
    # each row is also a Level-1 check (the method equals its own reference)
    assert max(r["err_reference"] for r in rows) <= compare.REF_RTOL


def test_baseline_update_rewrites_only_the_rows_that_changed():
    """An update keeps unchanged rows exactly as stored (digits and order; roundoff-level
    drift is not a change), replaces the ones that moved, appends new ones and drops the
    ones the sweep no longer makes."""
    def row(method, steps, error):
        return {"sweep": "steps", "method": method, "problem": "p", "steps": steps,
                "inner_lr": 0.1, "approx_error": error}

    stored = [row("a", 1, 0.5), row("a", 2, 0.25), row("b", 1, 0.125), row("c", 1, 1.0)]
    fresh = [row("b", 1, 0.2), row("a", 2, 0.25 * (1 + 1e-12)), row("a", 1, 0.5),
             row("d", 1, 0.75)]
    rows, changes = merge(stored, fresh, _close)
    assert rows == [stored[0], stored[1], fresh[0], fresh[3]]
    assert rows[1]["approx_error"] == 0.25  # the stored digits, not the roundoff-level drift
    assert changes == {"replaced": [row_key(fresh[0])], "added": [row_key(fresh[3])],
                       "dropped": [row_key(stored[3])]}


def test_baseline_comparison_can_fail():
    """The tolerance tells a real change (one part in 1e5 of a 1e-3 error) from roundoff."""
    assert _close(1e-3 * (1 + 1e-9), 1e-3) and not _close(1e-3 * (1 + 1e-5), 1e-3)
    assert _close(3e-16, 2e-16)


# -- theory ------------------------------------------------------------------------------

def _system(problem: str, steps: int, inner_lr: float, lam: float):
    """Dense A = I + H(φ)/λ and b = ∇L_val(φ) for the single task of a 1-task problem."""
    p = get(problem, meta_batch=1)
    f, theta = flat(p)
    tr, val = p.task_list()[0]
    phi = dense.proximal_gd(f, theta, tr, steps, inner_lr, lam)[-1]
    A = torch.eye(theta.numel(), dtype=theta.dtype) + dense.hessian(f, phi, tr) / lam
    return p, A, dense.gradient(f, phi, val)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("problem", ["linreg12", "mlp_softplus"])
@pytest.mark.parametrize("step", [None, 1.0])
def test_neumann_error_decays_at_the_spectral_radius(problem: str, step):
    """e_J = ‖x_J − A⁻¹b‖ = ‖(I − ηA)^(J+1) A⁻¹b‖: metagrad's errors equal this dense
    prediction (eigendecomposition of A), are bounded by ρ^(J+1) ‖A⁻¹b‖ with ρ = ρ(I − ηA),
    and with one dominant eigenvalue (η = 1) the ratio e_(J+1)/e_J tends to ρ. η = 1 diverges
    here (ρ > 1, the documented failure of η = 1); the optimal η converges."""
    d = DEFAULTS[problem]
    lam, steps, lr = d.lam, 10, d.inner_lr
    eta = d.neumann_step(lam) if step is None else step
    p, A, b = _system(problem, steps, lr, lam)
    rho = dense.spectral_radius(torch.eye(A.shape[0], dtype=A.dtype) - eta * A)
    evals, evecs = torch.linalg.eigh(A)
    exact = torch.linalg.solve(A, b)
    coeffs = evecs.T @ exact
    errors, predicted = [], []
    for terms in range(0, 25):
        out = mg.Neumann(steps=steps, inner_lr=lr, lam=lam, terms=terms, step=eta)(
            p.loss, p.params, p.tasks)
        errors.append(float((reference.flatten(out.grad) - exact).norm()))
        predicted.append(float(((1 - eta * evals) ** (terms + 1) * coeffs).norm()))
    floor = 1e-12 * float(exact.norm())  # below this the errors are roundoff
    for e, pred in zip(errors, predicted):
        assert abs(e - pred) <= 1e-6 * pred + floor, (e, pred)
    bound = [rho ** (j + 1) * float(exact.norm()) for j in range(25)]
    assert all(e <= bnd * (1 + 1e-9) + floor for e, bnd in zip(errors, bound))
    if step == 1.0:
        rate = (errors[24] / errors[16]) ** (1 / 8)
        assert math.isclose(rate, rho, rel_tol=0.01), (rate, rho)
    assert (rho < 1) == (errors[24] < errors[0])


@pytest.mark.parametrize("problem", ["linreg12", "softmax", "mlp_softplus"])
def test_cg_is_exact_after_d_iterations(problem: str):
    d = DEFAULTS[problem]
    p, A, b = _system(problem, 5, d.inner_lr, d.lam)
    dim = A.shape[0]
    out = mg.IMAML(steps=5, inner_lr=d.inner_lr, lam=d.lam, cg_iters=dim)(p.loss, p.params,
                                                                           p.tasks)
    assert rel_error(reference.flatten(out.grad), torch.linalg.solve(A, b)) <= 1e-9
    residuals = out.diagnostics["cg_residual_norms"][0]
    assert residuals.shape == (dim + 1,)
    assert float(residuals[-1]) <= 1e-9 * float(b.norm())


@pytest.mark.parametrize("problem", ["linreg12", "softmax", "mlp_softplus"])
def test_converged_imaml_is_the_implicit_gradient(problem: str):
    """K → ∞ (to roundoff) and m ≥ d: IMAML = λ(H(φ*) + λI)⁻¹∇L_val(φ*)."""
    d = DEFAULTS[problem]
    case = Case.of("imaml", problem, steps=CONVERGED_STEPS, inner_lr=d.converged_lr(d.lam),
                   lam=d.lam, cg_iters=get(problem).dim)
    row = compare.evaluate(case, fd=False, target=True)
    assert row["approx_error"] <= 1e-9
    if problem == "linreg12":  # and the target itself is the gradient of L_val(φ*(θ))
        p = case.get_problem()
        f, theta = flat(p)
        objective = targets.mean_objective(
            [targets.implicit_objective(f, tr, val, d.lam) for tr, val in p.task_list()])
        out = compare.run_method(case)
        assert rel_error(out.grad, finite_diff.central_difference(objective, theta)) <= 1e-7


# -- identities --------------------------------------------------------------------------

def _grad(method, problem: str = "mlp_softplus", meta_batch: int = 2) -> torch.Tensor:
    p = get(problem, meta_batch=meta_batch)
    return reference.flatten(method(p.loss, p.params, p.tasks).grad)


def _mean_gradient(problem: str, split: int) -> torch.Tensor:
    p = get(problem)
    f, theta = flat(p)
    return torch.stack([dense.gradient(f, theta, t[split]) for t in p.task_list()]).mean(0)


@pytest.mark.filterwarnings("ignore::UserWarning")  # CG with one step warns it is unconverged
@pytest.mark.parametrize("problem", ["softmax", "mlp_softplus"])
def test_identities_at_k0(problem: str):
    lr, lam = DEFAULTS[problem].inner_lr, DEFAULTS[problem].lam
    g_val = _mean_gradient(problem, 1)
    for method in (mg.MAML(0, lr), mg.MAML(0, lr, backward="trajectory"), mg.FOMAML(0, lr),
                   mg.Penalty(0, lr, lam=0.0), mg.Neumann(0, lr, lam=lam, terms=0)):
        assert rel_error(_grad(method, problem), g_val) <= 1e-13, method
    assert torch.count_nonzero(_grad(mg.Reptile(0, lr), problem)) == 0
    assert torch.count_nonzero(_grad(mg.IMAML(0, lr, lam=lam, cg_iters=0), problem)) == 0
    # one CG step from 0 is the exact line minimiser along b: x₁ = (bᵀb / bᵀAb) b
    p, A, b = _system(problem, 0, lr, lam)
    x1 = float(b @ b) / float(b @ A @ b) * b
    assert rel_error(_grad(mg.IMAML(0, lr, lam=lam, cg_iters=1), problem, 1), x1) <= 1e-12


@pytest.mark.parametrize("steps", [0, 3, 10])
def test_penalty_with_lam_0_is_fomaml(steps: int):
    lr = DEFAULTS["mlp_softplus"].inner_lr
    assert rel_error(_grad(mg.Penalty(steps, lr, lam=0.0)), _grad(mg.FOMAML(steps, lr))) <= 1e-14


@pytest.mark.parametrize("problem", ["linreg", "mlp_softplus"])
def test_reptile_with_one_step_is_inner_lr_times_train_gradient(problem: str):
    lr = DEFAULTS[problem].inner_lr
    assert rel_error(_grad(mg.Reptile(1, lr), problem), lr * _mean_gradient(problem, 0)) <= 1e-14


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_imaml_and_neumann_solve_the_same_system():
    """m ≥ d CG and a long, convergent Neumann series both give A⁻¹b (J with ρ^J < 1e-13)."""
    d = DEFAULTS["mlp_softplus"]
    eta = d.neumann_step(d.lam)
    _, A, _ = _system("mlp_softplus", 5, d.inner_lr, d.lam)
    rho = dense.spectral_radius(torch.eye(A.shape[0], dtype=A.dtype) - eta * A)
    terms = math.ceil(math.log(1e-13) / math.log(rho))
    cg = _grad(mg.IMAML(5, d.inner_lr, lam=d.lam, cg_iters=51), meta_batch=1)
    series = _grad(mg.Neumann(5, d.inner_lr, lam=d.lam, terms=terms, step=eta), meta_batch=1)
    assert rel_error(series, cg) <= 1e-10


def test_maml_backward_modes_agree():
    lr = DEFAULTS["sinusoid_small"].inner_lr
    assert rel_error(_grad(mg.MAML(4, lr, backward="trajectory"), "sinusoid_small"),
                     _grad(mg.MAML(4, lr, backward="unrolled"), "sinusoid_small")) <= 1e-13
