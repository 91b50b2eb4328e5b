"""The peer libraries' inner-loop variants (``bench/peers/*.AUDIT_INNER``, ``VARIANT_CASES``)
against metagrad and the oracle.

On a small float64 problem with a matrix, a vector and a 0-dim parameter, each library's
variant (learn2learn's ``MetaSGD``; torchopt's ``MetaSGD`` with momentum, ``MetaAdam``, a
learned ``lr``; higher's differentiable momentum SGD and Adam, learned rates through
``override``) is compared with metagrad's MAML running the same variant, rate-gradients
included:

* where they agree, to ≤ 1e-9;
* where they do not (torchopt's and higher's Adam), the library's number is far from
  metagrad's AND equals, to ≤ 1e-12, what the oracle computes for the definition the
  library uses (``metagrad_reference.inner_variants``: Adam's bias corrections in float32;
  ε outside the corrections), so that a change in either library or metagrad fails;
* torchopt's ``MetaAdam`` returns NaN in every entry once one parameter's inner gradient is
  exactly zero, where metagrad's (and the exact) meta-gradient is finite.

The timing harness's functions (``VARIANT_CASES``, run on ``problem.module``) are checked to
compute the same meta-gradient as metagrad. Each library is skipped when not installed.
"""

from __future__ import annotations

import importlib
import warnings

import pytest
import torch

import metagrad as mg

DT = torch.float64
STEPS, LR = 3, 0.1


def loss(params, batch):
    x, y = batch
    return ((torch.tanh(x @ params["layer.W"] + params["layer.b"]) * params["s"] - y) ** 2).mean()


def make_problem():
    g = torch.Generator().manual_seed(1)
    params = {"layer.W": 0.5 * torch.randn(3, 2, generator=g, dtype=DT),
              "layer.b": 0.1 * torch.randn(2, generator=g, dtype=DT),
              "s": torch.tensor(1.3, dtype=DT)}

    def batch():
        return (torch.randn(3, 6, 3, generator=g, dtype=DT),
                torch.randn(3, 6, 2, generator=g, dtype=DT))

    return params, mg.Task(train=batch(), val=batch())


def adapter(library: str):
    module = importlib.import_module(f"metagrad_bench.peers.{library}_")
    if module.available() is not None:  # learn2learn imports through the adapter's _import
        pytest.skip(f"{library}: {module.available()}")
    return module


def rates_for(form: str, params):
    g = torch.Generator().manual_seed(2)
    if form == "one_rate":
        return torch.tensor(LR, dtype=DT)
    return {k: (LR * (0.5 + torch.rand(() if form == "per_tensor" else v.shape, generator=g,
                                         dtype=DT))) for k, v in params.items()}


def flat(grad, hyper=None):
    parts = [v.reshape(-1) for v in grad.values()]
    if hyper is not None:
        rates = hyper["inner_lr"]
        parts += ([rates.reshape(-1)] if isinstance(rates, torch.Tensor)
                  else [v.reshape(-1) for v in rates.values()])
    return torch.cat(parts)


def rel(a, b):
    return float((a - b).norm() / b.norm())


RULES = {"momentum": mg.Momentum(0.9), "nesterov": mg.Momentum(0.9, nesterov=True),
         "adam": mg.Adam(), None: None}
AGREE = [  # (library, method, rate form or None, rule name or None)
    ("learn2learn", "maml", "per_entry", None), ("learn2learn", "fomaml", "per_entry", None),
    ("learn2learn", "maml", "per_tensor", None),
    ("torchopt", "maml", None, "momentum"), ("torchopt", "maml", None, "nesterov"),
    ("torchopt", "maml", "one_rate", None), ("torchopt", "maml", "one_rate", "momentum"),
    ("torchopt", "fomaml", None, "nesterov"),
    ("higher", "maml", None, "momentum"), ("higher", "maml", None, "nesterov"),
    ("higher", "maml", "per_tensor", "momentum"), ("higher", "maml", "one_rate", None),
    ("higher", "fomaml", None, "momentum"),
]


def run_both(library, method, form, rule):
    module = adapter(library)
    params, tasks = make_problem()
    lr = rates_for(form, params) if form else LR
    settings = {"steps": STEPS, "inner_lr": lr}
    if rule is not None:
        settings["inner"] = RULES[rule]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = module.AUDIT_TARGETS[method](**settings)(loss, params, tasks)
    cls = {"maml": mg.MAML, "fomaml": mg.FOMAML}[method]
    kwargs = {"inner": RULES[rule]} if rule else {}
    rates = lr if not form else (lr.clone().requires_grad_(True) if form == "one_rate" else
                                 {k: v.clone().requires_grad_(True) for k, v in lr.items()})
    ours = cls(steps=STEPS, inner_lr=rates, diagnose="off", **kwargs)(loss, params, tasks)
    theirs = flat(*out) if isinstance(out, tuple) else flat(out)
    return theirs, flat(ours.grad, ours.hyper_grad if form else None), params, tasks, lr


