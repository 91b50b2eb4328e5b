"""The suite is sharp: a meta-gradient off by one part in a million fails Level 1.

Each public method is wrapped so that its result is perturbed by a relative
1e-6 in a generic direction (``problems.perturb_grad``), and the very check
``test_accuracy.py`` applies must reject it, on every problem. The same holds
for the pre-/post-update losses. (For the whole table, run
``METAGRAD_PERTURB=<method>:1e-6 pytest tests/test_accuracy.py``: every case of
that method fails.)
"""

from __future__ import annotations

import pytest
from helpers import DIMS, PROBLEMS, Case, Perturbed, evaluate, level1_failures, settings_for

import metagrad as mg
from metagrad.methods import METHOD_NAMES

METHODS = METHOD_NAMES


def _case(method: str, problem: str) -> Case:
    return Case.of(method, problem, **settings_for(method, problem, DIMS[problem])[2])


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("problem", PROBLEMS)
@pytest.mark.parametrize("method", METHODS)
def test_one_in_a_million_fails(method: str, problem: str):
    case = _case(method, problem)
    honest = evaluate(case, fd=False, target=False)
    assert not level1_failures(honest)
    broken = evaluate(case, fd=False, target=False, method=Perturbed(case.build(), 1e-6))
    failures = level1_failures(broken)
    assert failures, f"a 1e-6 relative error in {method} on {problem} went unnoticed"
    # and by a wide margin: the error seen is the one put in, ~1e-6 ≫ 1e-9
    assert broken["err_reference"] > 1e-7


@pytest.mark.parametrize("what", ["pre_update_loss", "post_update_loss"])
@pytest.mark.parametrize("method", METHODS)
def test_perturbed_losses_fail(method: str, what: str):
    case = _case(method, "softmax")
    broken = evaluate(case, fd=False, target=False,
                      method=Perturbed(case.build(), 1e-6, what=what))
    assert any(f.startswith("err_loss") for f in level1_failures(broken))


@pytest.mark.parametrize("method", [m for m in METHOD_NAMES if mg.METHODS[m].gradient_of])
def test_finite_differences_alone_catch_1e_6(method: str):
    """Independently of the dense reference, the finite-difference check rejects 1e-6 too."""
    case = _case(method, "mlp_softplus")
    broken = evaluate(case, fd=True, target=False, method=Perturbed(case.build(), 1e-6))
    assert broken["err_fd"] > 1e-7
