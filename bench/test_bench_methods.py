"""pytest-benchmark suite for quick local comparisons (not part of the CI test run:
``testpaths = ["tests"]``). Run:

    python -m pytest bench/ --benchmark-only
    python -m pytest bench/ --benchmark-only --benchmark-save=before   # then compare:
    python -m pytest bench/ --benchmark-only --benchmark-compare

Each benchmark times one meta-gradient on the sinusoid MLP (meta-batch 25, float32, CPU)
and records in ``extra_info`` the relative error of the same method in float64 against
the exact target (``metagrad.verify.exact_target``; NaN for IMAML/Neumann on the ReLU net,
whose implicit target is undefined), gradient-equivalents and measured/predicted cost.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from metagrad_bench import variants
from metagrad_bench.measure import gradient_time

from metagrad.problems import make_problem
from metagrad.verify.compare import exact_target, rel_error

CASES = [
    ("maml", dict(steps=5)),
    ("maml-trajectory", dict(steps=5)),
    ("fomaml", dict(steps=5)),
    ("reptile", dict(steps=5)),
    ("imaml", dict(steps=5, lam=1.0, cg_iters=5)),
    ("neumann", dict(steps=5, lam=1.0, terms=5)),
    ("penalty", dict(steps=5, lam=0.1)),
]
CASES.append(("maml-compiled", dict(steps=5)))


@pytest.fixture(scope="module")
def problem():
    return make_problem("sinusoid")


@pytest.fixture(scope="module")
def problem64():
    return make_problem("sinusoid", dtype=torch.float64)


@pytest.fixture(scope="module")
def gradient_ms(problem):
    return 1e3 * gradient_time(problem.loss, problem.params, problem.tasks, "cpu").median_s


@pytest.mark.parametrize("name,settings", CASES, ids=[c[0] for c in CASES])
def test_meta_gradient(benchmark, problem, problem64, gradient_ms, name, settings):
    warnings.simplefilter("ignore")
    method, fn = variants.make(name, inner_lr=0.01, **settings)
    p = problem
    out = benchmark(fn, p.loss, p.params, p.tasks)
    assert torch.isfinite(torch.cat([g.reshape(-1) for g in out.grad.values()])).all()
    approx = float("nan")
    if not method.implicit:  # no implicit target on the ReLU net (its φ* sits on a kink)
        target = exact_target(problem64, method.name, {**settings, "inner_lr": 0.01})
        eager, _ = variants.make(name.replace("-compiled", ""), inner_lr=0.01, **settings)
        grad = eager(problem64.loss, problem64.params, problem64.tasks).grad
        approx = rel_error(torch.cat([g.reshape(-1) for g in grad.values()]), target)
    ge = method.gradient_equivalents()
    benchmark.extra_info.update({
        "approx_error": approx,
        "gradient_equivalents": ge,
        "gradient_ms": gradient_ms,
        "measured_over_predicted": 1e3 * benchmark.stats.stats.median / (ge * gradient_ms),
    })
