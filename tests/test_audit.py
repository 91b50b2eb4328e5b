"""The audit on real code: combinations of deviations and fitted parameters named exactly,
float32 rounding recognised, code written against an ``nn.Module`` accepted, and a target
that misbehaves (exits, hangs, returns the wrong kind of thing, changes its inputs) reported
in one clear line.

The targets are independent implementations (``tests/audit_zoo.py`` and the modules written
here); the numbers they are judged against are the oracle's.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from audit_zoo import SETTINGS, fomaml_target, implicit_target, maml_target, reptile_target
from torch import nn
from torch.func import functional_call

import metagrad as mg
from metagrad.cli import main as cli
from metagrad.testing import (
    LossModule,
    battery,
    check_meta_gradient,
    diagnosis,
    gradcheck,
    module_target,
)
from metagrad.verify.compare import reference_result, rel_error

ROOT = Path(__file__).resolve().parents[1]


def _failures_named(result, keys: set[str]):
    assert not result.passed
    for case in result.failures:
        assert case.match, case.diagnosis
        assert {case.closest, *case.also} & keys, case.diagnosis
    return result


# ---- the oracle's families are the methods themselves at their own options ---------------------

@pytest.mark.parametrize("method", list(SETTINGS))
def test_family_at_the_methods_own_options_is_its_reference(method):
    """Every combination the diagnosis names is computed by the family functions of
    ``metagrad_reference.variants``; with no row applied they must be the method itself."""
    s = SETTINGS[method]
    for label in battery.BUILDERS:
        _, exact = battery.problems(label, 3, method, s)
        ref = reference_result(exact, method, s).grad
        ctx = diagnosis.Context(exact, method, s, ref)
        family = ctx._family({}, s, query=False)
        assert rel_error(family, ref) <= 1e-12, (method, label)


# ---- fitted parameters, combinations, float32 -------------------------------------------------

def test_damping_is_fitted_and_reported():
    """c and δ of (1 + c)I + H/(λ + δ) are fitted to the result and reported (values that are
    not the usual c = 1, δ = 10, so the fit, not the typical values, finds them); where the
    result has too few entries to pin two parameters down (one scalar) nothing is claimed."""
    s = SETTINGS["imaml"]
    result = check_meta_gradient(
        lambda **kw: implicit_target(**kw, damping=0.3, lam_damping=2.5), "imaml", **s)
    for case in result.failures:
        if case.dim >= 6:
            assert case.match and case.closest == "damped", case.diagnosis
            assert case.fitted["damping"] == pytest.approx(0.3, rel=1e-6)
            assert case.fitted["lam_damping"] == pytest.approx(2.5, rel=1e-6)
            assert "with c = 0.3, δ = 2.5" in case.diagnosis
        else:
            assert not case.match and "matches no known mistake" in case.diagnosis


def test_three_deviations_at_once_are_named():
    """A plain inner loop, an extra pull-back step and a damped system, as one public iMAML
    code base computes it, are named together, with the damping."""
    s = SETTINGS["imaml"]
    result = check_meta_gradient(
        lambda **kw: implicit_target(**kw, plain_inner=True, pullback=True, damping=1.0,
                                     lam_damping=10.0), "imaml", **s)
    k3 = [c for c in result.cases if c.settings["steps"] == 3]
    for case in k3:
        assert case.match and set(case.closest.split("+")) == {"plain_inner", "pullback",
                                                                "damped"}, case.diagnosis
        assert "with 3 deviations" in case.diagnosis and "c = 1, δ = 10" in case.diagnosis


def test_exact_but_float32_target():
    """Correct code that keeps the 1/T task weight as a float32 tensor: passed in float32
    mode, named "float32 rounding" in float64 mode (never an unrelated mistake), and the
    same rounding on top of a real deviation is a match "up to float32 rounding"."""
    s = SETTINGS["maml"]
    factory = lambda **kw: maml_target(**kw, reduce="float32 weight")  # noqa: E731
    assert check_meta_gradient(factory, "maml", float32=True, **s).passed
    result = check_meta_gradient(factory, "maml", **s)
    assert not result.passed
    for case in result.failures:
        assert case.closest == "float32_rounding" and case.match, case.diagnosis
        assert "agrees with the correct value to float32 rounding" in case.diagnosis
        assert "--float32" in case.diagnosis and 1e-8 < case.err_reference < 1e-7
    single = [c for c in result.cases if c.tasks == 1]
    assert all(c.passed for c in single)  # 1/1 is exact in float32
    both = check_meta_gradient(
        lambda **kw: reptile_target(**kw, read_early=True, query_inner=True,
                                    reduce="float32 weight"), "reptile", **SETTINGS["reptile"])
    for case in both.failures:
        if case.settings["steps"] == 1:  # θ − θ⁽⁰⁾ = 0, named as the early read
            assert case.closest in {"displacement_early", "steps-1"}, case.diagnosis
            assert "your result is all zeros, which is what" in case.diagnosis
            continue
        keys = {case.closest, *case.also}
        assert keys & {"query_inner+displacement_early", "query_inner+steps-1"}, case.diagnosis
        if case.tasks == 3:
            assert "up to float32 rounding" in case.diagnosis


# ---- module targets -----------------------------------------------------------------------------

def functional_weights_maml(*, steps, inner_lr, create_graph=True):
    """MAML written the way most repositories write it: fast weights in a list, the model run
    with them through functional_call, F.cross_entropy on its logits."""
    def run(model, tasks):
        names = [n for n, _ in model.named_parameters()]
        total = [torch.zeros_like(p) for p in model.parameters()]
        for i in range(tasks.num_tasks):
            (x, y), (xq, yq) = tasks.task(i)
            fast = list(model.parameters())
            for _ in range(steps):
                logits = functional_call(model, dict(zip(names, fast)), (x,))
                grads = torch.autograd.grad(F.cross_entropy(logits, y), fast,
                                            create_graph=create_graph)
                fast = [w - inner_lr * g for w, g in zip(fast, grads)]
            logits = functional_call(model, dict(zip(names, fast)), (xq,))
            grads = torch.autograd.grad(F.cross_entropy(logits, yq), list(model.parameters()))
            total = [t + g / tasks.num_tasks for t, g in zip(total, grads)]
        return dict(zip(names, total))

    return run


def backward_maml(*, steps, inner_lr):
    """The .backward() pattern: per task, the query loss backpropagated into the model's own
    parameters (accumulating), divided by T; nothing returned."""
    def run(model, tasks):
        names = [n for n, _ in model.named_parameters()]
        model.zero_grad()
        for i in range(tasks.num_tasks):
            (x, y), (xq, yq) = tasks.task(i)
            fast = list(model.parameters())
            for _ in range(steps):
                out = functional_call(model, dict(zip(names, fast)), (x,))
                grads = torch.autograd.grad(F.mse_loss(out, y), fast, create_graph=True)
                fast = [w - inner_lr * g for w, g in zip(fast, grads)]
            out = functional_call(model, dict(zip(names, fast)), (xq,))
            (F.mse_loss(out, yq) / tasks.num_tasks).backward()

    return run


def test_module_targets_pass_and_their_bugs_are_named():
    s = SETTINGS["maml"]
    good = check_meta_gradient(module_target(functional_weights_maml, "cross_entropy"), "maml",
                               **s)
    assert good.passed, good.report()
    assert len(good.cases) == 6 and "ScaledTanh" in good.cases[0].problem
    assert check_meta_gradient(module_target(backward_maml, F.mse_loss), "maml", **s).passed
    bad = check_meta_gradient(module_target(
        lambda **kw: functional_weights_maml(**kw, create_graph=False), nn.CrossEntropyLoss()),
        "maml", **s)
    _failures_named(bad, {"first_order"})


def test_module_battery_keeps_the_mistakes_apart():
    """The module form sets its curvature through the data, not by scaling the loss: first-
    and second-order answers still differ by more than 10%."""
    s = SETTINGS["maml"]
    for criterion in ("cross_entropy", "mse"):
        result = check_meta_gradient(module_target(functional_weights_maml
                                                   if criterion == "cross_entropy" else
                                                   backward_maml, criterion), "maml", **s)
        seps = [c.separations.get("first_order", 0) for c in result.cases
                if c.settings["steps"] > 0]
        assert max(seps) > 0.1, (criterion, seps)


def test_module_target_criterion_is_checked():
    with pytest.raises(ValueError, match="criterion must be one of"):
        module_target(backward_maml, "hinge")
    with pytest.raises(ValueError, match="criterion must be one of"):
        module_target(backward_maml, nn.CrossEntropyLoss(label_smoothing=0.1))


def test_loss_module_is_the_functional_loss_as_a_module():
    problem = mg.problems.make_problem("softmax")
    module = LossModule(problem.loss, problem.params)
    train, _ = problem.tasks.task(0)
    assert torch.equal(module(train), problem.loss(problem.params, train))
    assert list(module.as_dict()) == list(problem.params)


# ---- rough edges ------------------------------------------------------------------------------

def test_a_factory_that_cannot_run_k0_or_k1_is_not_run():
    """Code whose loop needs K ≥ 2 (it reads the loss of the second step, say) is reported
    "not run" at K = 0 and 1, with why, and passes on the cases it can run."""
    s = SETTINGS["maml"]

    def needs_two(*, steps, inner_lr):
        if steps < 2:
            raise ValueError(f"update_step must be at least 2, got {steps}")
        return maml_target(steps=steps, inner_lr=inner_lr)

    def fails_inside(*, steps, inner_lr):
        inner = maml_target(steps=steps, inner_lr=inner_lr)

        def target(loss, params, tasks):
            if steps < 2:
                raise RuntimeError("element 0 of tensors does not require grad")
            return inner(loss, params, tasks)

        return target

    for factory, why in [(needs_two, "update_step must be at least 2"),
                         (fails_inside, "does not require grad")]:
        result = check_meta_gradient(factory, "maml", **s)
        assert result.passed, result.report()
        skipped = [c for c in result.cases if c.status == "not run"]
        assert {c.settings["steps"] for c in skipped} == {0, 1}
        assert all(why in c.diagnosis for c in skipped)
        assert "not run" in result.table() and why in result.diagnosis


def test_the_user_settings_raising_is_a_failure_not_a_skip():
    def broken(*, steps, inner_lr):
        def target(loss, params, tasks):
            raise RuntimeError("boom")
        return target

    result = check_meta_gradient(broken, "maml", **SETTINGS["maml"])
    given = [c for c in result.cases if c.settings == result.settings]
    assert given and all(c.status == "FAIL" and "boom" in c.diagnosis for c in given)


# ---- a target that misbehaves ------------------------------------------------------------------

def _target(fn):
    """A plain target: runs ``fn(loss, params, tasks, correct)``, correct = FOMAML's value."""
    correct = fomaml_target(**SETTINGS["fomaml"])

    def target(loss, params, tasks):
        return fn(loss, params, tasks, correct)

    return target