@pytest.mark.parametrize("library,method,form,rule", AGREE)
def test_variant_agrees_with_metagrad(library, method, form, rule):
    theirs, ours, *_ = run_both(library, method, form, rule)
    assert theirs.shape == ours.shape  # the rate-gradient is there when rates are learned
    assert rel(theirs, ours) <= 1e-9


def _oracle(params, tasks, rates, **options):
    from metagrad_reference import Rule, flat_loss, flatten, inner_variants

    layout = [(k, tuple(v.shape)) for k, v in params.items()]
    pairs = [tasks.task(i) for i in range(tasks.num_tasks)]
    grad, rate = inner_variants.meta_batch(flat_loss(loss, params), flatten(params), layout,
                                           pairs, steps=STEPS, rates=rates, rule=Rule("adam"),
                                           **options)
    return torch.cat([grad, rate])


@pytest.mark.parametrize("library,option", [("torchopt", "bias_float32"),
                                            ("higher", "eps_outside")])
@pytest.mark.parametrize("form", [None, "one_rate"])
def test_adam_is_the_definition_the_library_uses(library, option, form):
    """torchopt: Adam with its bias corrections in float32 (β rounded first); higher: ε
    outside the corrections (Kingma & Ba 2015, §2). Far from metagrad's Adam (Alg. 1),
    equal to the oracle's value of that definition."""
    theirs, ours, params, tasks, lr = run_both(library, "maml", form, "adam")
    assert rel(theirs, ours) > 1e-8
    assert rel(theirs, _oracle(params, tasks, lr, **{option: True})) <= 1e-12


def test_torchopt_meta_adam_is_nan_where_a_gradient_is_zero():
    adapter("torchopt")
    import torchopt

    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor([2.0, 3.0]))

        def forward(self, x):
            return ((self.w * x).sum() - 1) ** 2

    x = torch.tensor([1.0, 0.0])  # w[1] has an exactly zero inner gradient
    net = Two()
    theta = list(net.parameters())  # θ, before the step replaces the module's weights by φ
    opt = torchopt.MetaAdam(net, lr=0.1)
    opt.step(net(x))
    got = torch.autograd.grad(net(x), theta)[0]
    assert torch.isnan(got).all()
    exact = mg.MAML(steps=1, inner_lr=0.1, inner=mg.Adam(), diagnose="off")(
        lambda p, b: ((p["w"] * b).sum() - 1) ** 2, {"w": torch.tensor([2.0, 3.0])},
        mg.Task(train=x[None], val=x[None])).grad["w"]
    assert torch.allclose(exact, torch.tensor([1.8, 0.0]), atol=1e-6)


@pytest.mark.parametrize("library,form", [("learn2learn", "per_entry"),
                                          ("torchopt", "momentum"), ("higher", "momentum")])
def test_timing_functions_compute_metagrads_number(library, form):
    """The harness times what it says: each ``VARIANT_CASES`` function gives metagrad's MAML
    meta-gradient for that variant (float64 tanh sinusoid net, K = 2)."""
    module = adapter(library)
    from metagrad_bench.peers.variants import VariantCase, metagrad_fn

    from metagrad.problems import make_problem as problem_of

    case = VariantCase("t", form, 2, 0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = module.VARIANT_CASES[form](problem_of("sinusoid_small", meta_batch=3), case)
    ours = metagrad_fn(case)(problem_of("sinusoid_small", meta_batch=3))
    a = torch.cat([t.reshape(-1) for t in theirs])
    b = torch.cat([t.reshape(-1) for t in ours])
    assert rel(a, b) <= 1e-9


@pytest.mark.parametrize("library", ["learn2learn", "torchopt", "higher"])
def test_a_variant_the_library_does_not_run_is_said(library):
    module = adapter(library)
    params, tasks = make_problem()
    per_step = {k: torch.full((STEPS, *v.shape), LR, dtype=DT) for k, v in params.items()}
    with pytest.raises(NotImplementedError):
        module.AUDIT_TARGETS["maml"](steps=STEPS, inner_lr=per_step)(loss, params, tasks)
