"""The inner loops people meta-learn, exactly: learned step sizes, partial adaptation,
momentum and Adam inner loops, MAML++'s multi-step loss.

Per task, θ ∈ Rᵈ is flattened in the layout's order and the inner loop runs K = ``steps``
steps from φ⁽⁰⁾ = θ with the optimizer state at zero:

    g_k = ∇L_tr(φ⁽ᵏ⁾)               (+ λ(φ⁽ᵏ⁾ − θ) for the implicit methods' proximal problem)
    φ⁽ᵏ⁺¹⁾ = φ⁽ᵏ⁾ − α_k ⊙ u_k

with α_k ∈ Rᵈ from ``rates`` (:mod:`metagrad_reference.rates`: one rate, per tensor, per
entry as in Meta-SGD (Li et al. 2017), per step as in MAML++ (Antoniou et al. 2019); 0 on
parameters that are not adapted, as in ANIL (Raghu et al. 2020)) and the update direction
u_k from the :class:`Rule`:

* ``gd``: u_k = g_k (Finn et al. 2017, eq. 1).
* ``momentum``, heavy ball (Polyak 1964) in PyTorch's SGD convention, no dampening:
  b_{k+1} = β b_k + g_k, u_k = b_{k+1}.
* ``nesterov``, PyTorch's form (Sutskever et al. 2013): b_{k+1} = β b_k + g_k,
  u_k = g_k + β b_{k+1}.
* ``adam`` (Kingma & Ba 2015, Alg. 1, bias-corrected, t = k + 1):
  m_{k+1} = β₁ m_k + (1 − β₁) g_k, v_{k+1} = β₂ v_k + (1 − β₂) g_k ⊙ g_k,
  m̂ = m_{k+1}/(1 − β₁ᵗ), v̂ = v_{k+1}/(1 − β₂ᵗ), u_k = m̂ / (√v̂ + ε).

The methods and what each returns per task (:class:`LearnedResult`):

* MAML: F(θ, α, β) = L_val(φ⁽ᴷ⁾), or MAML++'s multi-step loss (Antoniou et al. 2019, §4)
  F = Σ_{k=1..K} w_k L_val(φ⁽ᵏ⁾). ``grad`` = ∂F/∂θ, ``hyper_grad["inner_lr"]`` = ∂F/∂rates,
  ``hyper_grad["beta"]`` = ∂F/∂β, all exact through every step.
* FOMAML (Finn et al. 2017, §5.2) and Penalty (Mehra & Hamm 2021): every g_k is a constant.
  ``grad`` = gᵢ: ∇L_val(φ) or ∇L_val(φ) + 2λH(φ)∇L_tr(φ) (H = ∇²L_tr); the hyper-gradients
  are (∂φ⁽ᴷ⁾/∂(α, β) with the g_k held constant)ᵀ gᵢ, e.g. −u_k ⊙ gᵢ for α_k.
* Reptile (Nichol et al. 2018): ``grad`` = θ − φ⁽ᴷ⁾, no hyper-gradient.
* iMAML (Rajeswaran et al. 2019) and Neumann (Lorraine et al. 2020): φ from the proximal loop
  with the given rule and rates (every parameter adapted), then (I + H(φ)/λ) x = ∇L_val(φ)
  by m CG iterations or the truncated Neumann sum. No hyper-gradient: the implicit gradient
  does not depend on the inner optimizer or its rates.

How the exact derivatives are computed (independently of reverse mode through the loop):
forward accumulation of dense Jacobians with respect to z = (θ, α_0, …, α_{K−1}, β). The
loop carries ∂φ⁽ᵏ⁾/∂z and the rule state's ∂/∂z as d × (d + Kd + 1) matrices; the chain rule
of each step is written out in :func:`_direction_tangent` and :func:`_unroll`, with
∂g_k/∂z = H(φ⁽ᵏ⁾) ∂φ⁽ᵏ⁾/∂z from dense Hessians (or 0 for the first-order methods). Then
∂F/∂z = Σ_k w_k (∂φ⁽ᵏ⁾/∂z)ᵀ ∇L_val(φ⁽ᵏ⁾).

Adam where v̂ = 0 exactly (an entry whose gradient has been exactly zero at every step so
far): there m̂ = 0 too and u = m̂/(√v̂ + ε) is differentiable in the gradients with
∂u_k/∂g_i = (1/ε) ∂m̂/∂g_i (the correction −m̂√v̂/(ε(√v̂ + ε)) is second order, and the
derivative at nearby points, ε/(√v̂ + ε)² · ∂m̂/∂g_i, tends to it). The Jacobian here takes
the derivative of √ at 0 as 0, which gives exactly this limit (the √v̂ term is multiplied by
m̂ = 0 and ∂v is 0 there anyway); naive reverse mode gives 0 · ∞ = NaN at such an entry.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from . import dense
from .flat import FlatLoss
from .rates import Layout, Rates, rate_gradient, rate_vectors, unadapted

__all__ = ["KINDS", "LEARNED_METHODS", "LearnedResult", "Rule", "fomaml", "imaml", "maml",
           "maml_objective", "meta_batch", "neumann", "penalty", "rate_vectors", "reptile",
           "trajectory"]

KINDS = ("gd", "momentum", "nesterov", "adam")


@dataclass(frozen=True)
class Rule:
    """The inner optimizer: its kind and hyperparameters (see the module docstring).

    ``beta`` is the momentum / Nesterov coefficient; as a 0-dim tensor it is learnable and
    MAML, FOMAML and Penalty return its derivative as ``hyper_grad["beta"]``.
    ``beta1``, ``beta2`` and ``eps`` are Adam's.
    """

    kind: str = "gd"
    beta: float | Tensor = 0.9
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown inner rule kind {self.kind!r}; one of {KINDS}")
        if isinstance(self.beta, Tensor):
            if self.beta.dim() != 0:
                raise ValueError(f"beta as a tensor must be 0-dim, got shape "
                                 f"{tuple(self.beta.shape)}")
        elif not isinstance(self.beta, int | float) or isinstance(self.beta, bool):
            raise ValueError(f"beta must be a float or a 0-dim tensor, got {self.beta!r}")
        if not (0.0 <= self.beta1 < 1.0 and 0.0 <= self.beta2 < 1.0):
            raise ValueError(f"Adam needs 0 <= beta1, beta2 < 1, got beta1={self.beta1}, "
                             f"beta2={self.beta2}")
        if not self.eps > 0:
            raise ValueError(f"Adam needs eps > 0, got eps={self.eps}")

    @property
    def learns_beta(self) -> bool:
        """Whether β is a learnable 0-dim tensor of a rule that uses it."""
        return self.kind in ("momentum", "nesterov") and isinstance(self.beta, Tensor)


@dataclass
class LearnedResult:
    """One task's (or, from :func:`meta_batch`, the mean) result of a method."""

    grad: Tensor
    """gᵢ, flat (d,)."""
    pre_update_loss: Tensor
    """L_tr(θ)."""
    post_update_loss: Tensor
    """L_val(φ⁽ᴷ⁾)."""
    hyper_grad: dict[str, Any]
    """``{"inner_lr": Tensor | dict[str, Tensor], "beta": Tensor}``, only the learnable ones."""


