"""The methods as a family: batching modes, task means, dtypes, MAML's backward modes, the
losses they report, each against an independent computation."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from helpers import rel, tanh_mlp_problem

import metagrad as mg
import metagrad.diagnose
from metagrad import _pytree as pt

F64 = torch.float64


ALL = [
    mg.MAML(steps=3, inner_lr=0.1),
    mg.MAML(steps=3, inner_lr=0.1, backward="trajectory"),
    mg.FOMAML(steps=3, inner_lr=0.1),
    mg.Reptile(steps=3, inner_lr=0.1),
    mg.IMAML(steps=3, inner_lr=0.1, lam=2.0, cg_iters=4),
    mg.Neumann(steps=3, inner_lr=0.1, lam=2.0, terms=4, step=0.5),
    mg.Penalty(steps=3, inner_lr=0.1, lam=0.1),
]


@pytest.mark.parametrize("method", ALL, ids=lambda m: f"{m.name}-{getattr(m, 'backward', '')}")
def test_vmap_and_loop_agree(method):
    loss, params, tasks = tanh_mlp_problem(tasks=4)
    a = method(loss, params, tasks)
    b = type(method)(**{**method.config(), "batching": "loop"})(loss, params, tasks)
    assert rel(pt.flatten(a.grad), pt.flatten(b.grad)) < 1e-12
    assert math.isclose(float(a.post_update_loss), float(b.post_update_loss), rel_tol=1e-12)
    assert math.isclose(float(a.pre_update_loss), float(b.pre_update_loss), rel_tol=1e-12)


@pytest.mark.parametrize("method", ALL, ids=lambda m: f"{m.name}-{getattr(m, 'backward', '')}")
def test_mean_of_single_task_results(method):
    """The meta-batch result is the mean of the one-task results (linearity of the API)."""
    loss, params, tasks = tanh_mlp_problem(tasks=3)
    full = method(loss, params, tasks)
    singles = []
    for i in range(3):
        one = mg.Task(*(torch.utils._pytree.tree_map(lambda x, i=i: x[i : i + 1], s)
                        for s in (tasks.train, tasks.val)))
        singles.append(method(loss, params, one))
    mean_grad = sum(pt.flatten(s.grad) for s in singles) / 3
    assert rel(pt.flatten(full.grad), mean_grad) < 1e-12
    post = sum(float(s.post_update_loss) for s in singles) / 3
    assert math.isclose(float(full.post_update_loss), post, rel_tol=1e-12)


@pytest.mark.parametrize("method", ALL, ids=lambda m: f"{m.name}-{getattr(m, 'backward', '')}")
def test_float32_agrees_with_float64(method):
    loss, params, tasks = tanh_mlp_problem(tasks=4)
    g64 = pt.flatten(method(loss, params, tasks).grad)
    p32 = {k: v.float() for k, v in params.items()}
    from metagrad.models import mlp

    model32 = mlp((1, 6, 6, 1), torch.nn.Tanh, seed=0, dtype=torch.float32)
    loss32 = mg.module_loss(model32, lambda a, b: ((a - b) ** 2).mean())
    out32 = method(loss32, p32, tasks.to(torch.float32))
    assert all(v.dtype == torch.float32 for v in out32.grad.values())
    g32 = pt.flatten(out32.grad).double()
    # Forward-error bound: each of the ~(3K + 2m + small) sequential passes adds relative
    # rounding of order n·ε₃₂ where n ≈ 50 (largest dot-product length, layers of width 6
    # plus 10 data points); 1e3·ε₃₂ ≈ 1.2e-4 covers that with margin, and is still 1e8
    # times looser than float64 agreement, so a float32-only bug would show.
    assert rel(g32, g64) < 1e3 * torch.finfo(torch.float32).eps


def test_maml_trajectory_equals_unrolled_at_larger_k():
    loss, params, tasks = tanh_mlp_problem(tasks=2)
    a = mg.MAML(steps=8, inner_lr=0.05)(loss, params, tasks)
    b = mg.MAML(steps=8, inner_lr=0.05, backward="trajectory")(loss, params, tasks)
    assert rel(pt.flatten(b.grad), pt.flatten(a.grad)) < 1e-12




def test_pre_and_post_update_losses_are_the_losses():
    loss, params, tasks = tanh_mlp_problem(tasks=3)
    out = mg.FOMAML(steps=2, inner_lr=0.1)(loss, params, tasks)
    pre, post = [], []
    for i in range(3):
        train, val = tasks.task(i)
        pre.append(float(loss(params, train)))
        phi = params
        for _ in range(2):  # plain loop with torch.autograd, independent of mg.adapt
            p = {k: v.clone().requires_grad_(True) for k, v in phi.items()}
            grads = torch.autograd.grad(loss(p, train), list(p.values()))
            phi = {k: v.detach() - 0.1 * g for (k, v), g in zip(p.items(), grads)}
        post.append(float(loss(phi, val)))
    assert math.isclose(float(out.pre_update_loss), sum(pre) / 3, rel_tol=1e-13)
    assert math.isclose(float(out.post_update_loss), sum(post) / 3, rel_tol=1e-13)




@pytest.mark.parametrize("steps,checkpoint", [(7, 1), (7, 2), (7, 3), (7, 7), (7, 10), (1, 4)])
def test_checkpointed_trajectory_equals_unrolled(steps, checkpoint):
    loss, params, tasks = tanh_mlp_problem(tasks=2)
    a = mg.MAML(steps=steps, inner_lr=0.05)(loss, params, tasks)
    b = mg.MAML(steps=steps, inner_lr=0.05, backward="trajectory",
                checkpoint=checkpoint)(loss, params, tasks)
    assert rel(pt.flatten(b.grad), pt.flatten(a.grad)) < 1e-12



# --------------------------------------------------------------------------------------------
# the methods describe themselves


def test_registry_order_and_settings_read_off_the_constructors():
    """The registry lists the built-in methods in the canonical order, and each class's settings are
    exactly the numerical parameters of its constructor (read here with inspect)."""
    import inspect

    assert mg.METHOD_NAMES == ("maml", "fomaml", "reptile", "imaml", "neumann", "penalty")
    vocabulary = {"steps", "inner_lr", "lam", "cg_iters", "terms", "step"}
    for name, cls in mg.METHODS.items():
        assert cls.name == name
        params = set(inspect.signature(cls).parameters)
        assert set(cls.setting_names()) == params & vocabulary
        defaults = {k: p.default for k, p in inspect.signature(cls).parameters.items()}
        assert cls.default_settings() == {k: defaults[k] for k in cls.setting_names()}
    implicit = [n for n, cls in mg.METHODS.items() if cls.target == "implicit"]
    assert implicit == ["imaml", "neumann"]
    # Exactly the implicit methods have no objective that finite differences could check.
    assert [n for n, cls in mg.METHODS.items() if cls.gradient_of is None] == implicit


def test_help_shows_equation_paper_and_every_field():
    import pydoc

    text = pydoc.render_doc(mg.IMAML, renderer=pydoc.plaintext)
    assert "(I + H(φ)/λ) x = ∇L_val(φ)" in text and "Rajeswaran" in text
    # every field of every method, as an entry of its Parameters section
    import dataclasses
    import re

    for cls in mg.METHODS.values():
        doc = cls.__doc__ or ""
        for field in dataclasses.fields(cls):
            assert re.search(rf"^\s*{field.name} : ", doc, re.M), (cls.name, field.name)
    assert "cg_iters : int" in text
    for cls in mg.METHODS.values():
        doc = cls.__doc__ or ""
        assert "gᵢ" in doc and cls.paper.split(",")[0].split(" ")[0] in doc, cls.name


def test_implicit_methods_are_thin_facades_over_solver_objects():
    imaml = mg.IMAML(steps=3, inner_lr=0.1, lam=2.0, cg_iters=4)
    neumann = mg.Neumann(steps=3, inner_lr=0.1, lam=2.0, terms=6, step=0.5)
    assert imaml.solver == mg.ConjugateGradient(4)
    assert neumann.solver == mg.NeumannSeries(6, 0.5)
    # Cost model: K + 1 + 2m (one HVP ≈ 2 gradients per CG iteration or series term).
    assert imaml.gradient_equivalents() == 3 + 1 + 2 * 4
    assert neumann.gradient_equivalents() == 3 + 1 + 2 * 6
    with pytest.raises(ValueError, match="cg_iters must be a non-negative integer"):
        mg.IMAML(cg_iters=-1)


# --------------------------------------------------------------------------------------------
# MAML's backward modes as objects


def test_backward_mode_objects_and_strings_are_one_configuration():
    by_string = mg.MAML(steps=4, inner_lr=0.1, backward="trajectory", checkpoint=2)
    by_object = mg.MAML(steps=4, inner_lr=0.1, backward=mg.Trajectory(checkpoint=2))
    assert by_string == by_object and by_string.backward == mg.Trajectory(2)
    assert mg.MAML().backward == mg.Unrolled()
    from dataclasses import replace

    assert replace(by_object, steps=6).backward == mg.Trajectory(2)
    with pytest.raises(ValueError, match="applies to backward='trajectory' only"):
        mg.MAML(backward="unrolled", checkpoint=2)
    with pytest.raises(ValueError, match="contradicts"):
        mg.MAML(backward=mg.Trajectory(checkpoint=2), checkpoint=3)
    with pytest.raises(ValueError, match="checkpoint must be a positive integer"):
        mg.Trajectory(checkpoint=0)
    with pytest.raises(ValueError, match="backward must be one of"):
        mg.MAML(backward="reverse")
    loss, params, tasks = tanh_mlp_problem()
    a, b = by_object(loss, params, tasks), mg.MAML(steps=4, inner_lr=0.1)(loss, params, tasks)
    assert rel(pt.flatten(a.grad), pt.flatten(b.grad)) < 1e-12


@pytest.mark.parametrize("steps,checkpoint", [(7, None), (7, 2), (7, 3), (6, 6), (10, 3)])
def test_cost_model_counts_the_recomputed_segments(steps, checkpoint):
    """Count the forward passes of the loss on the train batch (one task, loop batching):
    K for the inner loop, K for the HVP sweep, and what the checkpointed trajectory
    recomputes, which the cost model must add (3K + 1 + recomputed)."""
    loss, params, tasks = tanh_mlp_problem(tasks=1)
    train_x = tasks.task(0)[0][0]
    calls = {"train": 0}

    def counting(p, batch):
        if batch[0].shape == train_x.shape and torch.equal(batch[0], train_x):
            calls["train"] += 1
        return loss(p, batch)

    method = mg.MAML(steps=steps, inner_lr=0.1, backward="trajectory", checkpoint=checkpoint,
                     batching="loop", diagnose="off")
    before = calls["train"]
    method(counting, params, tasks)
    # One more forward of the first task's train batch is the input check of the call.
    recomputed = calls["train"] - before - 1 - 2 * steps
    assert recomputed == method.backward.recomputed_gradients(steps)
    assert method.gradient_equivalents() == 3 * steps + 1 + recomputed


# --------------------------------------------------------------------------------------------
# findings as values


def test_findings_are_values_and_record_mode_does_not_emit():
    import warnings

    loss, params, tasks = tanh_mlp_problem()
    noisy = mg.Neumann(steps=2, inner_lr=0.1, lam=0.05, terms=6)
    with pytest.warns(mg.MetaGradientWarning):
        warned = noisy(loss, params, tasks)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning would fail here
        from dataclasses import replace

        recorded = replace(noisy, diagnose="record")(loss, params, tasks)
    assert [(f.kind, f.message, f.tasks) for f in recorded.findings] == \
           [(f.kind, f.message, f.tasks) for f in warned.findings]
    assert recorded.warnings == [f.message for f in recorded.findings]
    kinds = {f.kind for f in recorded.findings}
    assert "neumann_divergence" in kinds and kinds <= set(mg.diagnose.KINDS)
    finding = mg.Finding("cg_unconverged", "CG stopped in {where}", (0, 2))
    assert finding.message == "CG stopped in task 0 and 1 other(s)"
    assert finding.offset(5).tasks == (5, 7) and finding.offset(5).message.startswith(
        "CG stopped in task 5")


def test_report_meta_gradient_section(tmp_path):
    """The report's first section: every method on the sinusoid tasks, the implicit ones at
    settings where the checks find nothing, and what the checks say at their defaults."""
    from metagrad.models import mlp
    from metagrad.problems import make_problem
    from metagrad.report.command import ReportContext
    from metagrad.report.core import meta_gradients

    text = meta_gradients(ReportContext(out=tmp_path, device="cpu", seed=0, quick=True))
    frame = pd.read_csv(tmp_path / "meta_gradients.csv").set_index("method")
    assert list(frame.index) == list(mg.METHOD_NAMES)
    assert frame.loc["maml", "cosine_to_maml"] == pytest.approx(1.0, abs=1e-6)
    assert (frame["warnings"] == 0).all(), frame["warnings"]
    # The pre-update loss is the plain mean of the per-task train MSEs at θ (float64 here).
    problem = make_problem("sinusoid", seed=0)
    model = mlp((1, 40, 40, 1), seed=0).double()
    x, y = problem.tasks.train
    expected = float(((model(x.double()) - y.double()) ** 2).mean(dim=(1, 2)).mean())
    assert frame["pre_update_loss"].to_numpy() == pytest.approx(expected, rel=1e-5)
    assert "No numerical problems were diagnosed at these settings" in text
    assert "not positive definite" in text and "Neumann series diverges" in text
