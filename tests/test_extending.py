"""A method defined outside the package, in a few lines, and registered through the public
API, runs everywhere the built-in ones do: ``metagrad verify``, ``train``, ``sweep`` and
``report`` pick it up with no other change. And the oracle's caches never hand one
method's numbers to another."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from helpers import get, rel
from metagrad_reference import finite_diff, targets

import metagrad as mg
from metagrad.cli import main as cli
from metagrad.verify.compare import fd_result, flat, reference_result


@dataclass(frozen=True)
class JacobianFOMAML(mg.FOMAML):
    """First-order MAML with ∇L_val(φ) taken as the Jacobian of the loss (reverse mode,
    ``torch.func.jacrev``) instead of its gradient: the same quantity, another code path."""

    name: ClassVar[str] = "fomaml_jacobian"
    oracle_name: ClassVar[str | None] = "fomaml"

    def _from_inner(self, loss, theta, train, val, inner):
        g = torch.func.jacrev(loss)(inner.phi, val)
        return mg.TaskOutput(g, inner.pre_update_loss, loss(inner.phi, val),
                             {"inner_losses": inner.inner_losses}, inner.phi)


@dataclass(frozen=True)
class HalfStepMAML(mg.MAML):
    """MAML whose inner loop takes half the step it is given: MAML's objective name and
    settings, another quantity (what a cache keyed on those alone would confuse)."""

    name: ClassVar[str] = "maml_half_step"

    def build_inner_loop(self) -> mg.InnerLoop:
        return mg.InnerLoop(self.steps, self.inner_lr / 2)


@pytest.fixture
def registered():
    added = [mg.register_method(JacobianFOMAML)]
    try:
        yield
    finally:
        for cls in added:
            mg.METHODS.pop(cls.name)


@pytest.fixture
def half_step():
    mg.register_method(HalfStepMAML)
    try:
        yield
    finally:
        mg.METHODS.pop(HalfStepMAML.name)


def test_register_method_checks_what_it_is_given(registered):
    assert mg.METHOD_NAMES[-1] == "fomaml_jacobian" and len(mg.METHOD_NAMES) == 7
    with pytest.raises(ValueError, match="already registered"):
        mg.register_method(dataclass(frozen=True)(type("Other", (mg.FOMAML,),
                                                       {"name": "fomaml_jacobian"})))
    with pytest.raises(TypeError, match="subclass of metagrad.Method"):
        mg.register_method(object)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="class attribute name"):
        mg.register_method(dataclass(frozen=True)(type("Nameless", (mg.FOMAML,),
                                                       {"name": "no spaces"})))


def test_oracle_caches_key_on_the_whole_quantity(registered, half_step):
    """Finite differences of the meta-objective were cached under (objective, settings):
    the half-step method read MAML's cached value. Each is now its own computation, and
    each equals central differences computed here from the oracle's own pieces."""
    problem = get("mlp_softplus")
    settings = dict(steps=2, inner_lr=0.1)
    maml = fd_result(problem, "maml", settings)
    half = fd_result(problem, "maml_half_step", settings)
    f, theta = flat(problem)

    def central(inner_lr):
        return finite_diff.central_difference(targets.mean_objective(
            [targets.maml_objective(f, tr, val, 2, inner_lr) for tr, val in problem.task_list()]),
            theta, vectorize=True)

    assert rel(half, central(0.05)) < 1e-9
    assert rel(maml, central(0.1)) < 1e-9
    assert rel(half, maml) > 1e-3  # the two quantities are far apart
    # the dense reference of a registered method is the oracle quantity it names
    byhand = reference_result(problem, "fomaml_jacobian", settings)
    assert torch.equal(byhand.grad, reference_result(problem, "fomaml", settings).grad)


def test_a_registered_method_runs_everywhere(registered, tmp_path, capsys):
    # verify: its rows, checked against the oracle quantity it names
    assert cli(["verify", "--quick", "--methods", "fomaml_jacobian", "--out",
                str(tmp_path / "verify")]) == 0
    rows = (tmp_path / "verify" / "verify.csv").read_text().splitlines()
    assert len(rows) > 1 and all(r.startswith("fomaml_jacobian,") for r in rows[1:])
    # train: a short run of the new method alone
    assert cli(["train", "--method", "fomaml_jacobian", "--meta-steps", "3", "--heldout-tasks",
                "20", "--out", str(tmp_path / "train"), "--quiet"]) == 0
    summary = json.loads((tmp_path / "train" / "summary.json").read_text())
    assert summary["method"] == "fomaml_jacobian"
    # sweep: a grid of it
    assert cli(["sweep", "--methods", "fomaml_jacobian", "--steps", "1", "2", "--repeats", "2",
                "--out", str(tmp_path / "sweep")]) == 0
    assert "fomaml_jacobian" in (tmp_path / "sweep" / "sweep.csv").read_text()
    # report: its meta-gradient beside the others', checked against the oracle
    assert cli(["report", "--sections", "meta_gradients", "verify", "--out",
                str(tmp_path / "report")]) == 0
    assert "fomaml_jacobian" in (tmp_path / "report" / "report.md").read_text()
