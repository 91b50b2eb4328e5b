"""The wrong inner-loop variants that meta-learning code ships, with their rate-gradients,
computed exactly: what a buggy (or differently defined) Meta-SGD, MAML++, momentum or Adam
inner loop returns.

One family function, :func:`unrolled`, whose keyword options switch on one deviation at a
time (or several at once); with no option it is the textbook variant of
:mod:`metagrad_reference.inner_loops` (MAML, first-order MAML, Reptile or the penalty method
with learned rates ``rates`` and the update rule ``rule``). Per task, θ ∈ Rᵈ flattened in the
layout's order, K = ``steps``:

    g_k = ∇L_tr(φ⁽ᵏ⁾),   φ⁽ᵏ⁺¹⁾ = φ⁽ᵏ⁾ − a_k ⊙ u_k,   φ⁽⁰⁾ = θ,

a_k the rate vector the code uses at step k and u_k the rule's direction (plain gradient
descent u = g; heavy ball b' = βb + g, u = b'; Nesterov u = g + βb'; Adam
u = m̂/(√v̂ + ε), Kingma & Ba 2015, Alg. 1). The deviations:

* ``rate_shift`` = s: step k uses the rate of step k − s, a_k = α_{(k−s) mod K} (code that
  indexes per-step rates one step late, ``rates[k - 1]``, reads the last one on the first
  step as Python does);
* ``kind``: another rule than the one claimed ("momentum" for a Nesterov loop written as the
  heavy ball, "nesterov" for the reverse);
* ``ema``: momentum as an exponential moving average, b' = βb + (1 − β)g;
* ``bias_correction=False``: Adam's u = m/(√v + ε), no 1 − βᵗ corrections;
* ``bias_float32``: Adam's corrections 1 − β₁ᵗ and 1 − β₂ᵗ computed in float32 (β rounded to
  float32 first: 1 − β₂ is then off by about 1e-5, relative), the rest in float64;
* ``eps_outside``: Adam in the "efficient" form of Kingma & Ba 2015, §2,
  u = (√(1 − β₂ᵗ)/(1 − β₁ᵗ)) m/(√v + ε), i.e. ε/√(1 − β₂ᵗ) in place of ε;
* ``start``: the rule's state at the start of the task (momentum buffer, Adam's moments and
  step count) and its derivative, instead of zero: :func:`meta_batch` with ``carry`` passes
  each task's final state to the next (the state not reset per task), its derivative kept
  (``"differentiated"``: one backward through the mean loss) or dropped (``"detached"``);
* ``graph``: which inner gradients are differentiated, ``"all"`` (MAML), ``"none"``
  (first-order MAML), ``"first"`` (step 0 only); ``detached``: a 0/1 mask over θ's
  coordinates whose inner gradient is a constant at every step;
* ``rate_graph="none"``: the rate-gradient with every inner gradient held constant (the
  first-order form −Σₖ uₖ ⊙ ∇L_val(φ) of Li et al. 2017), the meta-gradient as ``graph``;
* what is done to the rate-gradient ∂F/∂α_kj at the end: ``rate_entries="mean"`` (the mean
  over the entries a rate covers, not the sum), ``rate_steps="summed"`` (a per-step rate
  given the sum over all steps), ``rate_scale`` (−1: the sign, 0: the rates detached).

Outputs, as in :mod:`metagrad_reference.inner_loops`: ``"maml"`` F = Σ w_k L_val(φ⁽ᵏ⁾) (the
last step alone without ``weights``), gᵢ = ∂F/∂θ and the rate-gradient ∂F/∂rates;
``"penalty"`` gᵢ = ∇L_val(φ) + c·λH(φ)∇L_tr(φ) with the first-order rate-gradient
(∂φ/∂α)ᵀgᵢ; ``"displacement"`` gᵢ = θ − φ⁽ᴷ⁻ʳ⁾, no rate-gradient.

The derivatives are forward-accumulated dense Jacobians with respect to
z = (θ, α_0, …, α_{K−1}) (each α_k ∈ Rᵈ), written out step by step here, independently of
:mod:`metagrad_reference.inner_loops`; gradients and Hessians come from :mod:`.dense` through
a :class:`metagrad_reference.variants.Memo`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .flat import FlatLoss
from .inner_loops import Rule
from .rates import Layout, Rates, parse, rate_vectors
from .variants import Memo

__all__ = ["ACCEPTS", "Start", "TaskValue", "meta_batch", "rate_reduce", "unrolled"]

GD = Rule()
"""Plain gradient descent, the default rule."""

ACCEPTS = frozenset({
    "output", "graph", "detached", "read_back", "penalty_factor", "rate_graph", "rate_shift",
    "kind", "ema", "bias_correction", "bias_float32", "eps_outside", "rate_entries",
    "rate_steps", "rate_scale", "carry"})
"""The options :func:`unrolled` and :func:`meta_batch` take (a deviation is one of them)."""

State = dict[str, Tensor]


@dataclass
class Start:
    """The rule's state at the start of a task, its derivative with respect to z and Adam's
    step count so far (all zero in a correct inner loop)."""

    state: State
    tangents: State
    t: int = 0


@dataclass
class TaskValue:
    """One task's gᵢ, its rate-gradient (flat, in the rates' order; empty without learned
    rates) and the rule's state at the end (for the next task, when it is carried)."""

    grad: Tensor
    rate: Tensor
    end: Start
    per_step: Tensor = field(default_factory=lambda: torch.zeros(0))
    """∂F/∂α_kj, shape (K, d), before the reduction to the rate tensors."""