# --- one step of each rule: values and their derivatives -----------------------------------

State = dict[str, Tensor]


def _initial_state(rule: Rule, theta: Tensor) -> State:
    names = {"gd": (), "momentum": ("b",), "nesterov": ("b",), "adam": ("m", "v")}[rule.kind]
    return {name: torch.zeros_like(theta) for name in names}


def _beta(rule: Rule, theta: Tensor) -> Tensor:
    return torch.as_tensor(rule.beta, dtype=theta.dtype, device=theta.device).detach()


def _direction(rule: Rule, beta: Tensor, state: State, g: Tensor, t: int) -> tuple[Tensor, State]:
    """u_k and the new state from g_k and the old state, step t = k + 1."""
    if rule.kind == "gd":
        return g, state
    if rule.kind in ("momentum", "nesterov"):
        b = beta * state["b"] + g
        return (b if rule.kind == "momentum" else g + beta * b), {"b": b}
    m = rule.beta1 * state["m"] + (1 - rule.beta1) * g
    v = rule.beta2 * state["v"] + (1 - rule.beta2) * g * g
    m_hat = m / (1 - rule.beta1 ** t)
    v_hat = v / (1 - rule.beta2 ** t)
    return m_hat / (v_hat.sqrt() + rule.eps), {"m": m, "v": v}


