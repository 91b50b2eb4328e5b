"""Learned inner step sizes: from the user's ``rates`` to one rate vector per inner step, and
back from per-step, per-entry derivatives to the user's rate tensors.

Step k of the inner loop is φ⁽ᵏ⁺¹⁾ = φ⁽ᵏ⁾ − α_k ⊙ u_k with α_k ∈ Rᵈ (θ flattened in the
layout's order). ``rates`` says how the α_k are parametrised:

* a Python float a: α_k = a·1 for every k (every parameter adapted, nothing learned);
* a 0-dim tensor a: the same, learnable (its derivative is Σ_k Σ_j ∂F/∂α_kj);
* a dict from parameter names to tensors, one per adapted parameter tensor, each

  - 0-dim: one rate for the tensor, all steps;
  - of the parameter's shape: one rate per entry, all steps (Meta-SGD, Li et al. 2017);
    a shape equal to the parameter's is always this form, whatever its first dimension;
  - ``(K, *shape)``: one rate per step and entry;
  - ``(K, 1, …, 1)``, one 1 per parameter dimension: one rate per step and tensor
    (MAML++, Antoniou et al. 2019, §4 "per-layer per-step learning rates");

  a parameter absent from the dict is not adapted: its entries of every α_k are 0, so it
  stays at θ (ANIL, Raghu et al. 2020, adapts only the head this way).

The derivative of F with respect to a rate tensor is the per-step, per-entry derivative
∂F/∂α_kj summed over the (k, j) that share that rate (:func:`rate_gradient`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

Layout = Sequence[tuple[str, Sequence[int]]]
Rates = float | Tensor | Mapping[str, Tensor]

FORMS = ("tensor", "entry", "step_entry", "step_tensor")


@dataclass(frozen=True)
class Block:
    """One parameter tensor's place in θ: entries ``start:stop``, shape ``shape``."""

    name: str
    start: int
    stop: int
    shape: tuple[int, ...]


@dataclass(frozen=True)
class RateSpec:
    """One rate tensor: the block it steps and its form (one of :data:`FORMS`)."""

    block: Block
    form: str
    value: Tensor


def blocks(layout: Layout, theta: Tensor) -> list[Block]:
    """The layout as consecutive blocks of θ; a ``ValueError`` if the sizes disagree."""
    out, start = [], 0
    for name, shape in layout:
        shape = tuple(int(s) for s in shape)
        n = 1
        for s in shape:
            n *= s
        out.append(Block(name, start, start + n, shape))
        start += n
    if start != theta.numel():
        raise ValueError(f"the layout has {start} entries, theta {theta.numel()}")
    if len({b.name for b in out}) != len(out):
        raise ValueError(f"the layout repeats a name: {[b.name for b in out]}")
    return out


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def form_of(name: str, shape: tuple[int, ...], rate_shape: tuple[int, ...], steps: int) -> str:
    """Which of :data:`FORMS` a rate tensor of ``rate_shape`` is for a parameter of ``shape``;
    a ``ValueError`` naming the parameter for any other shape."""
    if rate_shape == ():
        return "tensor"
    if rate_shape == shape:  # before the per-step forms: equal to the parameter's is per entry
        return "entry"
    if rate_shape == (steps, *shape):
        return "step_entry"
    if rate_shape == (steps,) + (1,) * len(shape):
        return "step_tensor"
    raise ValueError(
        f"inner_lr for {name!r} has shape {tuple(rate_shape)}; a parameter of shape "
        f"{tuple(shape)} with steps={steps} takes () (one rate), {tuple(shape)} (per entry), "
        f"{(steps, *shape)} (per step and entry) or {(steps,) + (1,) * len(shape)} "
        "(per step)")


