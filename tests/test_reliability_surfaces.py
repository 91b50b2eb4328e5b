"""Hostile inputs on every public entry point: each is refused by name or reported, never a
silent wrong number, a NaN or a raw traceback from deep inside torch. Each test was written
against a case that misbehaved (silently or with a raw error) before its fix."""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers import tanh_mlp_problem
from torch.nn import functional as F

import metagrad as mg
from metagrad.models import mlp

F64 = torch.float64


def _relu_problem(tasks: int = 3):
    model = mlp((1, 8, 1), seed=0)
    return model, mg.module_loss(model, F.mse_loss), mg.Sinusoid().sample(tasks, seed=0)


# -- silent wrong numbers ------------------------------------------------------------------

def test_a_loss_detached_from_the_parameters_is_refused():
    """It gave an all-zero meta-gradient and no finding."""
    model, loss, tasks = _relu_problem()
    with pytest.raises(ValueError, match="does not depend on params through autograd"):
        mg.MAML(steps=1)(lambda p, b: loss(p, b).detach(), mg.params_of(model), tasks)
    with pytest.raises(ValueError, match="does not depend on params"):
        mg.FOMAML(steps=1)(lambda p, b: torch.tensor(float(loss(p, b))), mg.params_of(model),
                           tasks)


@pytest.mark.parametrize("call, message", [
    (lambda: mg.neumann(lambda v: v, {"w": torch.ones(2)}, terms=-1), "terms must be"),
    (lambda: mg.neumann(lambda v: v, {"w": torch.ones(2)}, terms=2, step=-1.0), "step must be"),
    (lambda: mg.cg(lambda v: v, {"w": torch.ones(2)}, -1), "iters must be"),
    (lambda: mg.adapt(lambda p, b: p["w"].sum(), {"w": torch.ones(2)}, None, -2, 0.1),
     "steps must be"),
])
def test_negative_counts_are_refused_at_every_entry_point(call, message):
    """``mg.neumann(op, b, terms=-1, step=-1)`` returned −b; ``cg`` and ``adapt`` ran with a
    negative count."""
    with pytest.raises(ValueError, match=message):
        call()


def test_dropout_noise_is_not_reported_as_a_rising_inner_loss():
    """With the noise estimated from 6 draws and a 4σ margin, about one healthy call in five
    reported ``inner_loop_rise`` on this dropout MLP (K = 5, a tiny step)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(1, 40), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(40, 40),
        torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(40, 1))
    loss = mg.module_loss(model, F.mse_loss)
    method = mg.MAML(steps=5, inner_lr=0.001, diagnose="record")
    false = [seed for seed in range(40)
             if method(loss, mg.params_of(model), mg.Sinusoid().sample(10, seed=seed)).findings]
    assert false == []
    # a loop that really diverges is still reported through the noise
    blown = mg.MAML(steps=5, inner_lr=3.0, diagnose="record")(
        loss, mg.params_of(model), mg.Sinusoid().sample(10, seed=0))
    assert {f.kind for f in blown.findings} & {"inner_loop_rise", "non_finite"}


# -- clear errors instead of raw tracebacks ------------------------------------------------

def test_meta_device_parameters_are_refused_by_name():
    model, loss, tasks = _relu_problem()
    meta = {k: v.to("meta") for k, v in mg.params_of(model).items()}
    with pytest.raises(ValueError, match=r"params\['0.weight'\] is on the meta device"):
        mg.MAML(steps=1)(loss, meta, tasks)


def test_tasks_without_examples_are_refused():
    """Zero support shots with F.mse_loss was a ZeroDivisionError inside torch's backward."""
    model, loss, tasks = _relu_problem()
    empty = mg.Task(train=(tasks.train[0][:, :0], tasks.train[1][:, :0]), val=tasks.val)
    with pytest.raises(ValueError, match=r"tasks.train\[0\] has no examples"):
        mg.MAML(steps=1)(loss, mg.params_of(model), empty)