def _direction_tangent(rule: Rule, beta: Tensor, state: State, new_state: State,
                       tangents: State, g: Tensor, dg: Tensor, t: int,
                       e_beta: Tensor) -> tuple[Tensor, State]:
    """∂u_k/∂z and the new state's ∂/∂z (d × p matrices), from dg = ∂g_k/∂z, the old state's
    ``tangents`` and e_β = ∂β/∂z (a unit row)."""
    if rule.kind == "gd":  # u = g
        return dg, tangents
    if rule.kind in ("momentum", "nesterov"):
        # b' = βb + g:  ∂b' = β ∂b + ∂g + b e_βᵀ
        db = beta * tangents["b"] + dg + torch.outer(state["b"], e_beta)
        if rule.kind == "momentum":  # u = b'
            return db, {"b": db}
        # u = g + βb':  ∂u = ∂g + β ∂b' + b' e_βᵀ
        return dg + beta * db + torch.outer(new_state["b"], e_beta), {"b": db}
    # Adam. m' = β₁m + (1 − β₁)g:  ∂m' = β₁ ∂m + (1 − β₁) ∂g
    #       v' = β₂v + (1 − β₂)g²: ∂v' = β₂ ∂v + 2(1 − β₂) diag(g) ∂g
    dm = rule.beta1 * tangents["m"] + (1 - rule.beta1) * dg
    dv = rule.beta2 * tangents["v"] + 2 * (1 - rule.beta2) * g[:, None] * dg
    # u = (m'/c₁) / (√(v'/c₂) + ε), c₁ = 1 − β₁ᵗ, c₂ = 1 − β₂ᵗ:
    #   ∂u/∂m' = 1 / (c₁(√v̂ + ε))
    #   ∂u/∂v' = −m̂/(√v̂ + ε)² · ∂√v̂/∂v',  ∂√v̂/∂v' = 1/(2c₂√v̂), taken as 0 where v̂ = 0
    #   (see the module docstring: that is the exact derivative's value there)
    c1, c2 = 1 - rule.beta1 ** t, 1 - rule.beta2 ** t
    m_hat, v_hat = new_state["m"] / c1, new_state["v"] / c2
    root = v_hat.sqrt()
    d_root = torch.where(v_hat > 0, 1 / (2 * c2 * torch.where(v_hat > 0, root, 1.0)), 0.0)
    du_dm = 1 / (c1 * (root + rule.eps))
    du_dv = -m_hat / (root + rule.eps) ** 2 * d_root
    return du_dm[:, None] * dm + du_dv[:, None] * dv, {"m": dm, "v": dv}


@dataclass
class _Unrolled:
    points: list[Tensor]
    """φ⁽⁰⁾ … φ⁽ᴷ⁾."""
    jacobians: list[Tensor]
    """∂φ⁽ᵏ⁾/∂z, z = (θ, α_0, …, α_{K−1}, β), k = 0 … K (empty without derivatives)."""


def _unroll(f: FlatLoss, theta: Tensor, batch: Any, alphas: Sequence[Tensor], rule: Rule,
            beta: Tensor, *, lam: float | None = None,
            derivatives: str | None = None) -> _Unrolled:
    """The inner loop; with ``derivatives`` = "exact" (∂g_k/∂z = H(φ⁽ᵏ⁾) ∂φ⁽ᵏ⁾/∂z) or
    "first_order" (∂g_k/∂z = 0: the gradients held constant) also its Jacobians."""
    if derivatives is not None and lam is not None:
        raise ValueError("the proximal loop is not differentiated here")
    d, steps = theta.numel(), len(alphas)
    width = d * (steps + 1) + 1
    jacobian = theta.new_zeros(d, width)
    jacobian[:, :d] = torch.eye(d, dtype=theta.dtype, device=theta.device)  # ∂θ/∂z
    e_beta = theta.new_zeros(width)
    e_beta[-1] = 1.0
    state = _initial_state(rule, theta)
    tangents = {name: theta.new_zeros(d, width) for name in state}
    phi = theta
    out = _Unrolled([theta], [jacobian] if derivatives else [])
    for k, alpha in enumerate(alphas):
        g = dense.gradient(f, phi, batch)
        if lam is not None:
            g = g + lam * (phi - theta)
        u, new_state = _direction(rule, beta, state, g, k + 1)
        if derivatives:
            if derivatives == "exact":
                dg = dense.hessian(f, phi, batch) @ jacobian
            else:
                dg = theta.new_zeros(d, width)
            du, tangents = _direction_tangent(rule, beta, state, new_state, tangents, g, dg,
                                              k + 1, e_beta)
            # φ' = φ − α_k ⊙ u:  ∂φ' = ∂φ − diag(α_k) ∂u − diag(u) ∂α_k/∂z,
            # where ∂α_k/∂z is the identity on α_k's columns and 0 elsewhere.
            jacobian = jacobian - alpha[:, None] * du
            columns = slice(d * (k + 1), d * (k + 2))
            jacobian[:, columns] = jacobian[:, columns] - torch.diag(u)
            out.jacobians.append(jacobian)
        phi = phi - alpha * u
        state = new_state
        out.points.append(phi)
    return out