def parse(layout: Layout, theta: Tensor, steps: int, rates: Rates) -> list[RateSpec] | float:
    """Validate ``rates``: a float stays a float; a 0-dim tensor becomes one ``tensor``-form
    spec per parameter (sharing the value); a dict one spec per named parameter."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    all_blocks = blocks(layout, theta)
    if _is_number(rates):
        return float(rates)  # type: ignore[arg-type]
    if isinstance(rates, Tensor):
        if rates.dim() != 0:
            raise ValueError(f"inner_lr as one tensor must be 0-dim, got shape "
                             f"{tuple(rates.shape)}; give a dict for per-parameter rates")
        value = rates.detach().to(theta.dtype)
        return [RateSpec(b, "tensor", value) for b in all_blocks]
    if not isinstance(rates, Mapping):
        raise ValueError(f"inner_lr must be a float, a 0-dim tensor or a dict of tensors, "
                         f"got {type(rates).__name__}")
    if not rates:
        raise ValueError("inner_lr is an empty dict: no parameter would be adapted")
    by_name = {b.name: b for b in all_blocks}
    unknown = [k for k in rates if k not in by_name]
    if unknown:
        raise ValueError(f"inner_lr names unknown parameters {unknown}; the parameters are "
                         f"{list(by_name)}")
    specs = []
    for name, value in rates.items():
        if not isinstance(value, Tensor):
            raise ValueError(f"inner_lr for {name!r} must be a tensor, got "
                             f"{type(value).__name__}")
        block = by_name[name]
        form = form_of(name, block.shape, tuple(value.shape), steps)
        specs.append(RateSpec(block, form, value.detach().to(theta.dtype)))
    return specs


def _spec_rate(spec: RateSpec, k: int) -> Tensor:
    """Spec's rates at step k as a vector over its block's entries."""
    n = spec.block.stop - spec.block.start
    if spec.form == "tensor":
        return spec.value.expand(n)
    if spec.form == "entry":
        return spec.value.reshape(n)
    if spec.form == "step_entry":
        return spec.value[k].reshape(n)
    return spec.value[k].reshape(()).expand(n)  # step_tensor


def rate_vectors(layout: Layout, theta: Tensor, steps: int, rates: Rates) -> list[Tensor]:
    """α_0 … α_{K−1} ∈ Rᵈ (0 on parameters that are not adapted).

    Parameters
    ----------
    layout : sequence of (name, shape)
        The parameters in θ's order.
    theta : Tensor
        Flat θ (only its size, dtype and device are used).
    steps : int
        K, the number of inner steps.
    rates : float, 0-dim Tensor or dict of Tensor
        See the module docstring.

    Returns
    -------
    list of Tensor
        K vectors of θ's size and dtype.
    """
    parsed = parse(layout, theta, steps, rates)
    if isinstance(parsed, float):
        return [torch.full_like(theta, parsed) for _ in range(steps)]
    by_name = {spec.block.name: spec for spec in parsed}
    out = []
    for k in range(steps):
        pieces = []
        for block in blocks(layout, theta):
            spec = by_name.get(block.name)
            if spec is None:  # not adapted: a zero rate keeps it at θ
                pieces.append(theta.new_zeros(block.stop - block.start))
            else:
                pieces.append(_spec_rate(spec, k))
        out.append(torch.cat(pieces) if pieces else theta.new_zeros(0))
    return out


def unadapted(layout: Layout, theta: Tensor, steps: int, rates: Rates) -> list[str]:
    """The parameters ``rates`` leaves at θ (none for a float or a 0-dim tensor)."""
    parsed = parse(layout, theta, steps, rates)
    if isinstance(parsed, float):
        return []
    named = {spec.block.name for spec in parsed}
    return [b.name for b in blocks(layout, theta) if b.name not in named]


def rate_gradient(layout: Layout, theta: Tensor, steps: int, rates: Rates,
                  per_step: Tensor) -> Tensor | dict[str, Tensor] | None:
    """∂F/∂rates from ``per_step[k, j]`` = ∂F/∂α_kj: summed over the steps and entries that
    share each rate, in the type, keys and shapes of ``rates`` (None for a float: not learned).
    """
    parsed = parse(layout, theta, steps, rates)
    if isinstance(parsed, float):
        return None
    if isinstance(rates, Tensor):
        return per_step.sum()
    out = {}
    for spec in parsed:
        block = per_step[:, spec.block.start:spec.block.stop]  # (K, n)
        if spec.form == "tensor":
            out[spec.block.name] = block.sum()
        elif spec.form == "entry":
            out[spec.block.name] = block.sum(0).reshape(spec.block.shape)
        elif spec.form == "step_entry":
            out[spec.block.name] = block.reshape(steps, *spec.block.shape)
        else:  # step_tensor
            out[spec.block.name] = block.sum(1).reshape(spec.value.shape)
    return out
