"""Shared pytest configuration.

* ``--update-baselines`` rewrites the Level-2 baselines in ``tests/baselines/``
  (``pytest tests/test_level2.py --update-baselines``) instead of comparing.
* ``METAGRAD_PERTURB=<method>:<relative size>`` (e.g. ``maml:1e-6``) wraps that
  public method so its meta-gradient is off by the given relative error, to
  show that the suite catches it: ``METAGRAD_PERTURB=imaml:1e-6 pytest -q
  tests/test_accuracy.py`` must fail. Tests are float64 unless they say otherwise
  (no global default dtype is set: every problem passes its dtype explicitly).
"""

from __future__ import annotations

import os

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-baselines", action="store_true", default=False,
                     help="rewrite tests/baselines/*.json from the current code instead of "
                          "comparing against them")


@pytest.fixture
def update_baselines(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-baselines"))


def pytest_configure(config: pytest.Config) -> None:
    spec = os.environ.get("METAGRAD_PERTURB")
    if not spec:
        return
    import metagrad as mg

    name, size = spec.split(":")
    from helpers import perturb_grad

    cls = mg.METHODS[name]
    original = cls.__call__

    def perturbed(self, loss, params, tasks):
        out = original(self, loss, params, tasks)
        out.grad = perturb_grad(out.grad, float(size))
        return out

    cls.__call__ = perturbed
    print(f"\nMETAGRAD_PERTURB: {name} meta-gradients perturbed by relative {size}")