def _only(result):
    return {c.diagnosis.split(": ", 1)[1] for c in result.failures}


MISBEHAVING = {
    "calls sys.exit(0)": (lambda lo, pa, ta, c: sys.exit(0), "called sys.exit(0)"),
    "calls exit()": (lambda lo, pa, ta, c: exit(), "called sys.exit(None)"),
    "calls os._exit(0)": (lambda lo, pa, ta, c: os._exit(0), "called os._exit(0)"),
    "returns None": (lambda lo, pa, ta, c: None, "returned None, not a dict"),
    "returns the flat vector": (
        lambda lo, pa, ta, c: torch.cat([v.reshape(-1) for v in c(lo, pa, ta).values()]),
        "returned a Tensor of shape"),
    "returns a list per parameter": (
        lambda lo, pa, ta, c: list(c(lo, pa, ta).values()), "return dict(zip(params, ...))"),
    "returns (grads, loss)": (
        lambda lo, pa, ta, c: (c(lo, pa, ta), 0.0), "its first item is a dict"),
    "returns NaN": (lambda lo, pa, ta, c: {k: v * math.nan for k, v in c(lo, pa, ta).items()},
                    "has NaN or infinite entries"),
    "returns meta tensors": (
        lambda lo, pa, ta, c: {k: torch.empty(v.shape, device="meta")
                               for k, v in pa.items()}, "is on the meta device"),
    "adds a key to params": (
        lambda lo, pa, ta, c: (c(lo, pa, ta), pa.__setitem__("extra", torch.zeros(1)))[0],
        "added key(s) ['extra'] to the params dict"),
    "removes a key from params": (
        lambda lo, pa, ta, c: (c(lo, pa, ta), pa.pop(next(iter(pa))))[0],
        "removed key(s)"),
}