class _Counter(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(1, 1)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        self.calls += 1
        return self.lin(x)


@pytest.mark.parametrize("batching", ["vmap", "loop"])
def test_a_module_writing_its_own_buffer_is_refused_and_left_unchanged(batching):
    """A raw functorch error, and the failed call still changed the buffer."""
    model = _Counter()
    loss = mg.module_loss(model, F.mse_loss)
    with pytest.raises(ValueError, match=r"writes into its buffer\(s\) \['calls'\]"):
        mg.MAML(steps=1, batching=batching)(loss, mg.params_of(model),
                                            mg.Sinusoid().sample(2, seed=0))
    assert float(model.calls) == 0


def test_spectral_norm_in_training_mode_is_refused_and_its_vectors_kept():
    """A raw batching error without the batching hint, and loop mode changed the caller's
    power-iteration vector ``_u``."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.utils.parametrizations.spectral_norm(torch.nn.Linear(1, 4)), torch.nn.Tanh(),
        torch.nn.Linear(4, 1))
    loss = mg.module_loss(model, F.mse_loss)
    tasks = mg.Sinusoid().sample(3, seed=0)
    u = model[0].parametrizations.weight[0]._u.clone()
    for batching in ("vmap", "loop"):
        with pytest.raises(ValueError, match=r"call \.eval\(\) on those layers"):
            mg.MAML(steps=1, batching=batching)(loss, mg.params_of(model), tasks)
    assert torch.equal(model[0].parametrizations.weight[0]._u, u)
    model.eval()  # then the vectors are fixed, and both batchings agree
    a = mg.MAML(steps=2)(loss, mg.params_of(model), tasks)
    b = mg.MAML(steps=2, batching="loop")(loss, mg.params_of(model), tasks)
    for k in a.grad:
        assert torch.allclose(a.grad[k], b.grad[k], rtol=1e-5, atol=1e-7)


def test_forward_over_reverse_through_mse_loss_points_to_revrev():
    model, loss, tasks = _relu_problem()
    with pytest.raises(RuntimeError, match="use hvp='revrev'"):
        mg.IMAML(steps=1, hvp="fwdrev")(loss, mg.params_of(model), tasks)


def test_a_0_dim_tensor_step_size_is_the_float():
    """``inner_lr=torch.tensor(0.01)`` was refused as "must be a finite positive number"."""
    loss, params, tasks = tanh_mlp_problem()
    a = mg.MAML(steps=2, inner_lr=torch.tensor(0.05, dtype=F64))(loss, params, tasks)
    b = mg.MAML(steps=2, inner_lr=0.05)(loss, params, tasks)
    for k in b.grad:
        assert torch.allclose(a.grad[k], b.grad[k], rtol=1e-13, atol=0)
    assert a.hyper_grad["inner_lr"].shape == ()


# -- the compiled path ---------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    (dict(mode="bogus"), "mode must be one of"),
    (dict(backend="no-such-backend"), "backend must be one of"),
    (dict(backend=3), "backend must be a backend name or a callable"),
])
def test_compile_refuses_bad_options_at_construction(kwargs, message):
    """They were accepted, to fail later inside torch.compile."""
    with pytest.raises((ValueError, TypeError), match=message):
        mg.compile(mg.MAML(steps=1), **kwargs)


@pytest.mark.parametrize("fallback", [False, True])
def test_a_diverging_first_compiled_call_is_a_numerical_error_not_a_trace_failure(fallback):
    """``diagnose="error"`` turned it into "could not trace … (NumericalError …)", and with
    ``fallback=True`` into a false fallback warning and eager calls from then on."""
    loss, params, tasks = tanh_mlp_problem()
    compiled = mg.compile(mg.MAML(steps=3, inner_lr=50.0, diagnose="error"),
                          backend="aot_eager", fallback=fallback)
    with warnings.catch_warnings():
        warnings.simplefilter("error", mg.compiled.CompileFallbackWarning)
        with pytest.raises(mg.NumericalError, match="inner"):
            compiled(loss, params, tasks)
    assert len(compiled.signatures) == 1 and compiled.eager_signatures == []


def test_a_later_compiled_call_with_nan_parameters_names_the_parameter():
    """It blamed the task data, where the eager method names the parameter."""
    loss, params, tasks = tanh_mlp_problem()
    compiled = mg.compile(mg.MAML(steps=1, inner_lr=0.05), backend="aot_eager")
    compiled(loss, params, tasks)
    bad = {k: v.clone() for k, v in params.items()}
    name = list(bad)[1]
    bad[name][0] = float("nan")
    with pytest.raises(ValueError, match=rf"params\['{name}'\] contains NaN"):
        compiled(loss, bad, tasks)


# -- the implicit methods' linear system ---------------------------------------------------

def test_a_singular_system_is_not_told_to_increase_cg_iters():
    """I + H/λ singular (λ_min(H) = −λ): CG's residual cannot shrink, and the advice was
    "increase cg_iters"."""
    lam = 2.0

    def loss(p, batch):
        x, _ = batch
        return -0.5 * lam * p["w"][0] ** 2 + 0.5 * p["w"][1] ** 2 + 0 * x.sum()

    params = {"w": torch.tensor([0.3, -0.7], dtype=F64)}
    ones = torch.ones(2, 3, 1, dtype=F64)
    tasks = mg.Task(train=(ones, ones), val=(ones, ones))
    for cg_iters in (2, 5):
        out = mg.IMAML(steps=0, inner_lr=0.01, lam=lam, cg_iters=cg_iters,
                       diagnose="record")(loss, params, tasks)
        kinds = {f.kind for f in out.findings}
        assert kinds & {"singular_system", "indefinite_system"}, kinds
        assert "cg_unconverged" not in kinds
        assert all("increase cg_iters" not in f.message for f in out.findings)
