"""``metagrad.testing``: the audit must pass correct meta-gradient code, fail broken code and
say which mistake it is.

The targets (``tests/audit_zoo.py``) are written independently of metagrad's methods:
plain per-task loops of ``torch.autograd.grad`` (``create_graph=True`` where second order
is needed), their own CG and Neumann loops. The independent numbers they are judged
against are the oracle's (``metagrad_reference``: dense Hessians, its own loops) and
central finite differences.

* correct targets of all six methods pass (float64 and float32);
* the bug zoo: one broken target per bug class the field has shipped (first order instead
  of second, a sum over tasks, a missing inner step, no adaptation, the wrong sign, one CG
  iteration short, no λ factor, the stale-residual CG, a gradient that never reaches a
  0-dim parameter, a non-alternating Neumann series) fails, and the diagnosis names it;
* a correct target off by a relative 1e-6 fails;
* ``gradcheck`` passes metagrad on a user's ``nn.Module`` and refuses a too-large one
  before any work; the CLI's exit statuses; docs/audit.md's examples run.
"""

from __future__ import annotations

import re
import shlex
import sys
import warnings
from pathlib import Path

import pytest
import torch

import metagrad as mg
from metagrad.cli import main as cli
from metagrad.testing import (
    AuditResult,
    assert_meta_gradient_close,
    check_meta_gradient,
    gradcheck,
    is_factory,
)

ROOT = Path(__file__).resolve().parents[1]

from audit_zoo import (  # noqa: E402 - the independent implementations
    CORRECT,
    SETTINGS,
    fomaml_target,
    implicit_target,
    maml_target,
    penalty_target,
    reptile_target,
)

# ---- correct code passes ----------------------------------------------------------------------

@pytest.mark.parametrize("method", list(CORRECT))
def test_correct_independent_target_passes(method):
    result = check_meta_gradient(CORRECT[method], method, **SETTINGS[method])
    assert isinstance(result, AuditResult)
    assert result.passed, result.report()
    # the battery: 4 problems at the given settings + K = 0 and 1 for a factory
    assert len(result.cases) == 6 and {c.tasks for c in result.cases} == {1, 3}
    assert {c.settings["steps"] for c in result.cases} >= {0, 1}
    assert all(c.err_reference <= 1e-9 for c in result.cases)
    if mg.METHODS[method].gradient_of is not None:
        assert all(c.err_fd is not None and c.err_fd <= 1e-7 for c in result.cases)


def test_battery_separates_the_bug_classes():
    """The battery is only as good as the distance of each mistake from the right answer:
    first- and second-order differ by ≥ 10%; off-by-one CG, stale-residual CG and the
    exact solve differ from m CG iterations far beyond the 1e-9 tolerance."""
    def widest(method):
        result = check_meta_gradient(CORRECT[method], method, **SETTINGS[method])
        best: dict[str, float] = {}
        for c in result.cases:
            for key, sep in c.separations.items():
                best[key] = max(best.get(key, 0.0), sep)
        return best, result

    maml, _ = widest("maml")
    assert maml["first_order"] >= 0.1 and maml["sum"] == pytest.approx(2.0)
    imaml, _ = widest("imaml")
    for key in ("cg_iters-1", "cg_iters+1", "cg_stale", "no_lam", "exact_solve", "no_solve",
                "damped", "cg_warm_start", "pullback", "plain_inner"):
        assert imaml[key] > 1e-3, key
    neumann, _ = widest("neumann")
    for key in ("terms-1", "terms+1", "non_alternating", "no_lam"):
        assert neumann[key] > 1e-3, key


def test_metagrad_itself_passes_as_target_and_factory():
    s = SETTINGS["imaml"]
    method = mg.IMAML(**s, diagnose="off")
    assert not is_factory(method) and is_factory(lambda **kw: None)
    assert check_meta_gradient(method, "imaml", **s).passed
    result = check_meta_gradient(lambda **kw: mg.IMAML(**kw, diagnose="off"), "imaml", **s)
    assert result.passed and len(result.cases) == 6


# ---- the bug zoo ------------------------------------------------------------------------------

