"""Auditing code written against an ``nn.Module``: module targets, the battery's models, and
the loss-as-a-module wrapper.

Most meta-learning code is written as ``model(x) → logits → F.cross_entropy(logits, y)``
on an ``nn.Module``, not as a functional ``loss(params, batch)``. A *module target* is

    fn(model, tasks) -> dict[str, Tensor] | None

``model`` is an ``nn.Module`` the audit builds (its parameters are θ; yours to adapt, copy
or step), ``tasks`` an ``mg.Task`` of ``(x, y)`` batches with a leading task dimension, and
the loss is ``criterion(model(x), y)`` with the criterion the code uses,
``"cross_entropy"`` (``F.cross_entropy`` on logits, integer labels; the labels of every
batch are balanced and sorted by class, the N-way K-shot layout many repositories assume)
or ``"mse"`` (``F.mse_loss``, targets shaped like the output). ``fn`` returns the mean
meta-gradient keyed like ``model.named_parameters()``, or ``None`` after leaving it in the
parameters' ``.grad`` (the ``loss.backward()`` pattern). Wrap it with
:func:`module_target` and audit it like any target:

    check_meta_gradient(module_target(my_maml, "cross_entropy"), "maml", steps=1, inner_lr=0.4)

A factory, ``fn(*, steps, inner_lr, ...) -> fn(model, tasks)``, is accepted too.

The battery's problems in module form (:mod:`.battery`) use the models below, built from
standard layers, with curvature set through the data (inputs scaled, first-layer weights
scaled back, so that the logits at θ are unchanged) and, for squared error, the targets.

:class:`LossModule` is the other direction: a functional loss wrapped as a module whose
``forward(batch)`` is the loss, for libraries that want a module to patch (higher,
learn2learn, torchopt).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

CRITERIA: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "cross_entropy": F.cross_entropy,
    "mse": F.mse_loss,
}
"""The criteria a module target may use, by name."""


def criterion_name(criterion: Any) -> str:
    """``"cross_entropy"`` or ``"mse"`` for a name, ``F.cross_entropy`` / ``F.mse_loss`` or an
    ``nn.CrossEntropyLoss()`` / ``nn.MSELoss()`` with default settings; ``ValueError``
    naming what was given otherwise."""
    if isinstance(criterion, str) and criterion in CRITERIA:
        return criterion
    for name, fn in CRITERIA.items():
        if criterion is fn:
            return name
    plain = {nn.CrossEntropyLoss: "cross_entropy", nn.MSELoss: "mse"}
    if type(criterion) in plain and getattr(criterion, "reduction", "mean") == "mean" and \
            getattr(criterion, "weight", None) is None and \
            getattr(criterion, "label_smoothing", 0.0) == 0.0:
        return plain[type(criterion)]
    raise ValueError(f"criterion must be one of {sorted(CRITERIA)} (or F.cross_entropy, "
                     f"F.mse_loss, nn.CrossEntropyLoss(), nn.MSELoss()), got {criterion!r}")


@dataclass(frozen=True)
class ModuleTarget:
    """Code written against an ``nn.Module`` (module docstring); made by
    :func:`module_target`.

    Attributes
    ----------
    fn : Callable
        ``fn(model, tasks) -> dict[str, Tensor] | None``, or a factory of it.
    criterion : str
        ``"cross_entropy"`` or ``"mse"``: the loss the code applies to the model's output.
    """

    fn: Callable[..., Any]
    criterion: str

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


def module_target(fn: Callable[..., Any], criterion: Any = "cross_entropy") -> ModuleTarget:
    """Mark ``fn(model, tasks)`` (or a factory of it) as a module target whose code computes
    ``criterion(model(x), y)``; pass the result to :func:`check_meta_gradient`.

    Parameters
    ----------
    fn
        ``fn(model, tasks) -> dict[str, Tensor] | None`` (the mean meta-gradient keyed like
        ``model.named_parameters()``, or None with it left in the parameters' ``.grad``),
        or a factory ``fn(*, steps, inner_lr, ...) -> that``.
    criterion
        ``"cross_entropy"`` (also ``F.cross_entropy``, ``nn.CrossEntropyLoss()``) or
        ``"mse"`` (``F.mse_loss``, ``nn.MSELoss()``): the loss the code applies to the
        model's output.

    Returns
    -------
    ModuleTarget
        What :func:`check_meta_gradient` and ``metagrad audit --module`` accept.
    """
    if not callable(fn):
        raise TypeError(f"a module target must be callable, got {type(fn).__name__}")
    return ModuleTarget(fn, criterion_name(criterion))


def fresh_model(template: nn.Module, params: Mapping[str, Tensor]) -> nn.Module:
    """A deep copy of ``template`` holding copies of ``params``, with no ``.grad``."""
    model = copy.deepcopy(template)
    named = dict(model.named_parameters())
    with torch.no_grad():
        for key, value in params.items():
            named[key].copy_(value)
    for p in model.parameters():
        p.grad = None
    return model


def grads_of(model: nn.Module, names: list[str]) -> dict[str, Tensor | None]:
    """The ``.grad`` of ``model``'s parameters ``names`` (None where none was written)."""
    named = dict(model.named_parameters())
    return {k: (named[k].grad if k in named else None) for k in names}


# --------------------------------------------------------------------------------------------
# the battery's models

class ScaledTanh(nn.Module):
    """``scale · tanh(layer(x))``: a weight matrix, a bias vector and a 0-dim scalar
    parameter (``layer.weight``, ``layer.bias``, ``scale``).

    Parameters
    ----------
    in_features : int
        Inputs of the linear layer.
    out_features : int
        Its outputs (the model's output width).
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.layer = nn.Linear(in_features, out_features)
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * torch.tanh(self.layer(x))


class ScalarTanh(nn.Module):
    """``tanh(scale · x)``: one 0-dim parameter, ``scale``."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(self.scale * x)


# --------------------------------------------------------------------------------------------
# a functional loss as a module

class LossModule(nn.Module):
    """An ``nn.Module`` whose parameters are copies of ``params`` and whose ``forward`` is
    the loss: ``forward(batch) = loss({key: parameter}, batch)``.

    For code that wants a module to patch or to optimise (higher's ``innerloop_ctx``,
    learn2learn's ``clone``, torchopt's ``MetaSGD``) when the audit hands it a functional
    ``loss(params, batch)``. Parameter names are ``p0, p1, …`` in ``params`` order because
    ``nn.Module`` forbids dots in names (``params_of`` keys such as ``"0.weight"`` have
    them); ``keys`` maps them back, :meth:`as_dict` gives the parameters under the original
    keys. Reading the parameters by attribute in ``forward`` is what lets the libraries swap
    in adapted weights.

    Parameters
    ----------
    loss : Callable[[Mapping[str, Tensor], Any], Tensor]
        ``loss(params, batch)``, a functional loss.
    params : Mapping[str, Tensor]
        The parameters, copied into the module.
    """

    def __init__(self, loss: Callable[[Mapping[str, Tensor], Any], Tensor],
                 params: Mapping[str, Tensor]):
        super().__init__()
        self._loss = loss
        self.keys = list(params)
        self._names = [f"p{i}" for i in range(len(self.keys))]
        for name, value in zip(self._names, params.values()):
            self.register_parameter(name, nn.Parameter(value.detach().clone()))

    def as_dict(self) -> dict[str, Tensor]:
        return {k: getattr(self, n) for k, n in zip(self.keys, self._names)}

    def forward(self, batch: Any) -> Tensor:
        return self._loss(self.as_dict(), batch)
