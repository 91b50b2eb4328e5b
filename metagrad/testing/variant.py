"""The inner-loop variant an audit checks: learned rates, partial adaptation, momentum, Adam,
the multi-step loss, built on each of the battery's problems.

A variant is named by forms (``inner=``, ``metagrad audit --inner``): those of
:data:`metagrad.INNER_FORMS` (``per_entry``, ``per_step``, ``anil``, ``momentum``,
``nesterov``, ``adam``, ``multistep``) and two more that peer libraries expose,

=============  ==============================================================================
``per_tensor``  one learned step size per parameter tensor (one per parameter group of a
                ``torch.optim`` optimizer)
``one_rate``    one learned step size for every parameter, a 0-dim tensor
=============  ==============================================================================

or by an update-rule object (``mg.Momentum(0.5, nesterov=True)``, ``mg.Adam(...)``), any
number combined (``inner=("per_entry", "momentum")``); by your own rates, ``inner_lr`` a
callable ``rates(params) -> dict[str, Tensor] | Tensor`` of the problem's parameters; and
by MAML's ``step_weights``.

On each problem the rates are built in float64 from the problem's parameters and then
spread by a factor in [0.5, 1.5) drawn per entry (seeded), so that no two rates are equal
and a rate applied to the wrong entry, tensor or step changes the result. In the float32
mode the target gets them rounded to float32 and the oracle the same numbers in float64.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .._forms import INNER_FORMS, InnerForm, inner_rates
from .._rules import GD, Adam, Momentum, rule_label, rule_named

SPREAD_SEED = 7
"""Seed of the per-entry spread of the rates (the same on every run)."""


def _one_rate(params: Mapping[str, Tensor], steps: int, lr: float, learn: bool
              ) -> dict[str, Any]:
    like = next(iter(params.values()))
    return {"inner_lr": torch.tensor(float(lr), dtype=like.dtype).requires_grad_(learn)}


AUDIT_FORMS: dict[str, InnerForm] = {
    **INNER_FORMS,
    "per_tensor": InnerForm(
        "per_tensor", "one learned step size per parameter tensor",
        "Li, Zhou, Chen & Li 2017 (Meta-SGD's rates, one per tensor); one per parameter group "
        "in a torch.optim optimizer",
        lambda p, k, lr, learn: {"inner_lr": inner_rates(p, lr, per="tensor",
                                                         requires_grad=learn)},
        rates=True),
    "one_rate": InnerForm(
        "one_rate", "one learned step size for every parameter (a 0-dim tensor)",
        "Finn, Abbeel & Levine 2017 with α learned, as in Li et al. 2017, §3", _one_rate,
        rates=True),
}
"""The forms an audit can name: :data:`metagrad.INNER_FORMS` and ``per_tensor``,
``one_rate`` (module docstring)."""

Rule = GD | Momentum | Adam


def _spread(rates: Any, gen: torch.Generator) -> Any:
    """Every rate times a factor in [0.5, 1.5), in float64, leaves as given."""
    def one(r: Tensor) -> Tensor:
        factor = 0.5 + torch.rand(r.shape, generator=gen, dtype=torch.float64)
        return (r.detach().to(torch.float64) * factor).requires_grad_(r.requires_grad)

    if isinstance(rates, Tensor):
        return one(rates)
    return {k: one(v) for k, v in rates.items()}


def _cast(rates: Any, dtype: torch.dtype) -> Any:
    def one(r: Tensor) -> Tensor:
        return r.detach().to(dtype).requires_grad_(r.requires_grad)

    if isinstance(rates, Tensor):
        return one(rates)
    if isinstance(rates, Mapping):
        return {k: one(v) for k, v in rates.items()}
    return rates


@dataclass(frozen=True)
class Built:
    """A variant on one problem: the method's keyword arguments for the oracle's float64
    problem (``exact``) and for the problem the target gets (``given``, its dtype)."""

    exact: dict[str, Any]
    given: dict[str, Any]

    @property
    def rates(self) -> Any:
        """The target's rates: a dict of tensors, a 0-dim tensor, or None (a number)."""
        rates = self.given.get("inner_lr")
        return rates if isinstance(rates, (Tensor, Mapping)) else None

    @property
    def learned(self) -> bool:
        """Rates that require a gradient: the target's rate-gradient is checked."""
        rates = self.rates
        if rates is None:
            return False
        values = [rates] if isinstance(rates, Tensor) else list(rates.values())
        return any(v.requires_grad for v in values)