ZOO = {
    # name: (method, factory, the mistakes the diagnosis may name, a phrase of the message)
    "first order (no create_graph)": (
        "maml", lambda **s: maml_target(**s, first_order=True), {"first_order"},
        "the inner loop is not differentiated"),
    "sum over tasks": (
        "maml", lambda **s: maml_target(**s, reduce="sum"), {"sum"}, "summed, not averaged"),
    "one inner step missing": (
        "maml", lambda **s: maml_target(**s, missing_step=True), {"steps-1"},
        "one inner step is missing"),
    "no adaptation": (
        "maml", lambda **s: maml_target(**s, unadapted=True), {"unadapted"},
        "no inner adaptation"),
    "wrong sign (φ − θ)": (
        "reptile", lambda **s: reptile_target(**s, sign=-1.0), {"sign"}, "the sign is wrong"),
    "CG one iteration short": (
        "imaml", lambda **s: implicit_target(**s, cg_offset=-1), {"cg_iters-1"},
        "one CG iteration is missing"),
    "CG on H + λI, no λ factor": (
        "imaml", lambda **s: implicit_target(**s, without_lam=True), {"no_lam"},
        "the factor λ of λ(H + λI)⁻¹ is missing"),
    "stale-residual CG": (
        "imaml", lambda **s: implicit_target(**s, stale=True), {"cg_stale"}, "old residual"),
    "no gradient for the 0-dim parameter": (
        "imaml", lambda **s: implicit_target(**s, drop_scalars=True), {"zero:scale", "zeros"},
        re.compile(r"no gradient reaches 'scale'|your result is all zeros")),
    "non-alternating Neumann series": (
        "neumann", lambda **s: implicit_target(**s, non_alternating=True), {"non_alternating"},
        "not of (I + H/λ)⁻¹"),
    # -- the deviations found in public code ------------------------------------------------
    "create_graph on the first inner step only": (
        "maml", lambda **s: maml_target(**s, first_step_graph_only=True), {"graph_first_step"},
        "only the first inner step is differentiated"),
    "one tensor's inner gradient detached (the biases)": (
        "maml", lambda **s: maml_target(**s, detach=("bias",)),
        {"detached:layer.bias", "detached:bias"},
        re.compile(r"the inner updates of '(layer\.)?bias' are not differentiated")),
    "step size applied twice on the last step (α²)": (
        "maml", lambda **s: maml_target(**s, last_lr=lambda a: a * a), {"last_step_squared"},
        "the step size is applied twice on the last inner step"),
    "last step taken twice (2α)": (
        "maml", lambda **s: maml_target(**s, last_lr=lambda a: 2 * a), {"last_step_doubled"},
        "the last inner step is taken twice as long"),
    "query batch in the inner loop": (
        "maml", lambda **s: maml_target(**s, query_inner=True), {"query_inner"},
        "the inner loop adapts on the validation batch"),
    "query batch in the inner loop (FOMAML)": (
        "fomaml", lambda **s: _query_fomaml(**s), {"query_inner"},
        "the inner loop adapts on the validation batch"),
    "displacement read one step early": (
        "reptile", lambda **s: reptile_target(**s, read_early=True),
        {"displacement_early", "steps-1", "zeros"},
        re.compile(r"the displacement is read one step early|your result is all zeros")),
    "penalty without its factor 2": (
        "penalty", lambda **s: penalty_target(**s, factor=1.0), {"penalty_no_two"},
        "the factor 2 of"),
    "damped system (1 + c)I + H/(λ + δ), c = 1, δ = 10": (
        "imaml", lambda **s: implicit_target(**s, damping=1.0, lam_damping=10.0), {"damped"},
        "with c = 1, δ = 10"),
    "CG warm-started at x₀ = b": (
        "imaml", lambda **s: implicit_target(**s, warm_start=True), {"cg_warm_start"},
        "with w = 1 "),
    "extra pull-back step after the inner loop": (
        "imaml", lambda **s: implicit_target(**s, pullback=True), {"pullback"},
        "after an extra pull-back step"),
    "extra pull-back step (Neumann)": (
        "neumann", lambda **s: implicit_target(**s, pullback=True), {"pullback"},
        "after an extra pull-back step"),
    "plain inner loop (Neumann)": (
        "neumann", lambda **s: implicit_target(**s, plain_inner=True), {"plain_inner"},
        "no proximal term"),
    "CG stopped on a residual tolerance": (
        "imaml", lambda **s: implicit_target(**s, tol=1e-2), {"cg_tolerance"},
        "CG stopped early once ‖r‖ < ε"),
    "CG stopped on a tolerance, returning the iterate before": (
        "imaml", lambda **s: implicit_target(**s, tol=1e-2, tol_previous=True),
        {"cg_tolerance_previous"}, "returning the iterate before"),
}


