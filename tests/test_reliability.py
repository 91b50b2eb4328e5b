"""Bad input gets a clear error; numerical trouble gets a diagnosis.

The numerical cases are built on quadratics whose Hessian is known in closed
form, so every expected condition (α(λ + L) ≥ 2, λ_min(H) < −λ, ρ ≥ 1) is
computed independently of metagrad."""

from __future__ import annotations

import dataclasses
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


# ------------------------------------------------------------------ the common case: K = 1
@pytest.mark.parametrize("cls", ALL)
def test_a_single_inner_step_that_raises_the_loss_is_reported(cls):
    """Curvatures 1 and 4, α = 3: the one inner step multiplies the error by 1 − 3·4 = −11.
    L_tr(θ) = 0 at w = 0 and L_tr(φ) = Σ (4.5 hᵢ − 3) cᵢ² > 0 (closed form, computed here),
    so the loss rises; K = 1 is Finn et al.'s default and must be checked."""
    h = torch.tensor([1.0, 4.0], dtype=F64)
    loss, params, tasks = quadratic(h)
    c = tasks.train[0][:, 0]
    rises = ((4.5 * h - 3) * c * c).sum(1)
    assert (rises > 0).all()
    lam = {"lam": 1e-3} if cls in (mg.IMAML, mg.Neumann, mg.Penalty) else {}
    method = cls(steps=1, inner_lr=3.0, diagnose="error", **lam)
    with pytest.raises(mg.NumericalError, match="inner loss rose|cannot converge") as err:
        method(loss, params, tasks)
    if "inner loss rose" in str(err.value):  # GD: the advice is α < 2/L = 0.5
        assert float(re.search(r"use inner_lr < ([\d.]+)", str(err.value)).group(1)) <= 0.5 + 1e-3
    # The same step size that keeps every iterate descending is silent (α·L = 0.4 < 2).
    healthy = cls(steps=1, inner_lr=0.1, diagnose="record", **lam)(loss, params, tasks)
    assert not [f for f in healthy.findings if f.kind in ("inner_loop_rise", "non_finite")]


def test_every_inner_step_must_descend_not_only_stay_below_the_start():
    """Curvatures 1 and 4.2 at α = 0.5: the first coordinate (large c) converges with factor
    0.5, the second (small c) oscillates with factor −1.1 and grows. The loss, computed here
    in closed form, first falls a lot and then rises from step to step while staying below
    L_tr(θ): the old check (each iterate against L_tr(θ) only) missed it."""
    h = torch.tensor([1.0, 4.2], dtype=F64)
    c = torch.tensor([3.0, 0.5], dtype=F64).expand(2, 1, 2).clone()

    def loss(params, batch):
        (c,) = batch
        w = params["w"]
        return 0.5 * (h * w * w).sum() - (c[0] * w).sum()

    params, tasks = {"w": torch.zeros(2, dtype=F64)}, mg.Task(train=(c,), val=(c,))
    values, w = [], torch.zeros(2, dtype=F64)
    for _ in range(9):
        values.append(float(0.5 * (h * w * w).sum() - (c[0, 0] * w).sum()))
        w = w - 0.5 * (h * w - c[0, 0])
    assert values[8] > values[7] and max(values[1:]) < values[0]
    out = mg.FOMAML(steps=8, inner_lr=0.5, diagnose="record")(loss, params, tasks)
    assert "inner_loop_rise" in {f.kind for f in out.findings}


# ------------------------------------------------------------------ nothing solved is said
def test_zero_cg_iterations_are_reported_and_give_zero():
    loss, params, tasks = quadratic([1.0, 2.0])
    out = mg.IMAML(steps=2, inner_lr=0.1, lam=1.0, cg_iters=0, diagnose="record")(
        loss, params, tasks)
    assert torch.equal(out.grad["w"], torch.zeros(2, dtype=F64))  # x₀ = 0, nothing else
    assert [f.kind for f in out.findings] == ["not_solved"]
    assert "cg_iters=0" in out.warnings[0]


def test_zero_neumann_terms_and_zero_proximal_steps_are_reported():
    loss, params, tasks = quadratic([1.0, 2.0])
    out = mg.Neumann(steps=2, inner_lr=0.1, lam=4.0, terms=0, diagnose="record")(
        loss, params, tasks)
    assert "terms=0" in " ".join(out.warnings)
    out = mg.IMAML(steps=0, inner_lr=0.1, lam=4.0, cg_iters=2, diagnose="record")(
        loss, params, tasks)
    assert [f.kind for f in out.findings] == ["not_solved"] and "steps=0" in out.warnings[0]
    # Reptile's direction θ − φ is identically zero without an inner step.
    out = mg.Reptile(steps=0, inner_lr=0.1, diagnose="record")(loss, params, tasks)
    assert torch.equal(out.grad["w"], torch.zeros_like(out.grad["w"]))
    assert [f.kind for f in out.findings] == ["not_solved"] and "steps=0" in out.warnings[0]
    out = mg.Reptile(steps=1, inner_lr=0.1, diagnose="record")(loss, params, tasks)
    assert out.findings == []