@pytest.mark.parametrize("name", list(MISBEHAVING))
def test_a_misbehaving_target_fails_with_one_clear_line(name):
    fn, phrase = MISBEHAVING[name]
    result = check_meta_gradient(_target(fn), "fomaml", **SETTINGS["fomaml"])
    assert not result.passed and result.failures
    for case in result.failures:
        assert phrase in case.diagnosis, case.diagnosis
        assert "\n" not in case.diagnosis


def test_numerically_right_but_wrong_shape_dtype_or_mutating_says_exactly_that():
    s = SETTINGS["fomaml"]
    correct = fomaml_target(**s)
    cases = {
        "shape": (lambda lo, pa, ta: {k: v.reshape(1, -1) for k, v in correct(lo, pa, ta).items()},
                  "has shape"),
        "dtype": (lambda lo, pa, ta: {k: v.float() for k, v in correct(lo, pa, ta).items()},
                  "is torch.float32, the parameter torch.float64"),
        "mutation": (lambda lo, pa, ta: (correct(lo, pa, ta),
                                         [v.mul_(1.0 + 1e-3) for v in pa.values()])[0],
                     "changed the parameters it was given in place"),
    }
    for kind, (target, phrase) in cases.items():
        result = check_meta_gradient(target, "fomaml", **s)
        assert not result.passed
        for case in result.failures:
            assert case.diagnosis.split(": ", 1)[1].startswith("your values are right"), \
                (kind, case.diagnosis)
            assert phrase in case.diagnosis and "closest" not in case.diagnosis
            assert case.closest == "structure"