def _names(kind: str) -> tuple[str, ...]:
    return {"gd": (), "momentum": ("b",), "nesterov": ("b",), "adam": ("m", "v")}[kind]


def zero_start(rule: Rule, theta: Tensor, width: int) -> Start:
    """A fresh state: zeros, zero derivative, step count 0."""
    names = _names(rule.kind)
    return Start({n: torch.zeros_like(theta) for n in names},
                 {n: theta.new_zeros(theta.numel(), width) for n in names})


def _float32_correction(beta: float, t: int) -> float:
    """1 − βᵗ as float32 arithmetic gives it: β rounded to float32, the power and the
    difference in float32."""
    b = torch.tensor(beta, dtype=torch.float32)
    return float(1 - torch.pow(b, torch.tensor(t, dtype=torch.int64)))


def _adam(rule: Rule, state: State, tangents: State, g: Tensor, dg: Tensor, t: int,
          bias_correction: bool, bias_float32: bool, eps_outside: bool
          ) -> tuple[Tensor, Tensor, State, State]:
    """Adam's u, ∂u/∂z and the new state and its derivative. With s, q, e as below,
    u = s·m' / (√(v'/q) + e): the textbook s = 1/c₁, q = c₂; no bias correction s = q = 1;
    ε outside the correction s = √c₂/c₁, q = 1 (c = 1 − βᵗ)."""
    m = rule.beta1 * state["m"] + (1 - rule.beta1) * g
    v = rule.beta2 * state["v"] + (1 - rule.beta2) * g * g
    dm = rule.beta1 * tangents["m"] + (1 - rule.beta1) * dg
    dv = rule.beta2 * tangents["v"] + 2 * (1 - rule.beta2) * g[:, None] * dg
    if not bias_correction:
        c1 = c2 = 1.0
    elif bias_float32:
        c1, c2 = _float32_correction(rule.beta1, t), _float32_correction(rule.beta2, t)
    else:
        c1, c2 = 1 - rule.beta1 ** t, 1 - rule.beta2 ** t
    s, q = ((c2 ** 0.5) / c1, 1.0) if eps_outside else (1 / c1, c2)
    root = (v / q).sqrt()
    u = s * m / (root + rule.eps)
    # ∂u/∂m' = s/(r + ε); ∂u/∂v' = −s·m'/(r + ε)² · 1/(2q·r), taken as 0 where v' = 0 (there
    # m' = 0 too: the exact derivative's value, see metagrad_reference.inner_loops)
    d_root = torch.where(v > 0, 1 / (2 * q * torch.where(v > 0, root, 1.0)), 0.0)
    du = (s / (root + rule.eps))[:, None] * dm \
        + (-s * m / (root + rule.eps) ** 2 * d_root)[:, None] * dv
    return u, du, {"m": m, "v": v}, {"m": dm, "v": dv}