# ------------------------------------------------------------------ no false alarms
def test_a_neumann_series_that_converged_exactly_is_no_divergence():
    """H = 0 (a linear loss): every term after the first is exactly zero, the series is
    exact after one term, x = b; the old check read 0 ≥ 0 as growth."""
    loss, params, tasks = quadratic([0.0, 0.0])
    out = mg.Neumann(steps=1, inner_lr=0.1, lam=1.0, terms=4, diagnose="record")(
        loss, params, tasks)
    assert out.findings == []
    b = -tasks.val[0][:, 0].mean(0)  # ∇L_val = −c (H = 0), the same at every φ
    assert torch.equal(out.grad["w"], b)


def test_a_neumann_ratio_that_rounds_to_one_is_no_divergence():
    """H/λ = 1 − 2⁻⁵²: the terms (−H/λ)ʲ b shrink by a ratio that is 1 to rounding (the
    series converges, slowly); growth of 1.5 per term is reported."""
    lam = 1.0
    loss, params, tasks = quadratic([lam * (1 - 2.0 ** -52)] * 2)
    out = mg.Neumann(steps=0, inner_lr=0.1, lam=lam, terms=6, diagnose="record")(
        loss, params, tasks)
    assert "neumann_divergence" not in {f.kind for f in out.findings}
    loss, params, tasks = quadratic([1.5 * lam] * 2)
    out = mg.Neumann(steps=0, inner_lr=0.1, lam=lam, terms=6, diagnose="record")(
        loss, params, tasks)
    assert "neumann_divergence" in {f.kind for f in out.findings}


def test_float16_meta_gradient_with_finite_entries_is_not_called_non_finite():
    """Entries of size ~100 in 10 coordinates: the squared norm 1e5 overflows float16 (max
    65504) although every entry is finite; the norm is accumulated in float32."""
    d = 10
    c = torch.full((2, 1, d), 100.0, dtype=torch.float16)

    def loss(params, batch):
        (c,) = batch
        return -(c[0] * params["w"]).sum()

    params = {"w": torch.zeros(d, dtype=torch.float16)}
    out = mg.FOMAML(steps=1, inner_lr=1e-3, diagnose="record")(
        loss, params, mg.Task(train=(c,), val=(c,)))
    assert torch.isfinite(out.grad["w"]).all() and out.findings == []
    expected = float(torch.linalg.vector_norm(out.grad["w"].double()))
    assert math.isclose(float(out.diagnostics["grad_norm"][0]), expected, rel_tol=1e-3)


# ------------------------------------------------------------------ bad parameters
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_parameters_are_refused_like_task_data(bad):
    loss, params, tasks = quadratic([1.0, 2.0])
    params["w"][1] = bad
    with pytest.raises(ValueError, match=r"params\['w'\] contains NaN or infinite values"):
        mg.MAML(steps=1, inner_lr=0.1)(loss, params, tasks)


def test_a_loss_that_writes_into_params_is_refused_and_changes_nothing():
    loss, params, tasks = quadratic([1.0, 2.0])
    original = params["w"].clone()

    def writing(p, batch):
        p["w"].add_(1.0)
        return loss(p, batch)

    with pytest.raises(ValueError, match=r"wrote into params \['w'\] in place"):
        mg.MAML(steps=1, inner_lr=0.1)(writing, params, tasks)
    assert torch.equal(params["w"], original)


def test_a_loss_of_shape_one_is_refused_before_any_work():
    loss, params, tasks = quadratic([1.0, 2.0])
    with pytest.raises(ValueError, match=r"0-dim scalar tensor, got shape \(1,\)"):
        mg.MAML(steps=1, inner_lr=0.1)(lambda p, b: loss(p, b).reshape(1), params, tasks)


def test_numpy_scalars_are_settings_like_python_numbers():
    np = pytest.importorskip("numpy")
    a = mg.IMAML(steps=np.int64(3), inner_lr=np.float32(0.5), lam=np.float64(2.0),
                 cg_iters=np.int32(4))
    b = mg.IMAML(steps=3, inner_lr=float(np.float32(0.5)), lam=2.0, cg_iters=4)
    assert a == b and type(a.steps) is int and type(a.inner_lr) is float
    with pytest.raises(ValueError, match="steps must be a non-negative integer"):
        mg.MAML(steps=np.bool_(True))
    with pytest.raises(ValueError, match="steps must be a non-negative integer"):
        mg.MAML(steps=np.float64(2.0))


