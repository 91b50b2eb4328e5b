"""Property-based tests (hypothesis): random small problems and settings.

* On random linear-regression problems every method equals its closed form
  (``reference.closed_form``, pure matrix algebra) to 1e-9.
* On random smooth MLPs every method equals the dense reference to 1e-9.
* The meta-gradient of T tasks is the mean of the single-task meta-gradients.
"""

from __future__ import annotations

import warnings

import metagrad_reference as reference
import pytest
import torch
from helpers import flat, linreg, random_mlp, rel_error
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from metagrad_reference import closed_form as cf
from metagrad_reference import dense

import metagrad as mg
from metagrad.methods import METHOD_NAMES, is_implicit
from metagrad.verify.compare import REF_RTOL

FAST = settings(max_examples=15, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


@st.composite
def method_and_settings(draw, dim: int):
    name = draw(st.sampled_from(list(METHOD_NAMES)))
    cls = mg.METHODS[name]
    # Each setting the method reads, drawn by its name: inner_lr as a fraction of the
    # stable range, scaled per problem (_scale_lr); λ of an implicit method's proximal
    # problem in [0.5, 10], of the penalty's objective in [0, 2].
    strategies = {"steps": st.integers(0, 8), "inner_lr": st.floats(0.05, 0.9),
                  "lam": st.floats(0.5, 10.0) if is_implicit(name) else st.floats(0.0, 2.0),
                  "cg_iters": st.integers(0, dim + 2), "terms": st.integers(0, 10),
                  "step": st.floats(0.1, 1.0)}
    s = {k: draw(strategies[k]) for k in cls.setting_names()}
    # every code path of the method: batching, HVP mode and its own options
    kw = {k: draw(st.sampled_from(list(values))) for k, values in cls.code_paths.items()}
    return name, s, kw


def _scale_lr(name: str, s: dict, p) -> dict:
    """α = fraction / (L + λ): inside the stable range of plain (α L < 2) and proximal
    (α(λ + L) < 2) gradient descent, L the largest |Hessian eigenvalue| at θ (dense)."""
    f, theta = flat(p)
    top = max(float(torch.linalg.eigvalsh(dense.hessian(f, theta, tr)).abs().max())
              for tr, _ in p.task_list())
    proximal = s["lam"] if is_implicit(name) else 0.0
    return {**s, "inner_lr": s["inner_lr"] / (top + proximal)}


def _run(name, s, kw, p):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # divergence / non-convergence diagnostics are expected
        return mg.METHODS[name](**s, **kw)(p.loss, p.params, p.tasks)


@FAST
@given(data=st.data(), dim=st.integers(1, 6), seed=st.integers(0, 10_000),
       meta_batch=st.integers(1, 3))
def test_random_linear_regression_matches_closed_form(data, dim, seed, meta_batch):
    p = linreg(meta_batch, seed, torch.float64, dim=dim)
    name, s, kw = data.draw(method_and_settings(dim))
    s = _scale_lr(name, s, p)
    out = _run(name, s, kw, p)
    theta = reference.flatten(p.params)
    want = torch.stack([cf.METHODS[name]((tr[0], tr[1].reshape(-1)), (va[0], va[1].reshape(-1)),
                                         theta, **s) for tr, va in p.task_list()]).mean(0)
    assert rel_error(reference.flatten(out.grad), want) <= REF_RTOL


@FAST
@given(data=st.data(), width=st.integers(1, 5), seed=st.integers(0, 10_000),
       activation=st.sampled_from(["tanh", "softplus"]))
def test_random_mlp_matches_dense_reference(data, width, seed, activation):
    p = random_mlp(seed, width, activation)
    name, s, kw = data.draw(method_and_settings(p.dim))
    s = _scale_lr(name, s, p)
    out = _run(name, s, kw, p)
    f, theta = flat(p)
    ref = reference.meta_batch(name, f, theta, p.task_list(), **s)
    assert rel_error(reference.flatten(out.grad), ref.grad) <= REF_RTOL
    assert rel_error(out.post_update_loss, ref.post_update_loss) <= REF_RTOL
    assert rel_error(out.pre_update_loss, ref.pre_update_loss) <= REF_RTOL


@FAST
@given(data=st.data(), seed=st.integers(0, 10_000), meta_batch=st.integers(2, 4))
def test_meta_gradient_is_the_mean_over_tasks(data, seed, meta_batch):
    p = random_mlp(seed, 3, "tanh", meta_batch=meta_batch)
    name, s, kw = data.draw(method_and_settings(p.dim))
    s = _scale_lr(name, s, p)
    whole = reference.flatten(_run(name, s, kw, p).grad)
    singles = []
    for i in range(meta_batch):
        one = mg.Task(*(torch.utils._pytree.tree_map(lambda x, i=i: x[i:i + 1], split)
                        for split in (p.tasks.train, p.tasks.val)))
        singles.append(reference.flatten(_run(name, s, kw, type(p)(
            p.name, p.loss, p.params, one)).grad))
    assert rel_error(whole, torch.stack(singles).mean(0)) <= 1e-12


@pytest.mark.parametrize("dim", [1, 3])
def test_closed_form_oracle_handles_scalar_parameters(dim):
    """d = 1 (torchopt issue #222 gave a scalar parameter zero CG iterations): IMAML with
    cg_iters ≥ d must still solve the system exactly."""
    p = linreg(1, 0, torch.float64, dim=dim)
    s = dict(steps=3, inner_lr=0.1, lam=1.0, cg_iters=dim)
    out = mg.IMAML(**s)(p.loss, p.params, p.tasks)
    (tr, va), = p.task_list()
    want = cf.imaml((tr[0], tr[1].reshape(-1)), (va[0], va[1].reshape(-1)),
                    reference.flatten(p.params), **s)
    assert rel_error(reference.flatten(out.grad), want) <= REF_RTOL