def _query_fomaml(**s):
    """First-order MAML whose inner loop reads the query batch."""
    def target(loss, params, tasks):
        swapped = mg.Task(tasks.val, tasks.val)
        return fomaml_target(**s)(loss, params, swapped)

    return target


@pytest.mark.parametrize("name", list(ZOO))
def test_bug_zoo_fails_and_is_diagnosed(name):
    method, factory, expected, phrase = ZOO[name]
    result = check_meta_gradient(factory, method, **SETTINGS[method])
    assert not result.passed
    assert result.failures
    for case in result.failures:
        assert case.match, case.diagnosis
        assert ({case.closest, *case.also} & expected), case.diagnosis
        assert case.closest_error <= 1e-9
        assert _says(phrase, case.diagnosis)
        assert case.diagnosis.startswith(f"{method} on ")
    assert _says(phrase, result.report())


def _says(phrase, text: str) -> bool:
    return bool(phrase.search(text)) if isinstance(phrase, re.Pattern) else phrase in text


def test_diagnosis_reads_like_a_sentence():
    result = check_meta_gradient(lambda **s: maml_target(**s, first_order=True), "maml",
                                 **SETTINGS["maml"])
    first = result.failures[0]
    assert re.fullmatch(r"maml on scalar\+matrix, T=3, K=2: your result equals FOMAML's "
                        r"∇L_val\(φ\) to \de[-+]\d\d — the inner loop is not differentiated "
                        r"\(first-order MAML\)", first.diagnosis), first.diagnosis
    # K = 0: first and second order coincide, so that case passes
    k0 = next(c for c in result.cases if c.settings["steps"] == 0)
    assert k0.passed
    assert "In every failing case your result equals FOMAML's" in result.diagnosis


def _perturbed(target, size: float, seed: int = 7):
    """``target`` with a relative error ``size`` added in a fixed generic direction."""
    def out(loss, params, tasks):
        g = target(loss, params, tasks)
        gen = torch.Generator().manual_seed(seed)
        flat = torch.cat([v.reshape(-1) for v in g.values()])
        u = torch.randn(flat.shape, generator=gen, dtype=flat.dtype)
        u = size * flat.norm() * u / u.norm()
        res, at = {}, 0
        for k, v in g.items():
            res[k] = v + u[at:at + v.numel()].reshape(v.shape)
            at += v.numel()
        return res

    return out


def test_perturbed_correct_target_fails():
    """A relative error of 1e-6 in a generic direction is caught (tolerance 1e-9), and, being
    within float32's rounding, is called that, not blamed on a catalogued mistake; an error
    of 1e-3 matches nothing, and the ranking puts the correct value first."""
    s = SETTINGS["maml"]
    result = check_meta_gradient(_perturbed(maml_target(**s), 1e-6), "maml", **s)
    assert not result.passed
    for case in result.failures:
        assert 5e-7 < case.err_reference < 2e-6
        assert (case.closest == "float32_rounding" and "to float32 rounding" in case.diagnosis
                or "matches no known mistake" in case.diagnosis), case.diagnosis
    result = check_meta_gradient(_perturbed(maml_target(**s), 1e-3), "maml", **s)
    for case in result.failures:
        assert not case.match and "matches no known mistake" in case.diagnosis
        assert case.ranking[0][0] == "correct"
        assert case.ranking[0][1] == pytest.approx(case.err_reference, rel=1e-3)
        assert [d for _, d in case.ranking] == sorted(d for _, d in case.ranking)
    assert "distances from your result: correct 1.0e-03" in result.report()


def test_crash_wrong_shape_and_in_place_changes_are_failures():
    s = SETTINGS["fomaml"]
    correct = fomaml_target(**s)

    def crashes(loss, params, tasks):
        raise RuntimeError("boom")

    def ravels_scalars(loss, params, tasks):
        return {k: v.reshape(1, 1) if v.dim() == 0 else v
                for k, v in correct(loss, params, tasks).items()}

    def mutates(loss, params, tasks):
        out = correct(loss, params, tasks)
        for v in params.values():
            v.add_(1.0)
        return out

    r = check_meta_gradient(crashes, "fomaml", **s)
    assert not r.passed and "the target raised RuntimeError: boom" in r.failures[0].diagnosis
    r = check_meta_gradient(ravels_scalars, "fomaml", **s)
    bad = {c.case for c in r.failures}
    assert "softmax, T=3, K=2" not in bad and "one scalar, T=3, K=2" in bad
    assert "result['scale'] has shape (1, 1), the parameter ()" in r.report()
    r = check_meta_gradient(mutates, "fomaml", **s)
    assert not r.passed and "changed the parameters it was given in place" in r.report()