# ------------------------------------------------------------------ losses vmap cannot trace
def test_an_untraceable_loss_says_to_use_the_loop():
    loss, params, tasks = quadratic([1.0, 2.0])

    def with_item(p, batch):
        value = loss(p, batch)
        return value * 2 if float(value.item()) > 1e9 else value

    with pytest.raises(RuntimeError, match="batching='loop'"):
        mg.FOMAML(steps=1, inner_lr=0.1)(with_item, params, tasks)
    looped = mg.FOMAML(steps=1, inner_lr=0.1, batching="loop")(with_item, params, tasks)
    plain = mg.FOMAML(steps=1, inner_lr=0.1)(loss, params, tasks)
    assert torch.equal(looped.grad["w"], plain.grad["w"])


def test_the_loop_path_never_vmaps(monkeypatch):
    """With batching='loop' even the diagnosis of a rising loss (power iteration, noise
    estimate) runs task by task: a loss vmap cannot trace must not fail there."""
    import metagrad.diagnose as diagnose
    import metagrad.methods._base as base

    def no_vmap(*args, **kwargs):
        raise AssertionError("vmap called on the loop path")

    monkeypatch.setattr(diagnose, "vmap", no_vmap)
    monkeypatch.setattr(base, "vmap", no_vmap)
    loss, params, tasks = quadratic([1.0, 4.0])
    out = mg.MAML(steps=1, inner_lr=3.0, batching="loop", diagnose="record")(loss, params, tasks)
    assert "inner_loop_rise" in {f.kind for f in out.findings}


def test_non_tensor_leaves_in_a_batch_are_passed_to_every_task():
    loss, params, tasks = quadratic([1.0, 2.0])
    tagged = mg.Task(train=(tasks.train[0], "support"), val=(tasks.val[0], "query"))

    def tagged_loss(p, batch):
        c, tag = batch
        assert tag in ("support", "query")
        return loss(p, (c,))

    a = mg.MAML(steps=2, inner_lr=0.1)(tagged_loss, params, tagged)
    b = mg.MAML(steps=2, inner_lr=0.1)(loss, params, tasks)
    assert torch.equal(a.grad["w"], b.grad["w"])


# ------------------------------------------------------------------ models people use
def _bn_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.BatchNorm1d(5), torch.nn.Tanh(),
                               torch.nn.Linear(5, 1)).double()


def _bn_tasks(T=3, n=6):
    g = torch.Generator().manual_seed(1)
    x = lambda: torch.randn(T, n, 3, dtype=F64, generator=g)  # noqa: E731
    y = lambda: torch.randn(T, n, 1, dtype=F64, generator=g)  # noqa: E731
    return mg.Task(train=(x(), y()), val=(x(), y()))


def test_batch_norm_uses_each_tasks_batch_statistics_and_leaves_buffers_alone():
    """Against a hand-written per-task MAML (plain autograd) whose batch norm normalises
    with the batch's own mean and biased variance (Ioffe & Szegedy 2015), K = 2."""
    model = _bn_net()
    tasks = _bn_tasks()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    out = mg.MAML(steps=2, inner_lr=0.1)(mg.module_loss(model, torch.nn.functional.mse_loss),
                                         mg.params_of(model), tasks)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert model[1].track_running_stats and model.training

    def net(p, x):
        h = x @ p[0].T + p[1]
        mean, var = h.mean(0), h.var(0, unbiased=False)
        h = (h - mean) / torch.sqrt(var + model[1].eps) * p[2] + p[3]
        return torch.tanh(h) @ p[4].T + p[5]

    theta = [v.detach().clone().requires_grad_(True) for v in mg.params_of(model).values()]
    total = [torch.zeros_like(t) for t in theta]
    for i in range(tasks.num_tasks):
        (x, y), (xv, yv) = tasks.task(i)
        phi = theta
        for _ in range(2):
            g = torch.autograd.grad(((net(phi, x) - y) ** 2).mean(), phi, create_graph=True)
            phi = [p - 0.1 * gi for p, gi in zip(phi, g)]
        gi = torch.autograd.grad(((net(phi, xv) - yv) ** 2).mean(), theta)
        total = [a + b / tasks.num_tasks for a, b in zip(total, gi)]
    for (name, got), want in zip(out.grad.items(), total):
        assert torch.allclose(got, want, rtol=1e-10, atol=1e-12), name


