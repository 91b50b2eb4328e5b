"""The fast paths give the numbers of the paths they replace: the eager methods' reverse mode
on task-batched parameters against ``torch.func`` per task (every method, every inner-loop
form, float64), the compiled stepwise form against the eager method (also when what the
loss reads changes between calls), and the eager/compiled choice of ``mg.compile(calls=N)``
decides by its rule. Start-up: an eager call imports no compiler."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import rel, tanh_mlp_problem
from torch.utils import _pytree as torch_pytree

import metagrad as mg
from metagrad import _pytree as pt
from metagrad.compiled import VERIFIED_TORCH, _choice, _method

FORMS = [None, *mg.INNER_FORMS]


def _variant(name: str, form: str | None, params) -> mg.Method:
    cls = mg.METHODS[name]
    settings = {**cls.default_settings(), "steps": 3, "inner_lr": 0.05}
    if "lam" in settings:
        settings["lam"] = 2.0 if cls.target == "implicit" else 0.1
    if form is not None:
        recipe = mg.INNER_FORMS[form]
        why = recipe.applies_to(cls)
        if why:
            pytest.skip(why)
        settings.update(recipe.kwargs(params, 3, 0.05, learn=cls.hyper_gradient is not None,
                                      jitter=1))
    return cls(**settings)


@pytest.mark.parametrize("form", FORMS, ids=lambda f: f or "plain")
@pytest.mark.parametrize("name", sorted(mg.METHODS))
def test_batched_eager_equals_the_transform_path(name, form):
    loss, params, tasks = tanh_mlp_problem(tasks=3, sizes=(1, 5, 4, 1))
    method = _variant(name, form, params)
    theta = method.prepare(loss, params, tasks)
    hyper = method.hyper(next(iter(theta.values())))
    fast = method.batched_eager(loss, theta, tasks.train, tasks.val, hyper)
    if fast is None:
        pytest.skip(f"{name} with {form} has no batched eager form (it runs the other)")
    grad, hyper_grad, diag = method.batched(loss)(theta, tasks.train, tasks.val, hyper)
    assert rel(pt.flatten(fast[0]), pt.flatten(grad)) < 1e-12
    a, b = torch_pytree.tree_leaves(fast[1]), torch_pytree.tree_leaves(hyper_grad)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert rel(x, y) < 1e-12
    assert list(fast[2]) == list(diag)
    for key in diag:
        assert fast[2][key].shape == diag[key].shape, key
        assert rel(fast[2][key], diag[key]) < 1e-12, key


def test_the_eager_call_runs_the_fast_path():
    # MAML K = 3 through the method call: a perturbed fast path would change the result.
    loss, params, tasks = tanh_mlp_problem(tasks=3, sizes=(1, 4, 1))
    method = mg.MAML(steps=3, inner_lr=0.1)
    theta = method.prepare(loss, params, tasks)
    calls = []
    original = type(method).batched_eager

    def spy(self, *args):
        calls.append(1)
        return original(self, *args)

    try:
        type(method).batched_eager = spy  # type: ignore[method-assign]
        out = method(loss, params, tasks)
    finally:
        type(method).batched_eager = original  # type: ignore[method-assign]
    assert calls == [1]
    ref = method.batched(loss)(theta, tasks.train, tasks.val, {})[0]
    assert rel(pt.flatten(out.grad), pt.flatten(ref)) < 1e-12


def test_an_eager_call_imports_no_compiler():
    """torch.func.grad imports torch._dynamo on its first call (seconds of a script's
    start); the eager methods' reverse mode does not need it."""
    out = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import sys, torch
        import metagrad as mg
        from metagrad.models import mlp
        model = mlp((1, 8, 1), seed=0)
        loss = mg.module_loss(model, torch.nn.functional.mse_loss)
        tasks = mg.Sinusoid().sample(4, seed=0)
        for method in (mg.MAML(steps=2, inner_lr=0.01), mg.FOMAML(steps=2, inner_lr=0.01)):
            method(loss, mg.params_of(model), tasks)
        print(sorted(m for m in sys.modules if m.startswith(("torch._dynamo",
                                                             "torch._inductor"))))
    """)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


needs_compile = pytest.mark.skipif(not torch.__version__.startswith(VERIFIED_TORCH),
                                   reason="mg.compile is verified on torch "
                                          + str(VERIFIED_TORCH))


@needs_compile
def test_stepwise_follows_what_the_loss_reads():
    """The stepwise form checks torch.compile's guards on each piece's first call of a
    meta-gradient and skips them on the repeats: a value the loss reads that changes
    between calls must still recompile (and give the eager numbers)."""
    loss, params, tasks = tanh_mlp_problem(tasks=2, sizes=(1, 4, 1))

    class Setting:
        scale = 1.0

    def scaled(p, batch):
        return loss(p, batch) * Setting.scale

    method = mg.MAML(steps=3, inner_lr=0.1, diagnose="off")
    compiled = mg.compile(method, backend="aot_eager", loop="stepwise")
    for scale in (1.0, 3.0, 1.0, 0.5):
        Setting.scale = scale
        for _ in range(2):
            out = compiled(scaled, params, tasks)
            ref = method(scaled, params, tasks)
            assert rel(pt.flatten(out.grad), pt.flatten(ref.grad)) < 1e-12, scale


# -- the eager/compiled choice --------------------------------------------------------------
def test_plan_compiles_when_the_saving_exceeds_the_cost(tmp_path):
    book = _choice.CostBook(tmp_path)
    cold = 20.0
    cost = cold + _choice.FIRST_COMPILE_S  # nothing compiled with this folder yet
    eager = 0.010  # compiled assumed eager / SPEEDUP
    saving = eager * (1 - 1 / _choice.SPEEDUP)
    for calls, expected in ((int(cost / saving) - 10, False), (int(cost / saving) + 10, True)):
        plan = _choice.Plan(calls, "d", "cpu", cold)
        assert plan.eager_call(1.0, book) is False  # the first call is not timed
        assert plan.eager_call(eager, book) is expected
        assert plan.reason.startswith("compiled" if expected else "eager"), plan.reason


def test_cold_estimate_grows_with_the_unrolled_graph():
    unrolled = [_choice.cold_estimate(3 * k + 1, "unrolled", "cpu") for k in (1, 5, 10)]
    assert unrolled == sorted(unrolled) and unrolled[2] > 2 * unrolled[0]
    flat = {_choice.cold_estimate(3 * k + 1, "scan", "cpu") for k in (6, 10, 50)}
    assert len(flat) == 1
    assert _choice.cold_estimate(16, "unrolled", "cuda") > unrolled[1]


def test_plan_rents_then_buys_beyond_the_expected_calls(tmp_path):
    book = _choice.CostBook(tmp_path)
    book.add_compile("d", "cpu", 0.5)
    book.add_compile("d", "cpu", 0.05)  # compiled before with these caches: 0.05 s
    plan = _choice.Plan(3, "d", "cpu", 20.0)
    decisions = [plan.eager_call(0.02, book) for _ in range(6)]
    # calls 1-3 expected (never worth 0.05 s), then 0.02 s a call beyond: 0.06 s ≥ 0.05 s
    # after the third call beyond them
    assert decisions == [False, False, False, False, False, True]
    assert "ran out" in plan.reason


def test_cost_book_keeps_what_was_measured(tmp_path):
    book = _choice.CostBook(tmp_path)
    assert book.compile_estimate("a", "cpu", 10.0) == 10.0 + _choice.FIRST_COMPILE_S
    book.add_compile("a", "cpu", 12.0, "unrolled")
    book.add_compile("b", "cpu", 30.0, "scan")
    book.add_compile("b", "cpu", 4.0, "scan")
    book.add_calls("a", 0.002, 0.010)
    again = _choice.CostBook(tmp_path)  # another process reads the same file
    # one cold compile: its graphs are cached now, a fraction of it is left
    assert again.compile_estimate("a", "cpu", 10.0) == 12.0 * _choice.WARM_FRACTION["unrolled"]
    assert again.compile_estimate("b", "cpu", 10.0) == 4.0  # the last (warm) compile
    assert again.compile_estimate("new", "cpu", 10.0) == 10.0  # the folder has compiled
    assert again.call_estimate("a", 0.020) == pytest.approx(0.004)  # the measured ratio
    assert again.call_estimate("new", 0.020) == pytest.approx(0.020 / _choice.SPEEDUP)


def test_digest_names_the_signature_not_the_rate_values():
    loss, params, tasks = tanh_mlp_problem(tasks=2, sizes=(1, 4, 1))
    key = mg.compiled.signature(loss, params, tasks)
    rates = {k: torch.full_like(v, 0.1) for k, v in params.items()}
    a = _choice.digest(key, mg.MAML(steps=3, inner_lr=rates), "unrolled", "inductor", None)
    b = _choice.digest(key, mg.MAML(steps=3, inner_lr={k: v * 2 for k, v in rates.items()}),
                       "unrolled", "inductor", None)
    c = _choice.digest(key, mg.MAML(steps=4, inner_lr=rates), "unrolled", "inductor", None)
    assert a == b != c


@needs_compile
def test_compile_with_calls_runs_eagerly_when_compiling_does_not_pay(monkeypatch):
    loss, params, tasks = tanh_mlp_problem(tasks=2, sizes=(1, 4, 1))
    method = mg.MAML(steps=2, inner_lr=0.1, diagnose="off")
    few = mg.compile(method, backend="aot_eager", calls=3)
    for _ in range(3):
        out = few(loss, params, tasks)
    assert not few.compile_seconds
    assert list(few.decisions.values())[0].startswith("eager")
    # compiling pays at once (a negative estimate outweighs the first compile's extra)
    monkeypatch.setattr(_method, "cold_estimate", lambda *a: -2 * _choice.FIRST_COMPILE_S)
    many = mg.compile(method, backend="aot_eager", calls=10)
    for _ in range(4):
        out = many(loss, params, tasks)
    assert len(many.compile_seconds) == 1
    assert list(many.decisions.values())[0].startswith("compiled")
    ref = method(loss, params, tasks)
    assert rel(pt.flatten(out.grad), pt.flatten(ref.grad)) < 1e-12
    with pytest.raises(ValueError, match="calls must be a positive integer"):
        mg.compile(method, calls=0)


def test_the_explanation_of_a_rise_is_measured_once_per_many_calls(monkeypatch):
    """An inner loss that rises at every call is reported at every call, but the power
    iteration that explains it (more than a meta-gradient's cost) runs once per
    EXPLAIN_EVERY calls of a method; a training run paid it at every step."""
    from metagrad import diagnose

    loss, params, tasks = tanh_mlp_problem(tasks=2, sizes=(1, 4, 1))
    measured = []
    original = diagnose.largest_curvature

    def counted(*args, **kwargs):
        measured.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(diagnose, "largest_curvature", counted)
    method = mg.MAML(steps=3, inner_lr=50.0, diagnose="record")  # diverges: rises
    messages = [method(loss, params, tasks).warnings for _ in range(5)]
    assert all(any("inner loss rose" in m for m in found) for found in messages)
    assert len(measured) == 1
    assert "measured 4 calls ago" in " ".join(messages[-1])
    fresh = mg.MAML(steps=3, inner_lr=50.0, diagnose="record")  # another method: its own
    fresh(loss, params, tasks)
    assert len(measured) == 2