def test_settings_are_validated():
    t = maml_target(**SETTINGS["maml"])
    with pytest.raises(TypeError, match=r"maml does not read setting\(s\) \['lam'\]"):
        check_meta_gradient(t, "maml", steps=2, inner_lr=0.1, lam=1.0)
    # settings not given take the method's defaults, as the documentation and the CLI say
    defaults = check_meta_gradient(maml_target(**mg.MAML.default_settings()), "maml")
    assert defaults.settings == mg.MAML.default_settings() and defaults.passed
    with pytest.raises(ValueError, match="lam must be a finite positive number, got -1"):
        check_meta_gradient(t, "imaml", steps=2, inner_lr=0.1, lam=-1.0, cg_iters=2)
    with pytest.raises(ValueError, match="unknown method 'mammal'"):
        check_meta_gradient(t, "mammal", steps=2)


def test_assert_meta_gradient_close_raises_with_table_and_diagnosis():
    s = SETTINGS["imaml"]
    assert_meta_gradient_close(implicit_target, "imaml", **s)  # passes: no exception
    with pytest.raises(AssertionError) as info:
        assert_meta_gradient_close(lambda **kw: implicit_target(**kw, stale=True), "imaml", **s)
    text = str(info.value)
    assert "| case | d | vs reference |" in text and "| FAIL |" in text
    assert "CG with the stale residual" in text


# ---- float32 ----------------------------------------------------------------------------------

def test_float32_mode_passes_correct_and_fails_broken():
    s = SETTINGS["maml"]
    good = check_meta_gradient(maml_target, "maml", float32=True, **s)
    assert good.passed, good.report()
    for case in good.cases:
        # tolerance derived from ε₃₂: above float32 rounding, far below a real bug
        assert 1e-7 < case.tol_reference < 1e-4
        assert case.err_reference > 1e-12  # the target really ran in float32
    bad = check_meta_gradient(lambda **kw: maml_target(**kw, first_order=True), "maml",
                              float32=True, **s)
    assert not bad.passed
    assert all(c.closest == "first_order" and c.match for c in bad.failures)
    s = SETTINGS["imaml"]
    assert check_meta_gradient(implicit_target, "imaml", float32=True, **s).passed


# ---- gradcheck --------------------------------------------------------------------------------

def _user_model(width=8):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1, width), torch.nn.Tanh(),
                                torch.nn.Linear(width, 1))
    loss = mg.module_loss(model, lambda a, b: ((a - b) ** 2).mean())
    tasks = mg.Sinusoid(shots=5, query=5).sample(3, seed=0)  # float32, like a user's
    return model, loss, mg.params_of(model), tasks


def test_gradcheck_on_a_users_module_and_leaves_their_tensors_alone():
    model, loss, params, tasks = _user_model()
    before = {k: v.detach().clone() for k, v in params.items()}
    x_before = tasks.train[0].clone()
    result = gradcheck(mg.MAML(steps=2, inner_lr=0.05), loss, params, tasks)
    assert result.passed and result.cases[0].dim == (1 * 8 + 8) + (8 * 1 + 1)
    assert result.cases[0].err_reference <= 1e-9 and result.cases[0].err_fd <= 1e-7
    assert gradcheck(mg.IMAML(steps=2, inner_lr=0.05, lam=2.0, cg_iters=3), loss, params,
                     tasks).passed
    for k, v in params.items():
        assert v.dtype == torch.float32 and torch.equal(v.detach(), before[k])
    assert tasks.train[0].dtype == torch.float32 and torch.equal(tasks.train[0], x_before)


def test_gradcheck_fails_a_wrong_method_with_a_diagnosis():
    """gradcheck compares the method with the oracle of the method it *is*: a user who
    checks the wrong settings against their expectation sees it in the table, and a method
    whose numbers are off is caught (here metagrad's FOMAML dressed up as MAML)."""
    _, loss, params, tasks = _user_model()

    class Dressed(mg.MAML):
        def __call__(self, loss, params, tasks):
            return mg.FOMAML(steps=self.steps, inner_lr=self.inner_lr)(loss, params, tasks)

    with pytest.raises(AssertionError, match="FOMAML's ∇L_val"):
        gradcheck(Dressed(steps=2, inner_lr=0.05), loss, params, tasks)


