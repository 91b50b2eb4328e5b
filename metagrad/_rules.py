"""Inner-loop update rules (the ``inner=`` of every method): plain gradient descent, heavy-ball
and Nesterov momentum, Adam. Each is a small frozen object with the shape of an optax
gradient transformation: ``init(φ) -> state`` and ``update(φ, g, state, α, k, …) ->
(φ', state')``, pure functions of tensors, so that MAML differentiates through them, the
compiled path traces them and ``vmap`` batches them over tasks.

With gₖ = ∇L_tr(φ⁽ᵏ⁾) (plus λ(φ⁽ᵏ⁾ − θ) on the implicit methods' proximal problem) and the
step's rates αₖ (a number or tensors, see ``metagrad._rates``), step k is
φ⁽ᵏ⁺¹⁾ = φ⁽ᵏ⁾ − αₖ ⊙ uₖ with the rule's direction uₖ:

* :class:`GD`: uₖ = gₖ (Finn et al. 2017, eq. (1));
* :class:`Momentum`: bₖ₊₁ = β bₖ + gₖ, b₀ = 0, and uₖ = bₖ₊₁ (heavy ball, Polyak 1964) or,
  with ``nesterov=True``, uₖ = gₖ + β bₖ₊₁ (Sutskever et al. 2013), both as
  ``torch.optim.SGD`` writes them (no dampening);
* :class:`Adam`: mₖ₊₁ = β₁mₖ + (1 − β₁)gₖ, vₖ₊₁ = β₂vₖ + (1 − β₂)gₖ², t = k + 1,
  uₖ = m̂/(√v̂ + ε) with m̂ = mₖ₊₁/(1 − β₁ᵗ), v̂ = vₖ₊₁/(1 − β₂ᵗ) (Kingma & Ba 2015,
  Alg. 1; the state starts at zero in every task).

Momentum's β may be a 0-dim tensor: it is then a meta-parameter whose meta-gradient MAML
returns (``out.hyper_grad["beta"]``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ._pytree import Params
from ._validate import non_negative_float, positive_float

State = tuple[Params, ...]
"""A rule's per-task state: a tuple of dicts over the adapted parameters (empty for GD)."""
Rate = float | Tensor


def _step(phi: Tensor, rate: Rate, u: Tensor) -> Tensor:
    """φ − α ⊙ u: one fused call for a number α, ``addcmul`` for a tensor α."""
    if isinstance(rate, Tensor):
        return torch.addcmul(phi, rate, u, value=-1.0)
    return torch.add(phi, u, alpha=-rate)


def _rate(lr: Rate | Mapping[str, Rate], name: str) -> Rate:
    return lr[name] if isinstance(lr, Mapping) else lr


def _proximal(g: Params, phi: Params, theta: Params, lam: float | None) -> Params:
    """gₖ + λ(φ⁽ᵏ⁾ − θ): the gradient of the proximal inner problem."""
    if lam is None:
        return g
    return {k: torch.add(g[k], phi[k] - theta[k], alpha=lam) for k in g}


@dataclass(frozen=True)
class GD:
    """Plain gradient descent, uₖ = gₖ: no state (Finn et al. 2017, eq. (1))."""

    name: ClassVar[str] = "gd"
    monotone: ClassVar[bool] = True
    """Each step lowers an L-smooth loss when α·L < 2 (the descent lemma): the inner loop's
    check compares every iterate with the one before."""

    def init(self, phi: Params) -> State:
        return ()

    def hyper(self) -> dict[str, Tensor]:
        """The rule's hyperparameters given as tensors (meta-parameters): none."""
        return {}

    def update(self, phi: Params, g: Params, state: State, lr: Rate | Mapping[str, Rate], k: Any,
               theta: Params, lam: float | None, hyper: dict[str, Tensor] | None = None
               ) -> tuple[Params, State]:
        """``φ − α∇L(φ)``, or with ``lam`` the proximal step ``φ − α(∇L(φ) + λ(φ − θ))``;
        parameters without a gradient in ``g`` (not adapted) stay as they are."""
        out = dict(phi)
        for name in g:
            rate = _rate(lr, name)
            if lam is None:
                out[name] = _step(phi[name], rate, g[name])
            elif isinstance(rate, Tensor):
                out[name] = torch.addcmul(phi[name], rate,
                                          torch.add(g[name], phi[name] - theta[name], alpha=lam),
                                          value=-1.0)
            else:
                # φ − αλ(φ − θ) − α∇L = lerp(φ, θ, αλ) − α∇L: two fused passes instead of five.
                out[name] = torch.add(torch.lerp(phi[name], theta[name], rate * lam), g[name],
                                      alpha=-rate)
        return out, state


