"""Bad input gets a clear error; numerical trouble gets a diagnosis.

The numerical cases are built on quadratics whose Hessian is known in closed
form, so every expected condition (α(λ + L) ≥ 2, λ_min(H) < −λ, ρ ≥ 1) is
computed independently of metagrad."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import metagrad as mg

F64 = torch.float64


# ------------------------------------------------------------------ problems
def quadratic(h, tasks=2):
    """L(w; batch) = ½ Σ hᵢ wᵢ² − cᵀw (per task c): Hessian diag(h) exactly."""
    h = torch.as_tensor(h, dtype=F64)
    d = h.numel()
    c = torch.linspace(0.5, 1.5, tasks * d, dtype=F64).reshape(tasks, 1, d)

    def loss(params, batch):
        (c,) = batch
        w = params["w"]
        return 0.5 * (h * w * w).sum() - (c[0] * w).sum()

    return loss, {"w": torch.zeros(d, dtype=F64)}, mg.Task(train=(c,), val=(c,))


def sinusoid_problem(tasks=3):
    from metagrad.models import mlp

    model = mlp((1, 8, 1), torch.nn.Tanh, dtype=F64)
    loss = mg.module_loss(model, lambda a, b: ((a - b) ** 2).mean())
    return loss, mg.params_of(model), mg.Sinusoid(shots=5, query=5).sample(tasks, dtype=F64)


def build(cls, **over):
    base = {"steps": 2, "inner_lr": 0.1}
    if cls in (mg.IMAML, mg.Neumann, mg.Penalty):
        base["lam"] = 1.0
    return cls(**{**base, **over})


ALL = [mg.MAML, mg.FOMAML, mg.Reptile, mg.IMAML, mg.Neumann, mg.Penalty]


# ------------------------------------------------------------------ arguments
@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("field,value", [
    ("steps", -1), ("steps", 2.5), ("steps", True), ("steps", "3"),
    ("inner_lr", 0), ("inner_lr", -0.1), ("inner_lr", float("nan")), ("inner_lr", float("inf")),
    ("inner_lr", "0.1"),
])
def test_bad_shared_settings_are_named(cls, field, value):
    with pytest.raises(ValueError, match=rf"{field} must be .*got {re.escape(repr(value))}"):
        build(cls, **{field: value})


@pytest.mark.parametrize("cls,field,value", [
    (mg.IMAML, "lam", 0.0), (mg.IMAML, "lam", -1.0), (mg.IMAML, "lam", float("nan")),
    (mg.Neumann, "lam", float("inf")), (mg.IMAML, "cg_iters", -1), (mg.IMAML, "cg_iters", 1.0),
    (mg.Neumann, "terms", -2), (mg.Neumann, "step", 0.0), (mg.Neumann, "step", -1.0),
    (mg.Penalty, "lam", -0.5), (mg.Penalty, "lam", float("nan")),
    (mg.MAML, "backward", "reverse"), (mg.MAML, "hvp", "exact"), (mg.FOMAML, "batching", "jit"),
    (mg.IMAML, "diagnose", "loud"),
])
def test_bad_method_specific_settings_are_named(cls, field, value):
    with pytest.raises(ValueError, match=rf"{field} must be .*got {re.escape(repr(value))}"):
        build(cls, **{field: value})


def test_bad_params_tasks_and_loss():
    loss, params, tasks = quadratic([1.0, 2.0])
    method = mg.MAML(steps=1, inner_lr=0.1)
    with pytest.raises(TypeError, match="non-empty dict"):
        method(loss, {}, tasks)
    with pytest.raises(TypeError, match="non-empty dict"):
        method(loss, [params["w"]], tasks)
    with pytest.raises(TypeError, match=r"params\['w'\] must be a floating-point tensor"):
        method(loss, {"w": torch.zeros(2, dtype=torch.int64)}, tasks)
    with pytest.raises(ValueError, match="one dtype and device"):
        method(loss, {"w": params["w"], "v": torch.zeros(2, dtype=torch.float32)}, tasks)
    with pytest.raises(TypeError, match="metagrad.Task"):
        method(loss, params, (tasks.train, tasks.val))
    c = tasks.train[0]
    with pytest.raises(ValueError, match="inconsistent leading task dimension"):
        method(loss, params, mg.Task(train=(c,), val=(c[:1],)))
    with pytest.raises(ValueError, match=r"is torch.float32 but params are torch.float64"):
        method(loss, params, mg.Task(train=(c.float(),), val=(c.float(),)))
    with pytest.raises(ValueError, match="NaN or infinite"):
        method(loss, params, mg.Task(train=(c * float("nan"),), val=(c,)))
    with pytest.raises(ValueError, match=r"must return a 0-dim scalar tensor, got shape \(2,\)"):
        method(lambda p, b: p["w"] * 2, params, tasks)
    with pytest.raises(TypeError, match="must return a tensor"):
        method(lambda p, b: 1.0, params, tasks)
    with pytest.raises(TypeError, match="callable"):
        method("mse", params, tasks)


# ------------------------------------------------------------------ numerical diagnostics
def test_proximal_inner_loop_that_cannot_converge_is_reported():
    h = [1.0, 10.0]
    lam, L = 1.0, 10.0
    inner_lr = 2.2 / (lam + L)  # α(λ + L) = 2.2 ≥ 2, a closed-form fact of this quadratic
    loss, params, tasks = quadratic(h)
    with pytest.warns(mg.MetaGradientWarning, match="cannot converge") as rec:
        out = mg.IMAML(steps=3, inner_lr=inner_lr, lam=lam, cg_iters=2)(loss, params, tasks)
    msg = next(str(w.message) for w in rec if "cannot converge" in str(w.message))
    # The solver's Rayleigh quotients bound L from below: 2 ≤ reported rate ≤ true 2.2.
    rate = float(re.search(r"inner_lr·\(lam \+ L\) ≥ ([\d.]+)", msg).group(1))
    assert 2.0 <= rate <= 2.2 + 1e-3
    example = float(re.search(r"e\.g\. inner_lr=([\d.]+)", msg).group(1))
    assert example * (lam + L) < 2  # following the example converges (closed form)
    assert out.warnings and all(isinstance(m, str) for m in out.warnings)
    # Below the bound the same problem is clean.
    with warnings.catch_warnings():
        warnings.simplefilter("error", mg.MetaGradientWarning)
        mg.IMAML(steps=3, inner_lr=1.8 / (lam + L), lam=lam, cg_iters=2)(loss, params, tasks)


def test_inner_blowup_names_task_step_and_bound():
    loss, params, tasks = quadratic([1.0, 50.0])  # L = 50: GD needs inner_lr < 0.04
    with pytest.warns(mg.MetaGradientWarning) as rec:
        mg.MAML(steps=6, inner_lr=0.1)(loss, params, tasks)
    text = " | ".join(str(w.message) for w in rec)
    # closed form: L = 50, so inner_lr·L = 5 and GD needs inner_lr < 2/50
    assert "inner_lr·L ≈ 5" in text and "use inner_lr < 0.04" in text


def test_nonfinite_loss_names_task_and_step():
    loss, params, tasks = quadratic([1.0, 1e150])
    with pytest.warns(mg.MetaGradientWarning, match=r"non-finite inner-loop loss") as rec:
        mg.FOMAML(steps=6, inner_lr=1.0)(loss, params, tasks)
    msg = next(str(w.message) for w in rec if "non-finite inner-loop" in str(w.message))
    # w₁ after k steps is ≈ (1 − 1e150)ᵏ c/…: ½·1e150·w² overflows float64 (1.8e308) at step 2,
    # computed independently here with plain Python floats.
    w, step = 0.0, None
    c = float(tasks.train[0][0, 0, 1])
    for k in range(6):
        value = 0.5 * 1e150 * w * w - c * w
        if not math.isfinite(value):
            step = k
            break
        w = w - 1.0 * (1e150 * w - c)
    assert f"from inner step {step} on in task 0" in msg


def test_strict_mode_raises():
    loss, params, tasks = quadratic([1.0, 50.0])
    with pytest.raises(mg.NumericalError, match="maml: "):
        mg.MAML(steps=6, inner_lr=0.1, diagnose="error")(loss, params, tasks)


def test_indefinite_cg_system_is_reported_with_lam_bound():
    h = [2.0, -3.0]  # λ_min(H) = −3: I + H/λ is indefinite for λ ≤ 3
    loss, params, tasks = quadratic(h)
    with pytest.warns(mg.MetaGradientWarning, match="not positive definite") as rec:
        mg.IMAML(steps=0, inner_lr=0.1, lam=1.0, cg_iters=2)(loss, params, tasks)
    msg = next(str(w.message) for w in rec if "positive definite" in str(w.message))
    bound = float(re.search(r"use lam > ([\d.]+)", msg).group(1))
    assert bound <= 3.0 + 1e-9  # a Rayleigh quotient can only under-estimate −λ_min(H)
    # At λ = 4 the system is positive definite: what remains is that K = 0 solved nothing.
    out = mg.IMAML(steps=0, inner_lr=0.1, lam=4.0, cg_iters=2, diagnose="record")(
        loss, params, tasks)
    assert {f.kind for f in out.findings} == {"not_solved"}


def test_unconverged_cg_is_reported():
    h = torch.logspace(0, 3, 6, dtype=F64)  # A = I + H/λ with condition number ~ 1e3
    loss, params, tasks = quadratic(h)
    with pytest.warns(mg.MetaGradientWarning, match="increase cg_iters"):
        mg.IMAML(steps=0, inner_lr=1e-3, lam=1.0, cg_iters=1)(loss, params, tasks)


def test_divergent_neumann_series_and_the_suggested_step():
    h = torch.tensor([0.5, 8.0], dtype=F64)
    lam = 2.0  # A = I + H/λ has eigenvalues 1.25 and 5: with η = 1, ρ = 4
    loss, params, tasks = quadratic(h)
    with pytest.warns(mg.MetaGradientWarning, match="Neumann series diverges") as rec:
        mg.Neumann(steps=0, inner_lr=0.1, lam=lam, terms=6)(loss, params, tasks)
    msg = next(str(w.message) for w in rec if "diverges" in str(w.message))
    step = float(re.search(r"e\.g\. step=([\d.]+)", msg).group(1))
    eig = 1 + h / lam
    assert float((1 - step * eig).abs().max()) < 1  # the advice makes ρ < 1 (closed form)
    out = mg.Neumann(steps=0, inner_lr=0.1, lam=lam, terms=60, step=step, diagnose="record")(
        loss, params, tasks)
    assert {f.kind for f in out.findings} == {"not_solved"}  # K = 0 solved nothing
    c = tasks.train[0][:, 0]
    exact = (c / eig).mean(0)  # (I + H/λ)⁻¹ ∇L_val(θ) at w = 0, where ∇L_val = −c
    assert torch.allclose(-out.grad["w"], exact, rtol=1e-8)


def test_indefinite_neumann_says_raise_lam():
    loss, params, tasks = quadratic([1.0, -3.0])
    with pytest.warns(mg.MetaGradientWarning, match="larger lam"):
        mg.Neumann(steps=0, inner_lr=0.1, lam=1.0, terms=8, step=0.2)(loss, params, tasks)


def test_healthy_calls_are_silent():
    loss, params, tasks = sinusoid_problem()
    with warnings.catch_warnings():
        warnings.simplefilter("error", mg.MetaGradientWarning)
        for cls in ALL:
            # λ = 50 makes I + H/λ positive definite; then α(λ + L) < 2 needs α ≲ 0.03.
            over = {"lam": 50.0, "inner_lr": 0.01} if cls in (mg.IMAML, mg.Neumann) else {}
            out = build(cls, **over)(loss, params, tasks)
            assert out.warnings == []


def test_same_inputs_give_bit_identical_results():
    loss, params, tasks = sinusoid_problem()
    for cls in ALL:
        a, b = build(cls)(loss, params, tasks), build(cls)(loss, params, tasks)
        assert all(torch.equal(a.grad[k], b.grad[k]) for k in a.grad)


# ------------------------------------------------------------------ properties
bad_ints = st.one_of(st.integers(max_value=-1), st.floats(allow_nan=True), st.booleans(),
                     st.text(max_size=3), st.none())
bad_pos = st.one_of(st.floats(max_value=0.0), st.just(float("nan")), st.just(float("inf")),
                    st.text(max_size=3), st.none(), st.booleans())


@settings(max_examples=40, deadline=None)
@given(cls=st.sampled_from(ALL), field=st.sampled_from(["steps", "inner_lr"]), data=st.data())
def test_random_bad_settings_always_raise(cls, field, data):
    value = data.draw(bad_ints if field == "steps" else bad_pos)
    with pytest.raises(ValueError, match=field):
        build(cls, **{field: value})


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cls=st.sampled_from(ALL), h0=st.floats(-5, 5), h1=st.floats(-50, 50),
       steps=st.integers(0, 4), inner_lr=st.floats(1e-3, 1.0), lam=st.floats(0.1, 10))
def test_never_a_silent_nan(cls, h0, h1, steps, inner_lr, lam):
    """On random quadratics, a non-finite result always comes with a warning."""
    loss, params, tasks = quadratic([h0, h1])
    over = {"lam": lam} if cls in (mg.IMAML, mg.Neumann, mg.Penalty) else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = build(cls, steps=steps, inner_lr=inner_lr, **over)(loss, params, tasks)
    finite = torch.isfinite(out.grad["w"]).all() and torch.isfinite(out.post_update_loss)
    assert finite or out.warnings


# ------------------------------------------------------------------ CLI
def test_cli_bad_flag_is_one_line_exit_2():
    proc = subprocess.run([sys.executable, "-m", "metagrad", "report", "--device", "tpu9"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "tpu9" in proc.stderr
    assert "Traceback" not in proc.stderr