def test_gradcheck_refuses_a_large_model_before_any_work():
    def loss(params, batch):
        raise AssertionError("the loss must not be called")

    # meta tensors have no storage: nothing can have been computed from them
    params = {"w": torch.empty(20_000, 20_000, device="meta")}
    tasks = mg.Task(train=(torch.zeros(2, 3, 1), torch.zeros(2, 3, 1)),
                    val=(torch.zeros(2, 3, 1), torch.zeros(2, 3, 1)))
    with pytest.raises(ValueError) as info:
        gradcheck(mg.MAML(steps=1, inner_lr=0.1), loss, params, tasks)
    text = str(info.value)
    assert "d ≤ 3,000" in text and "72 MB" in text and "d = 400,000,000" in text
    assert "sub-module" in text and "smaller width" in text and "fewer tasks" in text


# ---- the command line -------------------------------------------------------------------------

def _write_targets(folder: Path) -> None:
    (folder / "zoo_targets.py").write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from audit_zoo import maml_target, implicit_target\n"
        "good = maml_target(steps=2, inner_lr=0.1)\n"
        "def stale(**s):\n    return implicit_target(**s, stale=True)\n")


def test_cli_pass_fail_and_usage(tmp_path, monkeypatch, capsys):
    _write_targets(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    out = tmp_path / "out"
    assert cli(["audit", "zoo_targets:good", "--method", "maml", "--steps", "2",
                "--inner-lr", "0.1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| pass |" in printed and "PASSED" in printed
    for name in ("audit.md", "audit.csv", "audit.json"):
        assert (out / name).stat().st_size > 0
    assert cli(["audit", "zoo_targets:stale", "--method", "imaml", "--steps", "3",
                "--inner-lr", "0.1", "--lam", "2", "--cg-iters", "5", "--out", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "CG with the stale residual" in printed and "FAILED" in printed
    assert "cg_stale" in (out / "audit.csv").read_text()
    for argv, message in [
        (["zoo_targets:good", "--method", "maml", "--lam", "2"], "maml does not read --lam"),
        (["zoo_targets", "--method", "maml"], "TARGET must be package.module:callable"),
        (["no_such_module:x", "--method", "maml"], "cannot import 'no_such_module'"),
        (["zoo_targets:nothing", "--method", "maml"], "has no attribute 'nothing'"),
        (["peer:caffe", "--method", "maml"], "unknown peer 'caffe'"),
        (["zoo_targets:good", "--method", "maml", "--variant", "x"], "--variant applies"),
    ]:
        assert cli(["audit", *argv, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err


def test_cli_peer_method_not_offered_is_a_usage_error(capsys):
    pytest.importorskip("higher")
    assert cli(["audit", "peer:higher", "--method", "imaml", "--lam", "2"]) == 2
    assert "higher offers no imaml; it offers maml, fomaml" in capsys.readouterr().err


# ---- docs/audit.md ----------------------------------------------------------------------------

def test_docs_audit_examples_run(tmp_path, monkeypatch, capsys):
    text = (ROOT / "docs" / "audit.md").read_text()
    python = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    bash = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    assert len(python) >= 3 and bash
    # the first block is the user's module my_meta.py, which the CLI example imports
    assert python[0].startswith("# my_meta.py")
    (tmp_path / "my_meta.py").write_text(python[0])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    namespace: dict = {}
    for block in python:
        exec(compile(block, "docs/audit.md", "exec"), namespace)  # noqa: S102
    for name, value in list(namespace.items()):
        if name.startswith("test_") and callable(value):
            value()  # the pytest example
    assert namespace["result"].passed
    lines = [ln for b in bash for ln in b.splitlines() if ln.startswith("metagrad audit")]
    assert lines
    for line in lines:
        argv = shlex.split(line)[1:]
        if argv[1].startswith("peer:"):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    __import__(argv[1].split(":")[1])
            except Exception:  # noqa: BLE001 - peers are optional
                continue
        assert cli(argv + ["--out", str(tmp_path / "audit")]) == 0, capsys.readouterr().out
