"""Inner step sizes beyond one number: learned, per tensor, per entry, per step; partial
adaptation.

``inner_lr`` is one of

* a Python float α: every parameter adapted with step α (the textbook inner loop);
* a 0-dim tensor α: the same, and α is a meta-parameter (its meta-gradient is returned);
* a mapping from parameter names to tensors, one per *adapted* parameter tensor:

  - 0-dim: one rate for that tensor;
  - the parameter's shape: one rate per entry (Meta-SGD, Li et al. 2017, "Meta-SGD:
    Learning to Learn Quickly for Few-Shot Learning"); a shape equal to the parameter's
    is always this form;
  - ``(K, *shape)``: one rate per inner step and entry;
  - ``(K, 1, …, 1)`` with one 1 per parameter dimension: one rate per inner step and
    tensor (MAML++, Antoniou, Edwards & Storkey 2019, "How to train your MAML", §4);

  a parameter whose name is absent is not adapted: it stays at θ in the inner loop (ANIL,
  Raghu et al. 2020, "Rapid Learning or Feature Reuse?", adapts only the head).

Step k of plain gradient descent is then φ ← φ − α_k ⊙ ∇L_tr(φ), α_k the rate tensor (or
its k-th slice) broadcast over the parameter. A mapping is held as :class:`Rates`, which
compares by the identity of its tensors, so that a method holding learned rates is a
frozen value like any other; the tensors themselves may be updated in place by an
optimizer between calls.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor

from ._pytree import Params

FORMS = ("tensor", "entry", "step_entry", "step_tensor")
"""The shapes a rate tensor can have, relative to its parameter (see the module docstring)."""


class Rates(Mapping[str, Tensor]):
    """A read-only mapping from adapted parameter names to rate tensors (see the module
    docstring). Equal to another only if it holds the very same tensor objects.

    Parameters
    ----------
    rates : mapping of str to Tensor
        The rate tensors by parameter name (held, not copied: an optimizer may update them
        in place).
    """

    def __init__(self, rates: Mapping[str, Tensor]):
        self._rates = dict(rates)

    def __getitem__(self, name: str) -> Tensor:
        return self._rates[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._rates)

    def __len__(self) -> int:
        return len(self._rates)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Rates):
            return NotImplemented
        return (list(self._rates) == list(other._rates)
                and all(a is b for a, b in zip(self._rates.values(), other._rates.values())))

    def __hash__(self) -> int:
        return hash(tuple((k, id(v)) for k, v in self._rates.items()))

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k!r}: {tuple(v.shape)}" for k, v in self._rates.items())
        return f"Rates({{{shapes}}})"


def normalise(value: Any) -> float | Tensor | Rates:
    """``inner_lr`` as given, checked and in its one representation: a positive finite float,
    a finite 0-dim floating tensor, or :class:`Rates` of finite floating tensors."""
    from ._validate import positive_float

    if isinstance(value, Tensor):
        if value.dim() != 0:
            raise ValueError(
                f"inner_lr as a tensor must be 0-dim (one learned rate for every parameter), "
                f"got shape {tuple(value.shape)}; give rates per parameter as a dict "
                "{name: tensor}")
        _check_tensor("inner_lr", value)
        return value
    if isinstance(value, Mapping):
        if isinstance(value, Rates):
            return value
        if not value:
            raise ValueError("inner_lr is an empty dict: no parameter would be adapted; give "
                             "at least one {name: rate tensor}")
        for name, rate in value.items():
            if not isinstance(name, str):
                raise TypeError(f"inner_lr keys must be parameter names, got {name!r}")
            if not isinstance(rate, Tensor):
                raise TypeError(f"inner_lr[{name!r}] must be a tensor (0-dim, the parameter's "
                                f"shape, or with a leading dimension K), got {rate!r:.60}")
            _check_tensor(f"inner_lr[{name!r}]", rate)
        return Rates(value)
    return positive_float("inner_lr", value)


def _check_tensor(what: str, rate: Tensor) -> None:
    if not rate.is_floating_point():
        raise TypeError(f"{what} must be a floating-point tensor, got {rate.dtype}")
    if rate.device.type != "meta" and not bool(torch.isfinite(rate.detach()).all()):
        raise ValueError(f"{what} contains NaN or infinite values")


def form(name: str, param_shape: tuple[int, ...], rate_shape: tuple[int, ...],
         steps: int) -> str:
    """Which of :data:`FORMS` a rate of ``rate_shape`` is for a parameter of ``param_shape``
    (a ``ValueError`` naming the parameter when it is none of them)."""
    if rate_shape == ():
        return "tensor"
    if rate_shape == param_shape:
        return "entry"
    if len(rate_shape) == len(param_shape) + 1 and rate_shape[0] == steps:
        if rate_shape[1:] == param_shape:
            return "step_entry"
        if all(s == 1 for s in rate_shape[1:]):
            return "step_tensor"
    ones = "(K" + ", 1" * len(param_shape) + ")"
    raise ValueError(
        f"inner_lr[{name!r}] has shape {rate_shape}, which fits none of the forms for a "
        f"parameter of shape {param_shape} with steps={steps}: () one rate for the tensor, "
        f"{param_shape} one per entry, ({steps}, *{param_shape}) one per step and entry, "
        f"{ones.replace('K', str(steps))} one per step")


def check(inner_lr: float | Tensor | Rates, theta: Params, steps: int) -> None:
    """The rates against the parameters they step: known names, shapes that fit."""
    if not isinstance(inner_lr, Rates):
        return
    unknown = [k for k in inner_lr if k not in theta]
    if unknown:
        raise ValueError(f"inner_lr names {unknown} that are not parameters; the parameters are "
                         f"{list(theta)[:8]}")
    for name, rate in inner_lr.items():
        form(name, tuple(theta[name].shape), tuple(rate.shape), steps)


def adapted(inner_lr: float | Tensor | Rates, names: Any) -> list[str]:
    """The parameter names the inner loop adapts (all but those a mapping leaves out)."""
    if isinstance(inner_lr, Rates):
        return [k for k in names if k in inner_lr]
    return list(names)


def at_step(inner_lr: float | Tensor | Mapping[str, Tensor], k: Any,
            theta: Params) -> float | Tensor | dict[str, Tensor]:
    """The rates of step k: the number or 0-dim tensor itself, or per adapted name the rate
    tensor (its k-th slice for the per-step forms), ready to broadcast over the parameter."""
    if not isinstance(inner_lr, Mapping):
        return inner_lr
    out = {}
    for name, rate in inner_lr.items():
        shape = tuple(theta[name].shape)
        # a rate of the parameter's own shape is per entry; one more dimension is per step
        per_step = rate.dim() == len(shape) + 1
        out[name] = rate[k] if per_step else rate
    return out


def largest(inner_lr: float | Tensor | Mapping[str, Tensor]) -> float:
    """The largest rate (for the inner loop's convergence check α·L < 2)."""
    if isinstance(inner_lr, Mapping):
        return max(float(v.detach().abs().max()) for v in inner_lr.values())
    if isinstance(inner_lr, Tensor):
        return abs(float(inner_lr.detach()))
    return float(inner_lr)


def describe(inner_lr: float | Tensor | Rates) -> Any:
    """A short plain value for reports and CSV cells: the number, or the forms used."""
    if isinstance(inner_lr, Rates):
        return "rates{" + ", ".join(f"{k}:{tuple(v.shape)}" for k, v in inner_lr.items()) + "}"
    if isinstance(inner_lr, Tensor):
        return float(inner_lr.detach())
    return inner_lr


def as_hyper(inner_lr: float | Tensor | Rates, like: Tensor) -> Tensor | dict[str, Tensor] | None:
    """The rates as inputs of a differentiated computation: detached copies in the
    parameters' dtype and device (None for a plain number)."""
    if isinstance(inner_lr, Rates):
        return {k: v.detach().to(dtype=like.dtype, device=like.device)
                for k, v in inner_lr.items()}
    if isinstance(inner_lr, Tensor):
        return inner_lr.detach().to(dtype=like.dtype, device=like.device)
    return None


def in_given_dtypes(grad: Any, inner_lr: float | Tensor | Rates) -> Any:
    """A rate-gradient returned in the dtype and on the device of the user's rate tensors."""
    if isinstance(inner_lr, Rates):
        return {k: grad[k].to(dtype=v.dtype, device=v.device) for k, v in inner_lr.items()}
    if isinstance(inner_lr, Tensor):
        return grad.to(dtype=inner_lr.dtype, device=inner_lr.device)
    return grad


def number(inner_lr: float | Tensor | Rates) -> float:
    """``inner_lr`` where a code path needs one number (checked before it gets there)."""
    if not isinstance(inner_lr, float):
        raise TypeError(f"this code path needs inner_lr as one number, got {inner_lr!r:.60}")
    return inner_lr