# --- the public functions -----------------------------------------------------------------

def trajectory(f: FlatLoss, theta: Tensor, layout: Layout, batch: Any, *, steps: int,
               rates: Rates, rule: Rule = Rule(), lam: float | None = None) -> list[Tensor]:
    """φ⁽⁰⁾ … φ⁽ᴷ⁾ of φ⁽ᵏ⁺¹⁾ = φ⁽ᵏ⁾ − α_k ⊙ u_k (with the proximal term λ(φ⁽ᵏ⁾ − θ) added to
    g_k when ``lam`` is given: Rajeswaran et al. 2019, eq. 4).

    Parameters
    ----------
    f : FlatLoss
        ``f(theta, batch)``, e.g. from :func:`metagrad_reference.flat_loss`.
    theta : Tensor
        Flat θ.
    layout : sequence of (name, shape)
        The parameters in θ's order.
    batch : Any
        The training batch.
    steps, rates, rule, lam
        K, the step sizes (:mod:`metagrad_reference.rates`), the :class:`Rule`, the proximal λ.

    Returns
    -------
    list of Tensor
        K + 1 flat points, the first θ itself.
    """
    alphas = rate_vectors(layout, theta, steps, rates)
    return _unroll(f, theta, batch, alphas, rule, _beta(rule, theta), lam=lam).points


def _loss_terms(weights: Sequence[float] | Tensor | None, steps: int) -> list[tuple[int, float]]:
    """(k, w_k) of F = Σ w_k L_val(φ⁽ᵏ⁾): (K, 1) alone without weights."""
    if weights is None:
        return [(steps, 1.0)]
    w = [float(x) for x in weights]
    if len(w) != steps or steps == 0:
        raise ValueError(f"weights need one entry per inner step (steps={steps} >= 1), "
                         f"got {len(w)}")
    return [(k + 1, wk) for k, wk in enumerate(w)]


def _hyper_grad(layout: Layout, theta: Tensor, steps: int, rates: Rates, rule: Rule,
                dz: Tensor) -> dict[str, Any]:
    """Split ∂F/∂z = (θ, α_0 … α_{K−1}, β) into the learnable hyper-gradients."""
    d = theta.numel()
    out: dict[str, Any] = {}
    inner_lr = rate_gradient(layout, theta, steps, rates, dz[d:d * (steps + 1)].reshape(steps, d))
    if inner_lr is not None:
        out["inner_lr"] = inner_lr
    if rule.learns_beta:
        out["beta"] = dz[-1]
    return out


def maml(f: FlatLoss, theta: Tensor, layout: Layout, train: Any, val: Any, *, steps: int,
         rates: Rates, rule: Rule = Rule(),
         weights: Sequence[float] | Tensor | None = None) -> LearnedResult:
    """MAML's exact gradients of F = L_val(φ⁽ᴷ⁾) (Finn et al. 2017, eq. 1-2) or of MAML++'s
    F = Σ_{k=1..K} w_k L_val(φ⁽ᵏ⁾) (Antoniou et al. 2019, §4) in θ, the rates and β.

    Parameters
    ----------
    f, theta, layout
        The flat loss, flat θ and its layout, as for :func:`trajectory`.
    train, val : Any
        The task's batches.
    steps, rates, rule
        K, the step sizes (:mod:`metagrad_reference.rates`) and the :class:`Rule`.
    weights : sequence of K floats, optional
        w_1 … w_K of the multi-step loss; None for F = L_val(φ⁽ᴷ⁾).

    Returns
    -------
    LearnedResult
        ``grad`` = ∂F/∂θ; ``hyper_grad["inner_lr"]`` = ∂F/∂rates (a 0-dim tensor or dict
        ``rates`` only), ``hyper_grad["beta"]`` = ∂F/∂β (a 0-dim tensor β of momentum /
        Nesterov only); ``post_update_loss`` = L_val(φ⁽ᴷ⁾) whatever the weights.
    """
    terms = _loss_terms(weights, steps)
    alphas = rate_vectors(layout, theta, steps, rates)
    run = _unroll(f, theta, train, alphas, rule, _beta(rule, theta), derivatives="exact")
    dz = theta.new_zeros(run.jacobians[0].shape[1])
    for k, wk in terms:  # ∂F/∂z = Σ_k w_k (∂φ⁽ᵏ⁾/∂z)ᵀ ∇L_val(φ⁽ᵏ⁾)
        dz = dz + wk * (run.jacobians[k].T @ dense.gradient(f, run.points[k], val))
    return LearnedResult(dz[:theta.numel()], dense.value(f, theta, train),
                         dense.value(f, run.points[-1], val),
                         _hyper_grad(layout, theta, steps, rates, rule, dz))