def _direction(rule: Rule, kind: str, ema: bool, state: State, tangents: State, g: Tensor,
               dg: Tensor, t: int, adam: dict[str, bool]) -> tuple[Tensor, Tensor, State, State]:
    """u_k, ∂u_k/∂z, the new state and its ∂/∂z (β is a constant here)."""
    if kind == "gd":
        return g, dg, state, tangents
    if kind in ("momentum", "nesterov"):
        beta = float(rule.beta)
        w = (1 - beta) if ema else 1.0
        b = beta * state["b"] + w * g
        db = beta * tangents["b"] + w * dg
        if kind == "momentum":
            return b, db, {"b": b}, {"b": db}
        return g + beta * b, dg + beta * db, {"b": b}, {"b": db}
    return _adam(rule, state, tangents, g, dg, t, **adam)


def rate_reduce(layout: Layout, theta: Tensor, steps: int, rates: Rates, per_step: Tensor, *,
                rate_entries: str = "sum", rate_steps: str = "own",
                rate_scale: float = 1.0) -> Tensor:
    """∂F/∂rates from ``per_step[k, j]`` = ∂F/∂α_kj, flat in the rates' order (each tensor
    reshaped): the sum over the steps and entries a rate covers (Li et al. 2017), or with
    ``rate_entries="mean"`` the mean over the entries (the sum over the steps),
    ``rate_steps="summed"`` every step of a per-step rate given the sum over all steps, then
    multiplied by ``rate_scale``. Empty for a float (nothing learned)."""
    if rate_entries not in ("sum", "mean") or rate_steps not in ("own", "summed"):
        raise ValueError(f"unknown reduction rate_entries={rate_entries!r}, "
                         f"rate_steps={rate_steps!r}")
    parsed = parse(layout, theta, steps, rates)
    if isinstance(parsed, float):
        return theta.new_zeros(0)
    mean = rate_entries == "mean"
    if isinstance(rates, Tensor):  # one rate for every entry of every adapted tensor
        covered = sum(s.block.stop - s.block.start for s in parsed)
        total = per_step.sum() / (covered if mean else 1)
        return (rate_scale * total).reshape(1)
    pieces = []
    for spec in parsed:
        block = per_step[:, spec.block.start:spec.block.stop]  # (K, n)
        n = block.shape[1]
        if spec.form == "tensor":
            out = block.sum() / (n if mean else 1)
        elif spec.form == "entry":
            out = block.sum(0)
        else:
            per = block if spec.form == "step_entry" else block.sum(1, keepdim=True) / (
                n if mean else 1)
            if rate_steps == "summed":
                per = per.sum(0, keepdim=True).expand_as(per)
            out = per
        pieces.append(rate_scale * out.reshape(-1))
    return torch.cat(pieces) if pieces else theta.new_zeros(0)