@dataclass(frozen=True)
class Variant:
    """What an audit checks besides the method and its numerical settings (module docstring).

    Attributes
    ----------
    forms : tuple of str
        Names in :data:`AUDIT_FORMS`.
    rule : GD, Momentum, Adam or None
        An update rule given as an object (overrides none: a form that sets another rule is
        an error).
    rates : callable or None
        ``rates(params)`` → your own rate tensors for a problem's parameters.
    step_weights : tuple of float or None
        MAML's multi-step loss weights (one per inner step).
    """

    forms: tuple[str, ...] = ()
    rule: Rule | None = None
    rates: Callable[[Mapping[str, Tensor]], Any] | None = None
    step_weights: tuple[float, ...] | None = None

    @classmethod
    def of(cls, inner: Any = None, inner_lr: Any = None,
           step_weights: Sequence[float] | None = None) -> Variant:
        """The variant from ``check_meta_gradient``'s keywords: ``inner`` a form name, a
        comma-separated list of them, a rule object or a sequence of these; ``inner_lr`` a
        rates callable (numbers are settings, not a variant); MAML's ``step_weights``."""
        items: list[Any] = []
        if isinstance(inner, str):
            items = [s.strip() for s in inner.split(",") if s.strip()]
        elif isinstance(inner, (list, tuple)):
            for item in inner:
                items += ([s.strip() for s in item.split(",") if s.strip()]
                          if isinstance(item, str) else [item])
        elif inner is not None:
            items = [inner]
        forms: list[str] = []
        rule: Rule | None = None
        for item in items:
            if isinstance(item, str) and item in AUDIT_FORMS:
                forms.append(item)
                continue
            if isinstance(item, str) and item == "gd":
                continue
            try:
                named = rule_named(item)
            except ValueError:
                raise ValueError(
                    f"inner={item!r:.60} is neither an inner-loop form ({', '.join(AUDIT_FORMS)}) "
                    "nor an update rule (mg.GD(), mg.Momentum(...), mg.Adam(...))") from None
            if rule is not None:
                raise ValueError(f"two update rules given: {rule!r} and {named!r}")
            rule = named
        if inner_lr is not None and not callable(inner_lr):
            raise TypeError(f"rates must be a callable rates(params), got {inner_lr!r:.60}")
        weights = None if step_weights is None else tuple(float(w) for w in step_weights)
        variant = cls(tuple(dict.fromkeys(forms)), rule, inner_lr, weights)
        variant._merged({}, 1, 0.1, False)  # conflicting forms fail here, before any work
        return variant

    @property
    def plain(self) -> bool:
        """Nothing beyond the textbook inner loop."""
        return (not self.forms and self.rates is None and self.step_weights is None
                and (self.rule is None or isinstance(self.rule, GD)))

    @property
    def adam(self) -> bool:
        """An Adam inner loop (the battery then adds its ``dead input`` problem)."""
        return isinstance(self.rule, Adam) or any(
            isinstance(AUDIT_FORMS[f].build({}, 1, 0.1, False).get("inner"), Adam)
            for f in self.forms if not (AUDIT_FORMS[f].rates or AUDIT_FORMS[f].weights))

    @property
    def has_rates(self) -> bool:
        """Whether the variant gives rate tensors (which a target must be told)."""
        return self.rates is not None or any(AUDIT_FORMS[f].rates for f in self.forms)

    def describe(self) -> str:
        """A short label: the forms, the rule, ``rates``, ``step_weights``."""
        parts = list(self.forms)
        if self.rule is not None and not isinstance(self.rule, GD):
            label = rule_label(self.rule)
            parts.append(label if rule_named(label) == self.rule else repr(self.rule))
        if self.rates is not None:
            parts.append("your rates")
        if self.step_weights is not None:
            parts.append("step_weights=(" + ", ".join(f"{w:g}" for w in self.step_weights)
                         + ")")
        return ", ".join(parts)

    def applies_to(self, cls: Any) -> str | None:
        """None when the method class can run this variant, else why not."""
        for name in self.forms:
            reason = AUDIT_FORMS[name].applies_to(cls)
            if reason:
                return f"{name}: {reason}"
        if self.step_weights is not None and "step_weights" not in cls.__dataclass_fields__:
            return "step_weights: the multi-step loss is MAML's"
        return None

    def _merged(self, params: Mapping[str, Tensor], steps: int, inner_lr: float,
                learn: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        sources: dict[str, str] = {}
        pieces: list[tuple[str, dict[str, Any]]] = []
        for name in self.forms:
            form = AUDIT_FORMS[name]
            if params or not (form.rates or form.weights):
                pieces.append((name, form.build(params, steps, inner_lr, learn)))
            else:  # checking for conflicts only
                pieces.append((name, {"inner_lr" if form.rates else "step_weights": None}))
        if self.rule is not None:
            pieces.append(("the rule given", {"inner": self.rule}))
        if self.rates is not None:  # learned (require grad) where the method learns rates
            own = self.rates(params) if params else None
            if own is not None:
                own = _cast(own, torch.float64) if isinstance(own, (Tensor, Mapping)) else own
                for value in ([own] if isinstance(own, Tensor) else
                              own.values() if isinstance(own, Mapping) else []):
                    value.requires_grad_(learn)
            pieces.append(("your rates", {"inner_lr": own}))
        if self.step_weights is not None:
            pieces.append(("step_weights", {"step_weights": self.step_weights}))
        for name, kwargs in pieces:
            for key, value in kwargs.items():
                if key in out:
                    raise ValueError(f"inner-loop forms {sources[key]!r} and {name!r} both set "
                                     f"{key}; combine forms that set different things (rates, "
                                     "the update rule, the loss weights)")
                out[key], sources[key] = value, name
        return out

    def build(self, params: Mapping[str, Tensor], steps: int, inner_lr: float, learn: bool,
              dtype: torch.dtype) -> Built:
        """The variant on a problem whose float64 parameters are ``params``: rates built from
        them, spread (module docstring), in ``dtype`` for the target and back in float64 for
        the oracle. ``learn``: the method differentiates the rates (they require grad).
        Raises ``ValueError`` where the variant does not fit (per-step rates or loss weights
        at K = 0, weights of another length)."""
        if self.step_weights is not None and len(self.step_weights) != steps:
            raise ValueError(f"step_weights has {len(self.step_weights)} entries, not one per "
                             f"inner step (K = {steps})")
        if steps == 0 and any(AUDIT_FORMS[f].weights or f.startswith("per_step")
                              for f in self.forms):
            raise ValueError(f"{self.describe()} needs at least one inner step")
        kwargs = self._merged(params, steps, inner_lr, learn)
        if "inner_lr" in kwargs:
            rates = kwargs["inner_lr"]
            if not isinstance(rates, (Tensor, Mapping)):
                raise TypeError(f"your rates(params) must give a dict of tensors or a 0-dim "
                                f"tensor, got {type(rates).__name__}")
            spread = _spread(rates, torch.Generator().manual_seed(SPREAD_SEED))
            given_rates = _cast(spread, dtype)
            kwargs_exact = {**kwargs, "inner_lr": _cast(given_rates, torch.float64)}
            return Built(kwargs_exact, {**kwargs, "inner_lr": given_rates})
        return Built(dict(kwargs), dict(kwargs))


def largest_rate(rates: Any) -> float:
    """The largest rate of a dict of tensors or a tensor (for the audit's curvature)."""
    values = [rates] if isinstance(rates, Tensor) else list(rates.values())
    return max(float(v.detach().abs().max()) for v in values)


__all__ = ["AUDIT_FORMS", "Built", "Variant", "largest_rate"]