def _first_order(f: FlatLoss, theta: Tensor, layout: Layout, train: Any, val: Any,
                 steps: int, rates: Rates, rule: Rule,
                 direction: Callable[[Tensor], Tensor]) -> LearnedResult:
    """gᵢ = direction(φ⁽ᴷ⁾) and (∂φ⁽ᴷ⁾/∂(α, β) with every g_k constant)ᵀ gᵢ."""
    alphas = rate_vectors(layout, theta, steps, rates)
    run = _unroll(f, theta, train, alphas, rule, _beta(rule, theta), derivatives="first_order")
    phi = run.points[-1]
    g = direction(phi)
    return LearnedResult(g, dense.value(f, theta, train), dense.value(f, phi, val),
                         _hyper_grad(layout, theta, steps, rates, rule, run.jacobians[-1].T @ g))


def fomaml(f: FlatLoss, theta: Tensor, layout: Layout, train: Any, val: Any, *, steps: int,
           rates: Rates, rule: Rule = Rule()) -> LearnedResult:
    """gᵢ = ∇L_val(φ⁽ᴷ⁾) (Finn et al. 2017, §5.2); the hyper-gradients with every g_k held
    constant: ∂/∂α_k = −u_k ⊙ gᵢ reduced to each rate tensor, and the β analogue."""
    return _first_order(f, theta, layout, train, val, steps, rates, rule,
                        lambda phi: dense.gradient(f, phi, val))


def penalty(f: FlatLoss, theta: Tensor, layout: Layout, train: Any, val: Any, *, steps: int,
            rates: Rates, lam: float, rule: Rule = Rule()) -> LearnedResult:
    """gᵢ = ∇L_val(φ) + 2λ H(φ) ∇L_tr(φ), φ = φ⁽ᴷ⁾, the penalty on all parameters
    (Mehra & Hamm 2021); hyper-gradients first order, as :func:`fomaml`'s."""

    def direction(phi: Tensor) -> Tensor:
        return dense.gradient(f, phi, val) + 2 * lam * dense.hessian(f, phi, train) @ \
            dense.gradient(f, phi, train)

    return _first_order(f, theta, layout, train, val, steps, rates, rule, direction)


def reptile(f: FlatLoss, theta: Tensor, layout: Layout, train: Any, val: Any, *, steps: int,
            rates: Rates, rule: Rule = Rule()) -> LearnedResult:
    """gᵢ = θ − φ⁽ᴷ⁾ (Nichol et al. 2018, Alg. 1); no hyper-gradient."""
    points = trajectory(f, theta, layout, train, steps=steps, rates=rates, rule=rule)
    return LearnedResult(theta - points[-1], dense.value(f, theta, train),
                         dense.value(f, points[-1], val), {})


def _implicit_system(f: FlatLoss, theta: Tensor, layout: Layout, train: Any, val: Any,
                     steps: int, rates: Rates, lam: float,
                     rule: Rule) -> tuple[Tensor, Tensor, Tensor]:
    """φ from the proximal loop, A = I + H(φ)/λ, b = ∇L_val(φ) (Rajeswaran et al. 2019, eq. 7)."""
    missing = unadapted(layout, theta, steps, rates)
    if missing:
        raise ValueError(f"the implicit methods adapt every parameter; inner_lr leaves out "
                         f"{missing}")
    if not lam > 0:
        raise ValueError(f"the implicit methods need lam > 0, got lam={lam}")
    phi = trajectory(f, theta, layout, train, steps=steps, rates=rates, rule=rule, lam=lam)[-1]
    eye = torch.eye(theta.numel(), dtype=theta.dtype, device=theta.device)
    return phi, eye + dense.hessian(f, phi, train) / lam, dense.gradient(f, phi, val)