def test_batch_norm_in_eval_mode_uses_the_running_statistics():
    model = _bn_net()
    model[1].running_mean.fill_(0.3)
    model[1].running_var.fill_(2.0)
    model.eval()
    tasks = _bn_tasks()
    loss = mg.module_loss(model, torch.nn.functional.mse_loss)
    (x, y), _ = tasks.task(0)
    h = x @ model[0].weight.T + model[0].bias
    h = (h - 0.3) / math.sqrt(2.0 + model[1].eps) * model[1].weight + model[1].bias
    expected = ((torch.tanh(h) @ model[3].weight.T + model[3].bias - y) ** 2).mean()
    assert torch.allclose(loss(mg.params_of(model), (x, y)), expected, rtol=1e-12)
    mg.MAML(steps=1, inner_lr=0.1)(loss, mg.params_of(model), tasks)
    assert float(model[1].running_mean[0]) == 0.3


def test_dropout_draws_an_independent_mask_per_task():
    """Two identical tasks: with one mask shared across tasks their meta-gradients would
    be equal; per-task randomness makes them differ. Without dropout (eval) they are equal."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Dropout(0.5),
                                torch.nn.Linear(16, 1)).double()
    one = _bn_tasks(T=1)
    same = mg.Task(train=tuple(t.expand(2, *t.shape[1:]) for t in one.train),
                   val=tuple(t.expand(2, *t.shape[1:]) for t in one.val))
    loss = mg.module_loss(model, torch.nn.functional.mse_loss)
    for batching in ("vmap", "loop"):
        out = mg.MAML(steps=1, inner_lr=0.1, batching=batching, diagnose="record")(
            loss, mg.params_of(model), same)
        norms = out.diagnostics["grad_norm"]
        assert not torch.equal(norms[0], norms[1]), batching
    model.eval()
    out = mg.MAML(steps=1, inner_lr=0.1)(loss, mg.params_of(model), same)
    assert torch.equal(out.diagnostics["grad_norm"][0], out.diagnostics["grad_norm"][1])


def _unit_hessian_problem():
    """L_tr = ½‖w − mean(x)‖² per task: H = I, so A = I + H/λ = 2I at λ = 1, and the
    implicit solve is x = A⁻¹b = b/2 for b = ∇L_val(φ)."""
    dtype = torch.float64
    gen = torch.Generator().manual_seed(0)

    def loss(p, batch):
        return 0.5 * ((p["w"] - batch[0].mean(0)) ** 2).sum() + 0 * batch[1].sum()

    tasks = mg.Task(train=(torch.randn(2, 4, 3, generator=gen, dtype=dtype),
                           torch.zeros(2, 4, dtype=dtype)),
                    val=(torch.randn(2, 4, 3, generator=gen, dtype=dtype),
                         torch.zeros(2, 4, dtype=dtype)))
    return loss, {"w": torch.randn(3, generator=gen, dtype=dtype)}, tasks


@pytest.mark.parametrize("step, terms, warned", [
    (1.0, 4, True), (1.0, 5, True),    # M = −I: partial sums b, 0, b, … never b/2
    (0.01, 50, True),                  # M = 0.98 I: cut at 0.98⁵¹ ≈ 0.36 of the way
    (0.01, 200, False),                # 0.98²⁰¹ ≈ 0.017: close to the limit
    (0.5, 3, False),                   # M = 0: exact after the first term
])
def test_neumann_cut_far_from_its_limit_is_reported(step, terms, warned):
    loss, params, tasks = _unit_hessian_problem()
    common = dict(steps=20, inner_lr=0.3, lam=1.0, diagnose="record")
    exact = mg.IMAML(cg_iters=3, **common)(loss, params, tasks)  # CG is exact on 2I at once
    assert exact.findings == []
    out = mg.Neumann(terms=terms, step=step, **common)(loss, params, tasks)
    # Closed form: x_J = η Σ_{j≤J} (1 − 2η)ʲ b = (b/2)(1 − (1 − 2η)^{J+1}).
    expected = exact.grad["w"] * (1 - (1 - 2 * step) ** (terms + 1))
    assert torch.allclose(out.grad["w"], expected, rtol=1e-9, atol=1e-12)
    kinds = [f.kind for f in out.findings]
    assert kinds == (["neumann_unconverged"] if warned else []), out.warnings
    if warned:
        assert "increase terms" in out.warnings[0]


def test_a_loss_writing_into_its_batch_is_refused_and_the_tasks_stay_as_they_were():
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(2, 4, 3, generator=gen), torch.randn(2, 4, generator=gen)
    tasks = mg.Task(train=(x, y), val=(x.clone(), y.clone()))
    before = x.clone()

    def loss(p, batch):
        return (batch[0].mul_(2) @ p["w"] - batch[1]).pow(2).mean()

    with pytest.raises(ValueError, match="wrote into the batch in place"):
        mg.MAML(steps=1, inner_lr=0.1)(loss, {"w": torch.randn(3, generator=gen)}, tasks)
    assert torch.equal(x, before)


@pytest.mark.parametrize("method, name", [
    (mg.MAML(steps=2, inner_lr=1e39), "inner_lr"), (mg.IMAML(lam=1e-39), "lam"),
    (mg.Penalty(lam=1e39), "lam"), (mg.Neumann(step=1e39), "step"),
])
def test_a_setting_beyond_the_float32_range_is_refused_by_name(method, name):
    # float32 holds 1.18e-38 … 3.40e38 (torch.finfo); beyond it the value would overflow
    # inside the computation with a message that names no setting.
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(2, 4, 3, generator=gen), torch.randn(2, 4, generator=gen)
    tasks = mg.Task(train=(x, y), val=(x.clone(), y.clone()))

    def loss(p, b):
        return (b[0] @ p["w"] - b[1]).pow(2).mean()

    with pytest.raises(ValueError, match=rf"^{name}=\S+ is outside what torch.float32"):
        method(loss, {"w": torch.randn(3, generator=gen)}, tasks)
    # float64 holds it: the same setting is accepted there (the checks report the rest).
    method = dataclasses.replace(method, diagnose="record")
    method(loss, {"w": torch.randn(3, dtype=torch.float64, generator=gen)},
           mg.Task(train=(x.double(), y.double()), val=(x.double(), y.double())))


@pytest.mark.parametrize("make, message", [
    (lambda: mg.Sinusoid(shots=0), "shots must be a positive integer, got 0"),
    (lambda: mg.Sinusoid(query=-1), "query must be a positive integer, got -1"),
    (lambda: mg.LinearRegression(dim=0), "dim must be a positive integer, got 0"),
    (lambda: mg.Sinusoid().sample(0), "num_tasks must be a positive integer, got 0"),
    (lambda: mg.Sinusoid().sample(2.5), "num_tasks must be a positive integer, got 2.5"),
])
def test_task_families_refuse_empty_or_fractional_sizes(make, message):
    # An empty support set makes the mean train loss 0/0 (NaN) deep inside a backward pass.
    with pytest.raises(ValueError, match=re.escape(message)):
        make()


def test_a_loss_already_nan_at_theta_is_blamed_on_the_data_not_the_inner_loop():
    # Task 0's labels are all ignore_index: its mean cross-entropy is 0/0 before any step.
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 3, generator=gen)
    y = torch.full((2, 4), -100, dtype=torch.long)
    y[1] = 1
    tasks = mg.Task(train=(x, y), val=(x.clone(), torch.ones(2, 4, dtype=torch.long)))
    params = {"w": torch.randn(3, 2, generator=gen)}

    def loss(p, b):
        return torch.nn.functional.cross_entropy(b[0] @ p["w"], b[1])

    assert torch.isnan(loss(params, (x[0], y[0]))) and torch.isfinite(loss(params, (x[1], y[1])))
    out = mg.MAML(steps=2, inner_lr=0.1, diagnose="record")(loss, params, tasks)
    assert "at the parameters themselves, before any inner step, in task 0" in out.warnings[0]
    assert not any("inner loop diverged" in w or "rose" in w for w in out.warnings)
    assert {f.kind for f in out.findings} == {"non_finite"}


def test_bfloat16_rounding_is_not_an_inner_loop_rise_but_a_real_one_still_is():
    # bfloat16 keeps 8 significant bits (eps = 2⁻⁷): a tiny step moves the loss by less than
    # its rounding, which must not read as a rise; a step far beyond 2/L still must.
    from metagrad.models import mlp

    model = mlp((1, 40, 40, 1), seed=0).to(torch.bfloat16)
    loss = mg.module_loss(model, lambda a, b: ((a - b) ** 2).mean())
    tasks = mg.Sinusoid().sample(25, seed=0, dtype=torch.bfloat16)
    params = mg.params_of(model)
    quiet = mg.MAML(steps=5, inner_lr=1e-4, diagnose="record")(loss, params, tasks)
    assert "inner_loop_rise" not in {f.kind for f in quiet.findings}, quiet.warnings
    loud = mg.MAML(steps=3, inner_lr=5.0, diagnose="record")(loss, params, tasks)
    assert {f.kind for f in loud.findings} & {"inner_loop_rise", "non_finite"}
