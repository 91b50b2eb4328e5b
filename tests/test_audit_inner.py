"""The audit on inner-loop variants: learned rates (Meta-SGD, MAML++, per tensor, one for
all), momentum, Nesterov and Adam inner loops, the multi-step loss, with the rate-gradients a
target returns checked and their mistakes named.

The targets are independent implementations (``tests/audit_zoo.py``: ``learned_target``,
plain per-task ``torch.autograd`` loops written the way such code is written); the numbers
they are judged against are the oracle's (``metagrad_reference.inner_loops`` for the
correct values, ``metagrad_reference.inner_variants`` for the mistakes: forward-accumulated
dense Jacobians) and central finite differences.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from audit_zoo import learned_target

import metagrad as mg
from metagrad.cli import main as cli
from metagrad.testing import battery, check_meta_gradient
from metagrad.testing.catalogue import INNER
from metagrad.testing.check import rate_differences
from metagrad.testing.command import INNER_NAMES
from metagrad.testing.variant import AUDIT_FORMS, Variant
from metagrad.verify.compare import reference_result, rel_error

ROOT = Path(__file__).resolve().parents[1]
S = dict(steps=2, inner_lr=0.1)


def _audit(method, inner, **bug):
    return check_meta_gradient(lambda **kw: learned_target(**kw, **bug), method, inner=inner,
                               **S)


# ---- the oracle's family of wrong variants is the textbook variant at no option -------------

@pytest.mark.parametrize("kind", ["gd", "momentum", "nesterov", "adam"])
def test_inner_family_without_options_is_the_reference(kind):
    """``inner_variants.meta_batch`` with no deviation equals ``inner_loops`` (an independent
    forward accumulation) for every method, rate form and rule: the rows are deviations from
    the right value, not from a different one."""
    from metagrad_reference import flat_loss, flatten
    from metagrad_reference import inner_loops as il
    from metagrad_reference import inner_variants as iv

    _, problem = battery.problems("scalar+matrix", 3, "maml", S)
    params = problem.params
    f, theta = flat_loss(problem.loss, params), flatten(params)
    layout = [(k, tuple(v.shape)) for k, v in params.items()]
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return 0.05 + 0.1 * torch.rand(shape, generator=g, dtype=torch.float64)

    forms = [0.1, rand(), {k: rand() for k in params},
             {k: rand(*v.shape) for k, v in params.items()},
             {k: rand(3, *v.shape) for k, v in params.items()},
             {k: rand(3, *[1] * v.dim()) for k, v in params.items()},
             {"layer.bias": rand(3)}]
    methods = {"maml": {}, "fomaml": {"graph": "none"}, "reptile": {"output": "displacement"},
               "penalty": {"output": "penalty", "graph": "none", "lam": 0.5}}
    rule = il.Rule(kind)
    for rates in forms:
        for name, options in methods.items():
            extra = {"lam": 0.5} if name == "penalty" else {}
            ref = il.meta_batch(name, f, theta, layout, problem.task_list(), steps=3,
                                rates=rates, rule=rule, **extra)
            grad, rate = iv.meta_batch(f, theta, layout, problem.task_list(), steps=3,
                                       rates=rates, rule=rule, **options)
            assert rel_error(grad, ref.grad) <= 1e-12, (name, rates)
            hyper = ref.hyper_grad.get("inner_lr")
            if hyper is None:
                assert rate.numel() == 0
            else:
                flat = (torch.cat([v.reshape(-1) for v in hyper.values()])
                        if isinstance(hyper, dict) else hyper.reshape(-1))
                assert rel_error(rate, flat) <= 1e-12, (name, rates)


# ---- correct code passes, with its rate-gradient checked ----------------------------------------

CORRECT = {
    "Meta-SGD (per entry)": ("maml", "per_entry", {}),
    "MAML++ rates (per step)": ("maml", "per_step", {}),
    "one rate per tensor": ("maml", "per_tensor", {}),
    "one rate for all": ("maml", "one_rate", {}),
    "ANIL": ("maml", "anil", {}),
    "momentum": ("maml", "momentum", {}),
    "Nesterov": ("maml", "nesterov", {}),
    "Adam": ("maml", "adam", {}),
    "multi-step loss": ("maml", "multistep", {}),
    "per-step rates and Adam": ("maml", ("per_step", "adam"), {}),
    "per-tensor rates and momentum": ("maml", ("per_tensor", "momentum"), {}),
    "first-order Meta-SGD": ("fomaml", "per_entry", {"first_order": True}),
    "first-order, Adam": ("fomaml", "adam", {"first_order": True}),
    "penalty, per-entry rates": ("penalty", "per_entry", {"first_order": True}),
}


@pytest.mark.parametrize("name", list(CORRECT))
def test_correct_independent_target_passes(name):
    method, inner, options = CORRECT[name]
    settings = {**S, **({"lam": 0.5} if method == "penalty" else {})}
    result = check_meta_gradient(lambda **kw: learned_target(**kw, **options), method,
                                 inner=inner, **settings)
    assert result.passed, result.report()
    ran = [c for c in result.cases if c.status != "not run"]
    assert len(ran) >= 5 and all(c.err_reference <= 1e-9 for c in ran)
    learned = Variant.of(inner).has_rates and inner != "anil"
    if learned:  # the rate-gradient was checked, against the oracle and (MAML) differences
        assert all(c.err_rate_reference is not None and c.err_rate_reference <= 1e-9
                   for c in ran), result.table()
        if method == "maml":
            assert all(c.err_rate_fd is not None and c.err_rate_fd <= 1e-7 for c in ran)
        assert "rates vs reference" in result.table()
    else:
        assert all(c.err_rate_reference is None for c in ran)
    assert result.variant and result.variant in result.report()


def test_metagrad_itself_passes_with_its_rate_gradients():
    def factory(**kw):
        method = mg.MAML(**kw, diagnose="off")
        return lambda loss, params, tasks: method(loss, params, tasks)  # a MetaGradient

    for inner in ("per_entry", ("per_step", "nesterov")):
        result = check_meta_gradient(factory, "maml", inner=inner, **S)
        assert result.passed, result.report()
        assert all(c.err_rate_reference is not None for c in result.cases
                   if c.status == "pass")


def test_float32_mode_with_rates():
    """Correct code in float32 passes at float32 tolerances (rates rounded to float32 for the
    target, the same numbers in float64 for the oracle); in float64 mode a result 1e-6 off
    in the rate-gradient fails."""
    result = check_meta_gradient(learned_target, "maml", inner="per_entry", float32=True, **S)
    assert result.passed, result.report()
    assert all(1e-9 < c.err_rate_reference < c.tol_reference for c in result.cases
               if c.err_rate_reference and c.settings["steps"] > 0)


# ---- a 1e-6 error in the rate-gradient fails ----------------------------------------------------

def test_rate_gradient_off_by_one_part_in_a_million_fails():
    result = _audit("maml", "per_entry", perturb_rates=1e-6)
    assert not result.passed
    for case in result.failures:
        assert case.err_reference <= 1e-9  # the meta-gradient is right
        assert case.err_rate_reference == pytest.approx(1e-6, rel=1e-3)
        assert not case.match and "matches no known mistake" in case.diagnosis
        assert "inner_lr[" in case.diagnosis  # the wrong tensors are the rates
    assert [c for c in result.cases if c.settings["steps"] == 0][0].passed  # nothing to perturb


def test_rate_differences_use_a_step_relative_to_the_rate():
    """At small rates (α ≈ 0.01, K = 5) the rate finite differences still agree with the exact
    rate-gradient far below the 1e-7 tolerance."""
    settings = dict(steps=5, inner_lr=0.01)
    _, exact = battery.problems("scalar+matrix", 3, "maml", settings)
    built = Variant.of("per_entry").build(exact.params, 5, 0.01, learn=True,
                                         dtype=torch.float64)
    method = mg.MAML(**{**settings, **built.exact})
    exact_rates = reference_result(exact, method).hyper_grad["inner_lr"]
    flat = torch.cat([v.reshape(-1) for v in exact_rates.values()])
    assert rel_error(rate_differences(exact, method), flat) <= 1e-8


# ---- the bug zoo of the variants: each one failed and named ------------------------------------

ZOO = {
    # name: (method, inner, the deviation, the keys it must be named as)
    "rate-gradient missing the second-order term": (
        "maml", "per_entry", {"rate_first_order": True}, {"rate_first_order"}),
    "rates applied one step late (rates[k - 1])": (
        "maml", "per_step", {"rates_late": True}, {"rates_late"}),
    "per-step rate-gradient summed over the steps": (
        "maml", "per_step", {"steps_summed": True}, {"rate_steps_summed"}),
    "rates detached": ("maml", "per_entry", {"rates_detached": True}, {"rates_detached"}),
    "rate-gradient sign": ("maml", "per_entry", {"rate_sign": True}, {"rate_sign"}),
    "mean instead of sum over entries": (
        "maml", "per_tensor", {"entries_mean": True}, {"rate_entries_mean"}),
    "momentum not reset per task (one backward)": (
        "maml", ("per_tensor", "momentum"), {"carry": "differentiated"}, {"state_carried"}),
    "Adam state not reset per task (detached)": (
        "maml", "adam", {"carry": "detached"}, {"state_carried_detached"}),
    "Nesterov written as the heavy ball": (
        "maml", "nesterov", {"kind": "momentum"}, {"nesterov_as_heavy_ball"}),
    "heavy ball written as Nesterov": (
        "maml", "momentum", {"kind": "nesterov"}, {"heavy_ball_as_nesterov"}),
    "momentum as an average": ("maml", "momentum", {"ema": True}, {"momentum_ema"}),
    "Adam without bias correction": (
        "maml", "adam", {"no_bias": True}, {"adam_no_bias_correction"}),
    "Adam bias corrections in float32": (
        "maml", "adam", {"bias_float32": True}, {"adam_bias_float32"}),
    "Adam with ε outside the correction": (
        "maml", "adam", {"eps_outside": True}, {"adam_eps_outside"}),
    "first order with learned rates": (
        "maml", "per_entry", {"first_order": True}, {"first_order"}),
    "FOMAML with rates, differentiated": ("fomaml", "per_entry", {}, {"second_order"}),
    "query batch in the inner loop, per-step rates": (
        "maml", "per_step", {"query_inner": True}, {"query_inner"}),
    "sum over tasks, with rates": ("maml", "per_entry", {"reduce": "sum"}, {"sum"}),
    "two at once: rates late and the heavy ball as Nesterov": (
        "maml", ("per_step", "momentum"), {"rates_late": True, "kind": "nesterov"},
        {"rates_late+heavy_ball_as_nesterov", "heavy_ball_as_nesterov"}),
}


@pytest.mark.parametrize("name", list(ZOO))
def test_variant_bug_zoo_fails_and_is_named(name):
    method, inner, bug, keys = ZOO[name]
    result = _audit(method, inner, **bug)
    assert not result.passed, result.report()
    for case in result.failures:
        assert case.match, case.diagnosis
        assert {case.closest, *case.also} & keys, case.diagnosis
        assert "your result equals" in case.diagnosis or "all zeros" in case.diagnosis
    if len(keys) == 1 and "+" not in next(iter(keys)):
        row = next(r for r in INNER if r.key in keys) if keys & {r.key for r in INNER} \
            else None
        if row is not None:
            assert row.title in result.diagnosis


def test_adam_with_a_naive_square_root_fails_where_a_gradient_is_zero():
    """Adam inner loops also run on the battery's ``dead input`` problem (an exactly zero
    inner gradient, v̂ = 0): a naive √ there gives 0·∞ = NaN, said with why; the correct
    target passes it (its value is the oracle's finite derivative)."""
    result = _audit("maml", "adam", naive_sqrt=True)
    failed = {c.case.split(",")[0] for c in result.failures}
    assert failed == {"dead input"}, result.report()
    case = result.failures[0]
    assert case.closest == "non-finite" and "0·∞ = NaN" in case.diagnosis
    correct = _audit("maml", "adam")
    assert any(c.case.startswith("dead input") and c.passed for c in correct.cases)
    plain = _audit("maml", "momentum")
    assert not any(c.case.startswith("dead input") for c in plain.cases)


def test_every_inner_row_has_a_zoo_target():
    named = set().union(*(keys for *_, keys in ZOO.values()))
    assert {r.key for r in INNER} <= named


def test_gradcheck_checks_a_method_with_its_own_inner_loop():
    """gradcheck compares metagrad on your model with the oracle of the same variant: its
    update rule, its rates (and their gradient), its loss weights."""
    from metagrad.testing import gradcheck

    model = torch.nn.Sequential(torch.nn.Linear(1, 6), torch.nn.Tanh(),
                                torch.nn.Linear(6, 1)).double()
    loss = mg.module_loss(model, torch.nn.functional.mse_loss)
    params = mg.params_of(model)
    tasks = mg.Sinusoid(shots=5, query=5).sample(3, seed=0, dtype=torch.float64)
    rates = mg.inner_rates(params, 0.05, per="step_entry", steps=2)
    for method in (mg.MAML(steps=2, inner_lr=0.05, inner=mg.Adam()),
                   mg.MAML(steps=2, inner_lr=0.05, inner=mg.Momentum(0.9, nesterov=True),
                           step_weights=(0.3, 0.7)),
                   mg.MAML(steps=2, inner_lr=rates)):
        report = gradcheck(method, loss, params, tasks)
        assert report.passed and report.cases[0].err_reference <= 1e-9, report.report()
    assert report.cases[0].err_rate_reference <= 1e-9
    assert report.cases[0].err_rate_fd <= 1e-7


def test_module_target_with_learned_rates():
    """Code written against an nn.Module gets the rates keyed like model.named_parameters()."""
    import torch.nn.functional as F
    from torch.func import functional_call

    from metagrad.testing import module_target

    def metasgd(*, steps, inner_lr):
        def run(model, tasks):
            names = [n for n, _ in model.named_parameters()]
            theta = list(model.parameters())
            rates = [inner_lr[n].detach().clone().requires_grad_(True) for n in names]
            total = [torch.zeros_like(w) for w in theta + rates]
            for i in range(tasks.num_tasks):
                (x, y), (x_val, y_val) = tasks.task(i)
                fast = theta
                for _ in range(steps):
                    logits = functional_call(model, dict(zip(names, fast)), (x,))
                    grads = torch.autograd.grad(F.cross_entropy(logits, y), fast,
                                                create_graph=True)
                    fast = [w - r * g for w, r, g in zip(fast, rates, grads)]
                logits = functional_call(model, dict(zip(names, fast)), (x_val,))
                out = torch.autograd.grad(F.cross_entropy(logits, y_val), theta + rates)
                total = [t + g / tasks.num_tasks for t, g in zip(total, out)]
            n = len(theta)
            return dict(zip(names, total[:n])), {"inner_lr": dict(zip(names, total[n:]))}

        return run

    result = check_meta_gradient(module_target(metasgd, "cross_entropy"), "maml",
                                 inner="per_entry", **S)
    assert result.passed, result.report()
    assert all(c.err_rate_reference <= 1e-9 for c in result.cases if c.status == "pass")


# ---- usage -------------------------------------------------------------------------------------

def test_a_target_without_rate_gradients_passes_with_a_note():
    def factory(**kw):
        inner = learned_target(**kw)
        return lambda loss, params, tasks: inner(loss, params, tasks)[0]

    result = check_meta_gradient(factory, "maml", inner="per_entry", **S)
    assert result.passed
    assert any("returned no rate-gradient" in n for n in result.notes)


def test_usage_errors():
    with pytest.raises(TypeError, match="must be a factory"):
        check_meta_gradient(learned_target(**S), "maml", inner="per_entry", **S)
    with pytest.raises(ValueError, match="both set inner_lr"):
        check_meta_gradient(learned_target, "maml", inner="per_entry,per_step", **S)
    with pytest.raises(ValueError, match="neither an inner-loop form"):
        check_meta_gradient(learned_target, "maml", inner="per_layer", **S)
    with pytest.raises(ValueError, match="cannot run the inner-loop variant"):
        check_meta_gradient(learned_target, "imaml", inner="anil", steps=2, inner_lr=0.1,
                            lam=2.0, cg_iters=3)
    assert set(INNER_NAMES) == set(AUDIT_FORMS)  # the CLI's list, kept without importing torch


def test_per_step_rates_at_k0_are_not_run_and_your_own_rates_work():
    result = check_meta_gradient(learned_target, "maml", inner="per_step", **S)
    k0 = [c for c in result.cases if c.settings["steps"] == 0][0]
    assert k0.status == "not run" and "does not fit" in k0.diagnosis
    assert result.passed

    def rates(params):  # the head only, one rate per entry
        return {k: torch.full_like(v, 0.1) for k, v in params.items() if k != "scale"}

    own = check_meta_gradient(learned_target, "maml", inner_lr=rates, steps=2)
    assert own.passed and own.settings["inner_lr"] <= 0.15, own.report()
    assert all(c.err_rate_reference is not None for c in own.cases if c.status == "pass")


def test_cli_inner(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    (tmp_path / "my_inner.py").write_text(
        "from audit_zoo import learned_target\n"
        "def good(**kw):\n    return learned_target(**kw)\n"
        "def late(**kw):\n    return learned_target(**kw, rates_late=True)\n")
    monkeypatch.chdir(tmp_path)
    base = ["audit", "--method", "maml", "--steps", "2", "--inner-lr", "0.1"]
    assert cli([*base[:1], "my_inner:good", *base[1:], "--inner", "per_entry",
                "--out", "a"]) == 0
    assert "rates vs reference" in (tmp_path / "a" / "audit.md").read_text()
    assert cli([*base[:1], "my_inner:late", *base[1:], "--inner", "per_step",
                "--inner", "momentum", "--out", "b"]) == 1
    assert "rates_late" in capsys.readouterr().out
    assert cli([*base[:1], "my_inner:good", *base[1:], "--inner", "multistep",
                "--step-weights", "0.5,0.5", "--out", "c"]) == 2  # both set step_weights
    assert cli([*base[:1], "my_inner:good", *base[1:], "--step-weights", "0.3,0.7",
                "--out", "d"]) == 0
    assert cli([*base[:1], "my_inner:good", *base[1:], "--inner", "per_layer",
                "--out", "e"]) == 2
