"""Bridges to torch.nn and torch.optim, task distributions, classification tasks."""

from __future__ import annotations

import math
import re

import pytest
import torch
from helpers import rel

import metagrad as mg
from metagrad import _pytree as pt

F64 = torch.float64


def test_module_helpers_drive_torch_optim():
    from metagrad.models import mlp

    model = mlp((1, 5, 1), torch.nn.Tanh, seed=1, dtype=torch.float64)
    loss = mg.module_loss(model, lambda a, b: ((a - b) ** 2).mean())
    tasks = mg.Sinusoid(shots=4, query=4).sample(2, seed=1, dtype=torch.float64)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    out = mg.FOMAML(steps=1, inner_lr=0.1)(loss, dict(model.named_parameters()), tasks)
    mg.set_grads(model, out.grad)
    torch.optim.SGD(model.parameters(), lr=0.5).step()
    for k, p in model.named_parameters():
        assert torch.allclose(p.detach(), before[k] - 0.5 * out.grad[k], rtol=0, atol=1e-15)
    with pytest.raises(KeyError, match="no entry"):
        mg.set_grads(model, {})




def test_distributions_are_seeded_and_shaped():
    a = mg.Sinusoid().sample(7, seed=3)
    b = mg.Sinusoid().sample(7, seed=3)
    assert torch.equal(a.train[0], b.train[0]) and a.num_tasks == 7
    assert a.train[0].shape == (7, 10, 1) and a.val[1].shape == (7, 10, 1)
    amp, phase = a.info["amplitude"], a.info["phase"]
    assert ((amp >= 0.1) & (amp <= 5)).all() and ((phase >= 0) & (phase <= math.pi)).all()
    x, y = a.train
    expected = amp.view(-1, 1, 1) * torch.sin(x.double() - phase.view(-1, 1, 1))
    assert torch.allclose(y.double(), expected, atol=1e-6)
    lin = mg.LinearRegression(dim=4, noise=0.0).sample(3, seed=0)
    x, y = lin.train
    assert torch.allclose(y, x @ lin.info["weights"], atol=1e-12)
    cls = mg.GaussianClusters(ways=3, shots=2, query=4, dim=5).sample(2, seed=0)
    assert cls.train[0].shape == (2, 6, 5) and cls.val[1].shape == (2, 12)
    assert cls.train[1].dtype == torch.int64 and set(cls.train[1][0].tolist()) == {0, 1, 2}


def test_softmax_regression_runs_on_classification_tasks():
    tasks = mg.GaussianClusters(ways=3, shots=2, query=3, dim=4).sample(3, seed=0,
                                                                         dtype=torch.float64)

    def loss(params, batch):
        x, y = batch
        return torch.nn.functional.cross_entropy(x @ params["W"] + params["b"], y)

    params = {"W": torch.zeros(4, 3, dtype=F64), "b": torch.zeros(3, dtype=F64)}
    a = mg.MAML(steps=2, inner_lr=0.5)(loss, params, tasks)
    b = mg.MAML(steps=2, inner_lr=0.5, backward="trajectory")(loss, params, tasks)
    assert math.isclose(float(a.pre_update_loss), math.log(3), rel_tol=1e-14)
    assert rel(pt.flatten(a.grad), pt.flatten(b.grad)) < 1e-12




@pytest.mark.parametrize("rename", [("2.weight", "2.weigth"), ("0.weight", "net.0.weight")])
def test_a_parameter_name_the_module_does_not_have_is_refused(rename):
    # functional_call would silently keep the module's own tensor as a constant and give
    # the misspelt name a zero gradient; the error names it and the real names.
    model = torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    loss = mg.module_loss(model, torch.nn.functional.mse_loss)
    params = mg.params_of(model)
    params[rename[1]] = params.pop(rename[0])
    tasks = mg.Sinusoid(shots=5, query=5).sample(3, seed=0)
    with pytest.raises(ValueError, match=rf"does not have: \['{re.escape(rename[1])}'\]"):
        mg.MAML(steps=1, inner_lr=0.05)(loss, params, tasks)
    assert (model[2].weight.grad is None) and (model[0].weight.grad is None)