@dataclass(frozen=True)
class Momentum:
    """Heavy-ball momentum, bₖ₊₁ = β bₖ + gₖ, uₖ = bₖ₊₁ (Polyak 1964), or Nesterov's
    uₖ = gₖ + β bₖ₊₁ (Sutskever et al. 2013), with b₀ = 0 in every task, as
    ``torch.optim.SGD(momentum=β, nesterov=...)`` computes them.

    Parameters
    ----------
    beta : float or Tensor
        β ≥ 0; a 0-dim tensor makes it a meta-parameter (``out.hyper_grad["beta"]``).
    nesterov : bool
        Nesterov's form instead of the heavy ball.
    """

    beta: float | Tensor = 0.9
    nesterov: bool = False

    name: ClassVar[str] = "momentum"
    monotone: ClassVar[bool] = False
    """The loss may rise for a while on the way down: only the end is compared with θ."""

    def __post_init__(self) -> None:
        if isinstance(self.beta, Tensor):
            if self.beta.dim() != 0 or not self.beta.is_floating_point():
                raise ValueError(f"beta as a tensor must be a 0-dim floating tensor, got "
                                 f"{self.beta!r:.60}")
        else:
            object.__setattr__(self, "beta", non_negative_float("beta", self.beta))
        if not isinstance(self.nesterov, bool):
            raise TypeError(f"nesterov must be True or False, got {self.nesterov!r}")

    def init(self, phi: Params) -> State:
        return ({k: torch.zeros_like(v) for k, v in phi.items()},)

    def hyper(self) -> dict[str, Tensor]:
        return {"beta": self.beta} if isinstance(self.beta, Tensor) else {}

    def update(self, phi: Params, g: Params, state: State, lr: Rate | Mapping[str, Rate], k: Any,
               theta: Params, lam: float | None, hyper: dict[str, Tensor] | None = None
               ) -> tuple[Params, State]:
        beta = (hyper or {}).get("beta", self.beta)
        g = _proximal(g, phi, theta, lam)
        (velocity,) = state
        out, new = dict(phi), {}
        for name in g:
            b = torch.add(beta * velocity[name], g[name]) if isinstance(beta, Tensor) else \
                torch.add(g[name], velocity[name], alpha=beta)
            new[name] = b
            u = torch.add(g[name], beta * b) if self.nesterov else b
            out[name] = _step(phi[name], _rate(lr, name), u)
        return out, ({**velocity, **new},)


def _sqrt(v: Tensor) -> Tensor:
    """√v with the derivative 0 where v = 0: Adam's v̂ is exactly 0 where a parameter's
    gradient has been exactly 0 so far, and autograd's ∞·0 there would be NaN. At such an
    entry m̂ = 0 too, and the update's true derivative is the limit this gives."""
    positive = v > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, v, torch.ones_like(v))),
                       torch.zeros_like(v))


@dataclass(frozen=True)
class Adam:
    """Adam (Kingma & Ba 2015, Alg. 1), bias-corrected, its moments starting at zero in every
    task: mₖ₊₁ = β₁mₖ + (1 − β₁)gₖ, vₖ₊₁ = β₂vₖ + (1 − β₂)gₖ², uₖ = m̂/(√v̂ + ε).

    Parameters
    ----------
    beta1, beta2 : float
        The moments' decay rates, in [0, 1).
    eps : float
        ε > 0 in the denominator.
    """

    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    name: ClassVar[str] = "adam"
    monotone: ClassVar[bool] = False

    def __post_init__(self) -> None:
        for field in ("beta1", "beta2"):
            value = non_negative_float(field, getattr(self, field))
            if value >= 1:
                raise ValueError(f"{field} must be in [0, 1), got {value!r}")
            object.__setattr__(self, field, value)
        object.__setattr__(self, "eps", positive_float("eps", self.eps))

    def init(self, phi: Params) -> State:
        return ({k: torch.zeros_like(v) for k, v in phi.items()},
                {k: torch.zeros_like(v) for k, v in phi.items()})

    def hyper(self) -> dict[str, Tensor]:
        return {}

    def update(self, phi: Params, g: Params, state: State, lr: Rate | Mapping[str, Rate], k: Any,
               theta: Params, lam: float | None, hyper: dict[str, Tensor] | None = None
               ) -> tuple[Params, State]:
        g = _proximal(g, phi, theta, lam)
        first, second = state
        t = k + 1
        if isinstance(t, Tensor):  # the compiled scan's step counter: in the parameters' dtype
            t = t.to(next(iter(g.values())).dtype)
        # 1 − βᵗ: a number in an eager loop, a tensor in the compiled scan
        c1, c2 = 1 - self.beta1 ** t, 1 - self.beta2 ** t
        out, m_new, v_new = dict(phi), {}, {}
        for name in g:
            m = torch.lerp(g[name], first[name], self.beta1)  # β₁m + (1 − β₁)g
            v = torch.lerp(g[name] * g[name], second[name], self.beta2)
            m_new[name], v_new[name] = m, v
            u = (m / c1) / (_sqrt(v / c2) + self.eps)
            out[name] = _step(phi[name], _rate(lr, name), u)
        return out, ({**first, **m_new}, {**second, **v_new})


RULES: dict[str, type] = {"gd": GD, "momentum": Momentum, "adam": Adam}
"""The rules by name (``metagrad train --inner``)."""


def rule_label(rule: Any) -> str:
    """``gd``, ``momentum``, ``nesterov`` or ``adam``: the rule's short name."""
    if isinstance(rule, Momentum) and rule.nesterov:
        return "nesterov"
    return rule.name


def rule_named(rule: Any) -> GD | Momentum | Adam:
    """An update rule from itself or its name (``"gd"``, ``"momentum"``, ``"nesterov"``,
    ``"adam"``, each with its defaults)."""
    if isinstance(rule, (GD, Momentum, Adam)):
        return rule
    named: dict[str, GD | Momentum | Adam] = {
        "gd": GD(), "momentum": Momentum(), "nesterov": Momentum(nesterov=True), "adam": Adam()}
    if isinstance(rule, str) and rule in named:
        return named[rule]
    raise ValueError(f"inner must be an update rule (mg.GD(), mg.Momentum(beta=...), "
                     f"mg.Adam(...)) or one of {tuple(named)}, got {rule!r:.80}")
