"""Implementation exactness of the inner-loop variants: learned step sizes (one per tensor,
per entry, per step), partial adaptation, momentum, Nesterov and Adam inner loops, the
multi-step loss, for every method that can run each, in float64.

Each case is compared, like the textbook methods in ``test_accuracy.py``, with

* the independent dense reference (``metagrad_reference.inner_loops``: forward-accumulated
  dense Jacobians, never reverse mode through the loop): the meta-gradient and the losses
  to ≤ 1e-9, and the meta-gradient with respect to the rates (``out.hyper_grad``) to
  ≤ 1e-9;
* central finite differences of the objective the meta-gradient is the gradient of
  (MAML's F in θ *and* in every rate tensor; L_val at φ for FOMAML; the penalty objective)
  to ≤ 1e-7.

A 1e-6 error in any variant's meta-gradient or rate-gradient fails these checks
(``test_one_in_a_million_fails``).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from helpers import Case, evaluate, get, level1_failures, perturb_grad, rel

import metagrad as mg
from metagrad._forms import INNER_FORMS, inner_rates
from metagrad.verify.compare import FD_RTOL, REF_RTOL, fd_hyper_result, reference_result

PROBLEM = "mlp_softplus"
"""A 4-6-3 softplus classifier (d = 51): smooth, so finite differences are meaningful."""


def _settings(method: str) -> dict:
    """Three inner steps at settings where every method is healthy on the problem: α = 0.05
    descends, λ = 5 keeps I + H/λ positive definite, the Neumann step contracts."""
    cls = mg.METHODS[method]
    s = {"steps": 3, "inner_lr": 0.05}
    if "lam" in cls.setting_names():
        s["lam"] = 5.0 if cls.target == "implicit" else 0.1
    extra = {"cg_iters": 4, "terms": 6, "step": 0.28}
    s.update({k: v for k, v in extra.items() if k in cls.setting_names()})
    return s


CASES = [Case.of(method, PROBLEM, inner=form, **_settings(method))
         for method in mg.METHOD_NAMES for form, spec in INNER_FORMS.items()
         if spec.applies_to(mg.METHODS[method]) is None]


def test_every_method_meets_every_variant_it_can_run():
    for method in mg.METHOD_NAMES:
        runnable = {f for f, spec in INNER_FORMS.items()
                    if spec.applies_to(mg.METHODS[method]) is None}
        assert {c.inner for c in CASES if c.method == method} == runnable
    assert {c.inner for c in CASES if c.method == "maml"} == set(INNER_FORMS)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_variant_matches_the_oracle_and_finite_differences(case: Case):
    row = evaluate(case, fd=True, target=False)
    failures = level1_failures(row)
    for key, tol in (("err_hyper", REF_RTOL), ("err_fd_hyper", FD_RTOL)):
        if row.get(key) is not None and not row[key] <= tol:
            failures.append(f"{key} = {row[key]:.3e} > {tol:.0e}")
    assert not failures, f"{case.id}: " + "; ".join(failures)
    method = mg.METHODS[case.method]
    learned = INNER_FORMS[case.inner].rates and method.hyper_gradient is not None
    # what must have been checked, not only what happened to be
    if learned:
        assert row["err_hyper"] is not None
        if method.gradient_of == "meta_objective":
            assert row["err_fd_hyper"] is not None
    if method.gradient_of not in (None, "train_along_path"):
        assert row["err_fd"] is not None


# -- combinations and learnable momentum ---------------------------------------------------

def _check(method, problem, hyper_keys):
    """A method built by hand against the oracle and finite differences (as above)."""
    out = method(problem.loss, problem.params, problem.tasks)
    ref = reference_result(problem, method)
    assert rel(mg_flat(out.grad), ref.grad) <= REF_RTOL
    assert sorted(out.hyper_grad) == sorted(hyper_keys)
    got, want = flat_all(out.hyper_grad), flat_all(ref.hyper_grad)
    assert rel(got, want) <= REF_RTOL
    numeric = fd_hyper_result(problem, method)
    if numeric is not None:
        assert rel(got, numeric) <= FD_RTOL


def mg_flat(grad):
    return torch.cat([v.reshape(-1) for v in grad.values()])


def flat_all(hyper):
    from metagrad.verify.compare import flat_hyper

    return flat_hyper(hyper)


def test_learned_momentum_beta_and_per_step_entry_rates_with_adam():
    problem = get(PROBLEM)
    per_step_entry = {k: v * (1 + 0.1 * torch.arange(v.numel(), dtype=v.dtype).reshape(v.shape)
                              .remainder(5))
                      for k, v in inner_rates(problem.params, 0.05, per="step_entry", steps=3,
                                              requires_grad=True).items()}
    beta = torch.tensor(0.6, dtype=torch.float64, requires_grad=True)
    _check(mg.MAML(steps=3, inner_lr=per_step_entry, inner=mg.Momentum(beta)), problem,
           ["inner_lr", "beta"])
    _check(mg.MAML(steps=3, inner_lr=per_step_entry, inner=mg.Adam(beta1=0.8)), problem,
           ["inner_lr"])
    _check(mg.FOMAML(steps=3, inner_lr=torch.tensor(0.05, dtype=torch.float64),
                     inner=mg.Momentum(beta, nesterov=True)), problem, ["inner_lr", "beta"])


def test_one_rate_for_everything_as_a_0_dim_tensor_equals_the_float():
    problem = get(PROBLEM)
    rate = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
    as_tensor = mg.MAML(steps=3, inner_lr=rate)(problem.loss, problem.params, problem.tasks)
    as_float = mg.MAML(steps=3, inner_lr=0.05)(problem.loss, problem.params, problem.tasks)
    assert rel(mg_flat(as_tensor.grad), mg_flat(as_float.grad)) <= 1e-14
    # dF/dα by central differences in the one number α
    _check(mg.MAML(steps=3, inner_lr=rate), problem, ["inner_lr"])
    assert as_tensor.hyper_grad["inner_lr"].shape == ()


def test_step_weights_on_the_last_step_only_is_maml():
    problem = get(PROBLEM)
    weighted = mg.MAML(steps=3, inner_lr=0.05, step_weights=(0, 0, 1))
    plain = mg.MAML(steps=3, inner_lr=0.05)
    a = weighted(problem.loss, problem.params, problem.tasks)
    b = plain(problem.loss, problem.params, problem.tasks)
    assert rel(mg_flat(a.grad), mg_flat(b.grad)) <= 1e-14
    assert a.diagnostics["step_val_losses"].shape == (problem.meta_batch, 3)


# -- sharpness ----------------------------------------------------------------------------

class _Perturbed:
    """A method whose meta-gradient, or whose rate-gradient, is off by a relative 1e-6."""

    def __init__(self, method, what: str):
        self.method, self.what = method, what

    def __call__(self, loss, params, tasks):
        out = self.method(loss, params, tasks)
        if self.what == "grad":
            out.grad = perturb_grad(out.grad, 1e-6)
        else:
            rates = out.hyper_grad["inner_lr"]
            out.hyper_grad = {**out.hyper_grad, "inner_lr": perturb_grad(rates, 1e-6)}
        return out


SHARP = [c for c in CASES if c.method in ("maml", "fomaml", "penalty")
         and c.inner in ("per_entry", "per_step", "adam")]


@pytest.mark.parametrize("what", ["grad", "hyper"])
@pytest.mark.parametrize("case", SHARP, ids=lambda c: c.id)
def test_one_in_a_million_fails(case: Case, what: str):
    if what == "hyper" and not INNER_FORMS[case.inner].rates:
        pytest.skip("no learned rates in this variant")
    honest = evaluate(case, fd=False, target=False)
    assert honest["passed"]
    broken = evaluate(case, fd=False, target=False, method=_Perturbed(case.build(), what))
    key = "err_reference" if what == "grad" else "err_hyper"
    assert broken[key] > REF_RTOL and not broken["passed"], (key, broken[key])


# -- what the methods refuse, plainly ------------------------------------------------------

def test_methods_without_a_rate_gradient_refuse_rates_that_ask_for_one():
    problem = get(PROBLEM)
    rates = inner_rates(problem.params, 0.05, per="entry", requires_grad=True)
    for method in (mg.Reptile(steps=2, inner_lr=rates),
                   mg.IMAML(steps=2, inner_lr=rates, lam=5.0)):
        with pytest.raises(ValueError, match="returns no meta-gradient for inner_lr"):
            method(problem.loss, problem.params, problem.tasks)
    # fixed rates (no grad) are step sizes like any other: accepted, no rate-gradient
    fixed = {k: v.detach() for k, v in rates.items()}
    out = mg.Reptile(steps=2, inner_lr=fixed)(problem.loss, problem.params, problem.tasks)
    assert out.hyper_grad == {}
    with pytest.raises(ValueError, match="adapts every parameter"):
        head = inner_rates(problem.params, 0.05, adapt=list(problem.params)[-2:],
                           requires_grad=False)
        mg.IMAML(steps=2, inner_lr=head, lam=5.0)(problem.loss, problem.params, problem.tasks)


@pytest.mark.parametrize("bad, message", [
    ({"nope": torch.tensor(0.1)}, "not parameters"),
    ({"W1": torch.full((7,), 0.1, dtype=torch.float64)}, "fits none of the forms"),
    ({}, "empty dict"),
    (torch.ones(3), "must be 0-dim"),
    ({"W1": torch.tensor(float("nan"))}, "NaN"),
])
def test_bad_rates_are_named(bad, message):
    problem = get(PROBLEM)
    with pytest.raises((ValueError, TypeError), match=message):
        mg.MAML(steps=2, inner_lr=bad)(problem.loss, problem.params, problem.tasks)


def test_trajectory_backward_refuses_what_it_cannot_sweep():
    with pytest.raises(ValueError, match="backward='trajectory'"):
        mg.MAML(steps=2, inner=mg.Adam(), backward="trajectory")
    with pytest.raises(ValueError, match="step_weights"):
        mg.MAML(steps=2, step_weights=(1.0,))


def test_rate_gradients_come_back_in_the_rates_dtype():
    problem = get(PROBLEM)
    rates = {k: v.float() for k, v in inner_rates(problem.params, 0.05, per="entry").items()}
    out = mg.MAML(steps=2, inner_lr=rates)(problem.loss, problem.params, problem.tasks)
    assert all(out.hyper_grad["inner_lr"][k].dtype == torch.float32 for k in rates)
    assert out.grad["W1"].dtype == torch.float64
    # a method holding rates is a value: a copy holds the same tensors and compares equal
    method = mg.MAML(steps=2, inner_lr=rates)
    assert replace(method, diagnose="off") == replace(method, diagnose="off")
    assert replace(method, diagnose="off").inner_lr == method.inner_lr
    copies = {k: v.clone() for k, v in rates.items()}  # the same values, other tensors
    assert mg.MAML(steps=2, inner_lr=copies).inner_lr != method.inner_lr