def unrolled(f: FlatLoss | Memo, theta: Tensor, layout: Layout, train: Any, val: Any, *,
             steps: int, rates: Rates, rule: Rule = GD,
             weights: Sequence[float] | None = None, output: str = "maml",
             graph: str = "all", detached: Tensor | None = None, read_back: int = 0,
             penalty_factor: float = 2.0, lam: float = 0.0, rate_graph: str | None = None,
             rate_shift: int = 0, kind: str | None = None, ema: bool = False,
             bias_correction: bool = True, bias_float32: bool = False,
             eps_outside: bool = False, start: Start | None = None,
             rate_entries: str = "sum", rate_steps: str = "own", rate_scale: float = 1.0,
             **_: Any) -> TaskValue:
    """One task's gᵢ and rate-gradient of the family (module docstring)."""
    memo = f if isinstance(f, Memo) else Memo(f)
    if graph not in ("all", "none", "first") or rate_graph not in (None, "all", "none"):
        raise ValueError(f"unknown graph={graph!r} / rate_graph={rate_graph!r}")
    if output not in ("maml", "penalty", "displacement"):
        raise ValueError(f"unknown output {output!r}")
    kind = kind or rule.kind
    d = theta.numel()
    width = d * (steps + 1)
    start = start or zero_start(rule, theta, width)
    alphas = rate_vectors(layout, theta, steps, rates)
    keep = (torch.ones_like(theta) if detached is None
            else 1.0 - detached.to(theta.dtype))[:, None]
    jac = theta.new_zeros(d, width)
    jac[:, :d] = torch.eye(d, dtype=theta.dtype, device=theta.device)
    state, tangents = dict(start.state), dict(start.tangents)
    phi, points, jacobians = theta, [theta], [jac]
    adam = {"bias_correction": bias_correction, "bias_float32": bias_float32,
            "eps_outside": eps_outside}
    for k in range(steps):
        g = memo.gradient(phi, train)
        differentiated = graph == "all" or (graph == "first" and k == 0)
        dg = keep * (memo.hessian(phi, train) @ jac) if differentiated else \
            theta.new_zeros(d, width)
        if rate_graph is not None:  # the rate columns differentiated on their own terms
            if rate_graph == "none":
                dg[:, d:] = 0.0
            elif not differentiated:
                dg[:, d:] = (keep * (memo.hessian(phi, train) @ jac))[:, d:]
        u, du, state, tangents = _direction(rule, kind, ema, state, tangents, g, dg,
                                            start.t + k + 1, adam)
        slot = (k - rate_shift) % steps
        a = alphas[slot]
        # φ' = φ − a ⊙ u:  ∂φ' = ∂φ − diag(a) ∂u − diag(u) ∂a/∂z, ∂a/∂z = I on a's columns
        jac = jac - a[:, None] * du
        columns = slice(d * (slot + 1), d * (slot + 2))
        jac[:, columns] = jac[:, columns] - torch.diag(u)
        phi = phi - a * u
        points.append(phi)
        jacobians.append(jac)
    end = Start(state, tangents, start.t + steps)

    def reduce(per_step: Tensor) -> Tensor:
        return rate_reduce(layout, theta, steps, rates, per_step, rate_entries=rate_entries,
                           rate_steps=rate_steps, rate_scale=rate_scale)

    if output == "displacement":
        if read_back > steps:
            raise ValueError(f"read_back={read_back} > steps={steps}")
        return TaskValue(theta - points[steps - read_back], theta.new_zeros(0), end)
    if output == "penalty":
        phi = points[-1]
        g_out = memo.gradient(phi, val) + penalty_factor * lam * (
            memo.hessian(phi, train) @ memo.gradient(phi, train))
        per_step = (jacobians[-1][:, d:].T @ g_out).reshape(steps, d)
        return TaskValue(g_out, reduce(per_step), end, per_step)
    terms = [(steps, 1.0)] if weights is None else [(k + 1, float(w))
                                                    for k, w in enumerate(weights)]
    if weights is not None and len(terms) != steps:
        raise ValueError(f"{len(terms)} weights for {steps} steps")
    dz = theta.new_zeros(width)
    for k, w in terms:
        dz = dz + w * (jacobians[k].T @ memo.gradient(points[k], val))
    per_step = dz[d:].reshape(steps, d)
    return TaskValue(dz[:d], reduce(per_step), end, per_step)


def meta_batch(f: FlatLoss | Memo, theta: Tensor, layout: Layout,
               tasks: Sequence[tuple[Any, Any]], *, carry: str = "none",
               **options: Any) -> tuple[Tensor, Tensor]:
    """The mean over ``tasks`` (in order) of :func:`unrolled`'s gᵢ and rate-gradient.
    ``carry``: ``"none"`` (every task starts from a zero state, the textbook loop),
    ``"detached"`` or ``"differentiated"`` (each task starts from the previous task's final
    state, with or without its derivative: the state not reset per task)."""
    if carry not in ("none", "detached", "differentiated"):
        raise ValueError(f"unknown carry {carry!r}")
    memo = f if isinstance(f, Memo) else Memo(f)
    start: Start | None = None
    grads, rates = [], []
    for train, val in tasks:
        value = unrolled(memo, theta, layout, train, val, start=start, **options)
        grads.append(value.grad)
        rates.append(value.rate)
        if carry != "none":
            end = value.end
            tangents = end.tangents if carry == "differentiated" else {
                n: torch.zeros_like(t) for n, t in end.tangents.items()}
            start = Start(end.state, tangents, end.t)
    if not grads:
        raise ValueError("no tasks")
    return torch.stack(grads).mean(0), torch.stack(rates).mean(0)