def test_all_zeros_is_called_all_zeros():
    result = check_meta_gradient(
        lambda lo, pa, ta: {k: torch.zeros_like(v) for k, v in pa.items()}, "fomaml",
        **SETTINGS["fomaml"])
    for case in result.failures:
        assert case.closest == "zeros" and "your result is all zeros" in case.diagnosis
        assert "FOMAML" not in case.diagnosis


def test_a_result_with_a_graph_passes_with_a_note():
    s = SETTINGS["fomaml"]
    correct = fomaml_target(**s)

    def with_graph(loss, params, tasks):
        return {k: v.clone().requires_grad_(True) * 1.0 for k, v in correct(loss, params,
                                                                          tasks).items()}

    result = check_meta_gradient(with_graph, "fomaml", **s)
    assert result.passed
    assert any("carries an autograd graph" in n for n in result.notes)


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGALRM"), reason="POSIX only")
def test_a_target_that_hangs_is_stopped():
    def hangs(loss, params, tasks):
        while True:
            pass

    result = check_meta_gradient(hangs, "fomaml", timeout=0.5, **SETTINGS["fomaml"])
    assert not result.passed
    assert all("did not finish within 0.5 s" in c.diagnosis for c in result.failures)


# ---- the command line ---------------------------------------------------------------------------

def _cli_module(folder: Path, body: str) -> None:
    (folder / "cli_targets.py").write_text(
        "import os, sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from audit_zoo import fomaml_target, maml_target\n" + body)