def imaml(f: FlatLoss, theta: Tensor, layout: Layout, train: Any, val: Any, *, steps: int,
          rates: Rates, lam: float, cg_iters: int, rule: Rule = Rule()) -> LearnedResult:
    """gᵢ = x_m, m = ``cg_iters`` CG iterations from 0 on (I + H(φ)/λ) x = ∇L_val(φ)
    (Rajeswaran et al. 2019, Alg. 2), φ from the proximal loop with the given rule and rates;
    the dense solve for m ≥ d. No hyper-gradient."""
    phi, A, b = _implicit_system(f, theta, layout, train, val, steps, rates, lam, rule)
    x = torch.linalg.solve(A, b) if cg_iters >= theta.numel() else \
        dense.conjugate_gradient(A, b, cg_iters)
    return LearnedResult(x, dense.value(f, theta, train), dense.value(f, phi, val), {})


def neumann(f: FlatLoss, theta: Tensor, layout: Layout, train: Any, val: Any, *, steps: int,
            rates: Rates, lam: float, terms: int, step: float = 1.0,
            rule: Rule = Rule()) -> LearnedResult:
    """gᵢ = η Σ_{j=0..J} (I − η(I + H(φ)/λ))ʲ ∇L_val(φ) (Lorraine et al. 2020, Alg. 2-3),
    φ from the proximal loop with the given rule and rates. No hyper-gradient."""
    phi, A, b = _implicit_system(f, theta, layout, train, val, steps, rates, lam, rule)
    return LearnedResult(dense.neumann_sum(A, b, terms, step), dense.value(f, theta, train),
                         dense.value(f, phi, val), {})


LEARNED_METHODS: dict[str, Callable[..., LearnedResult]] = {
    "maml": maml,
    "fomaml": fomaml,
    "reptile": reptile,
    "imaml": imaml,
    "neumann": neumann,
    "penalty": penalty,
}


def _mean(values: list[Any]) -> Any:
    if isinstance(values[0], dict):
        return {key: torch.stack([v[key] for v in values]).mean(0) for key in values[0]}
    return torch.stack(values).mean(0)


def meta_batch(fn: str | Callable[..., LearnedResult], f: FlatLoss, theta: Tensor,
               layout: Layout, tasks: Sequence[tuple[Any, Any]],
               **settings: Any) -> LearnedResult:
    """The mean over ``tasks`` (a list of ``(train, val)``) of ``grad``, both losses and every
    ``hyper_grad`` entry (per key for a dict of rates)."""
    method = LEARNED_METHODS[fn] if isinstance(fn, str) else fn
    outs = [method(f, theta, layout, train, val, **settings) for train, val in tasks]
    if not outs:
        raise ValueError("no tasks")
    return LearnedResult(
        _mean([o.grad for o in outs]),
        _mean([o.pre_update_loss for o in outs]),
        _mean([o.post_update_loss for o in outs]),
        {key: _mean([o.hyper_grad[key] for o in outs]) for key in outs[0].hyper_grad},
    )


def maml_objective(f: FlatLoss, layout: Layout, train: Any, val: Any, *, steps: int,
                   rule: Rule = Rule(), weights: Sequence[float] | Tensor | None = None
                   ) -> Callable[..., Tensor]:
    """``objective(theta, rates, beta=None)`` = F, MAML's objective (multi-step with
    ``weights``), the inner loop run by :func:`trajectory` (values only); ``beta`` replaces
    the rule's β. For central finite differences in θ, in each rate tensor and in β."""
    terms = _loss_terms(weights, steps)

    def objective(theta: Tensor, rates: Rates, beta: float | Tensor | None = None) -> Tensor:
        used = rule if beta is None else dataclasses.replace(rule, beta=beta)
        points = trajectory(f, theta, layout, train, steps=steps, rates=rates, rule=used)
        return sum(wk * dense.value(f, points[k], val) for k, wk in terms)  # type: ignore[return-value]

    return objective