def test_cli_target_that_exits_is_a_failure(tmp_path):
    """`metagrad audit` isolated from the target's exits: exit status 1 and a clear message,
    in a real process (an exit there would otherwise end the command with status 0)."""
    _cli_module(tmp_path, "def quits(loss, params, tasks):\n    sys.exit(0)\n"
                          "def hard(loss, params, tasks):\n    os._exit(0)\n")
    for name, phrase in [("quits", "called sys.exit(0)"), ("hard", "called os._exit(0)")]:
        run = subprocess.run([sys.executable, "-m", "metagrad", "audit", f"cli_targets:{name}",
                              "--method", "fomaml", "--out", str(tmp_path / name)],
                             cwd=tmp_path, capture_output=True, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert run.returncode == 1, run.stdout + run.stderr
        assert phrase in run.stdout and "FAILED" in run.stdout


def test_cli_target_module_that_exits_on_import_is_a_usage_error(tmp_path, monkeypatch,
                                                                 capsys):
    (tmp_path / "exits_on_import.py").write_text("import sys\nsys.exit(0)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert cli(["audit", "exits_on_import:target", "--method", "maml", "--out",
                str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot import 'exits_on_import' (SystemExit" in err


def test_a_factory_that_exits_is_a_failure_not_the_end():
    def factory(*, steps, inner_lr):
        if steps == 0:
            sys.exit(3)
        return fomaml_target(steps=steps, inner_lr=inner_lr)

    result = check_meta_gradient(factory, "fomaml", **SETTINGS["fomaml"])
    k0 = next(c for c in result.cases if c.settings["steps"] == 0)
    assert k0.status == "not run" and "called sys.exit(3)" in k0.diagnosis
    assert result.passed


def test_cli_out_with_a_file_in_the_way_is_refused_before_the_work(tmp_path, monkeypatch,
                                                                    capsys):
    _cli_module(tmp_path, "def never(loss, params, tasks):\n"
                          "    raise AssertionError('the target must not run')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    (tmp_path / "taken").write_text("a file")
    assert cli(["audit", "cli_targets:never", "--method", "fomaml", "--out",
                str(tmp_path / "taken")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--out" in err and "taken" in err, err


def test_cli_module_target(tmp_path, monkeypatch, capsys):
    (tmp_path / "module_targets.py").write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_audit import functional_weights_maml\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert cli(["audit", "module_targets:functional_weights_maml", "--method", "maml",
                "--steps", "2", "--inner-lr", "0.1", "--module", "cross_entropy",
                "--out", str(tmp_path / "out")]) == 0, capsys.readouterr().out
    assert "nn.Module form, cross_entropy" in capsys.readouterr().out


def test_cli_timeout(tmp_path, monkeypatch, capsys):
    _cli_module(tmp_path, "def hangs(loss, params, tasks):\n    while True:\n        pass\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert cli(["audit", "cli_targets:hangs", "--method", "fomaml", "--timeout", "0.3",
                "--out", str(tmp_path / "out")]) == 1
    assert "did not finish within 0.3 s" in capsys.readouterr().out


# ---- gradcheck says what it is ------------------------------------------------------------------

def _mlp_loss(dropout: float = 0.0, float32_inside: bool = False):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 6), nn.Tanh(), nn.Dropout(dropout), nn.Linear(6, 1))

    def criterion(a, b):
        if float32_inside:
            return ((a.float() - b.float()) ** 2).mean().double()
        return ((a - b) ** 2).mean()

    return model, mg.module_loss(model, criterion)


def test_gradcheck_names_a_random_loss_and_a_float32_loss():
    tasks = mg.Sinusoid(shots=5, query=5).sample(2, seed=0)
    model, loss = _mlp_loss(dropout=0.5)
    with pytest.raises(ValueError, match=r"the loss is random.*dropout"):
        gradcheck(mg.MAML(steps=1, inner_lr=0.05), loss, mg.params_of(model), tasks)
    model.eval()  # the advice works
    assert gradcheck(mg.MAML(steps=1, inner_lr=0.05), loss, mg.params_of(model), tasks).passed
    model, loss = _mlp_loss(float32_inside=True)
    with pytest.raises(ValueError, match="computes in float32 internally"):
        gradcheck(mg.MAML(steps=1, inner_lr=0.05), loss, mg.params_of(model), tasks)


def test_gradcheck_refuses_meta_parameters():
    params = {"w": torch.empty(3, device="meta")}
    tasks = mg.Task(train=(torch.zeros(2, 3, 1), torch.zeros(2, 3, 1)),
                    val=(torch.zeros(2, 3, 1), torch.zeros(2, 3, 1)))
    with pytest.raises(ValueError, match=r"params \['w'\] are on the meta device"):
        gradcheck(mg.MAML(steps=1, inner_lr=0.1), lambda p, b: p["w"].sum(), params, tasks)


# ---- the method facts live on the method -------------------------------------------------------

def test_no_method_name_branches_in_the_audit():
    pattern = re.compile(r"""(method|name)\s*(==|!=|in)\s*\(?["'](maml|fomaml|reptile|imaml|"""
                         r"""neumann|penalty)""")
    for path in (ROOT / "metagrad" / "testing").glob("*.py"):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            assert not pattern.search(line), f"{path.name}:{i}: {line.strip()}"


def test_a_method_registered_later_is_audited(tmp_path, monkeypatch, capsys):
    """A method defined here and registered with mg.register_method, with no change in
    metagrad.testing: FOMAML under another name (its oracle quantity FOMAML's); the audit
    passes correct code, names its mistakes from the list its class inherits, and the CLI
    accepts the name when TARGET's module registers it."""
    (tmp_path / "lookahead.py").write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from dataclasses import dataclass\n"
        "from typing import ClassVar\n"
        "import metagrad as mg\n"
        "from audit_zoo import fomaml_target\n\n"
        "@mg.register_method\n"
        "@dataclass(frozen=True)\n"
        "class Lookahead(mg.FOMAML):\n"
        "    name: ClassVar[str] = 'lookahead'\n"
        "    oracle_name: ClassVar[str | None] = 'fomaml'\n\n"
        "def target(*, steps, inner_lr):\n"
        "    return fomaml_target(steps=steps, inner_lr=inner_lr)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    try:
        assert cli(["audit", "lookahead:target", "--method", "lookahead", "--steps", "2",
                    "--inner-lr", "0.1", "--out", str(tmp_path / "out")]) == 0
        assert "as lookahead" in capsys.readouterr().out
        s = SETTINGS["fomaml"]
        assert check_meta_gradient(fomaml_target, "lookahead", **s).passed
        bad = check_meta_gradient(maml_target, "lookahead", **s)
        _failures_named(bad, {"second_order"})
    finally:
        mg.METHODS.pop("lookahead", None)
        sys.modules.pop("lookahead", None)


# ---- the documentation's examples -------------------------------------------------------------

def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_recipes_page_examples_run_and_say_what_they_promise(tmp_path, monkeypatch):
    """docs/howto/audit-recipes.md: the three repository shapes, wrapped, audited: the
    correct ones pass, the first-order one is named, the unsupported models are "not run",
    and (where higher is installed) copy_initial_weights=True is caught."""
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in _python_blocks(ROOT / "docs" / "howto" / "audit-recipes.md"):
        exec(compile(block, "audit-recipes.md", "exec"), namespace)  # noqa: S102
    assert namespace["first_order"].failures and not namespace["first_order"].passed
    learner = namespace["result"]
    assert learner.passed
    assert {c.status for c in learner.cases} == {"pass", "not run"}
    assert all("NotImplementedError" in c.diagnosis for c in learner.cases
               if c.status == "not run")
    if namespace["higher"] is not None:
        assert "wrote no .grad" in namespace["detached"].failures[0].diagnosis


def test_readme_module_target_example_passes():
    readme = (ROOT / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S)
                 if "module_target" in b)
    namespace: dict = {"torch": torch}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102
    assert namespace["audit"].passed
    assert len(namespace["audit"].cases) == 4
