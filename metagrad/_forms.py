"""The inner loops researchers meta-learn, by name: recipes that turn a method's settings into
the rates, the update rule and the loss weights of a variant of it.

======================  ====================================================================
``per_entry``           one learned step size per parameter entry (Meta-SGD, Li et al. 2017)
``per_step``            one learned step size per parameter tensor and inner step (MAML++'s
                        per-layer per-step rates, Antoniou et al. 2019, §4)
``anil``                only the last layer (the last two parameter tensors) adapted, with a
                        fixed step size (ANIL, Raghu et al. 2020)
``momentum``            heavy-ball momentum, β = 0.9 (Polyak 1964)
``nesterov``            Nesterov momentum, β = 0.9 (Sutskever et al. 2013)
``adam``                Adam, β₁ = 0.9, β₂ = 0.999, ε = 1e-8 (Kingma & Ba 2015)
``multistep``           MAML++'s multi-step loss: the validation loss after every inner step,
                        equal weights 1/K (Antoniou et al. 2019, §4)
======================  ====================================================================

:func:`inner_rates` builds rate tensors for one's own variant (any parameters, any form).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ._rules import Adam, Momentum

PER = ("tensor", "entry", "step_tensor", "step_entry")


def inner_rates(params: Mapping[str, Tensor], inner_lr: float, *, per: str = "tensor",
                steps: int | None = None, adapt: str | Iterable[str] | None = None,
                requires_grad: bool = True) -> dict[str, Tensor]:
    """Rate tensors for ``inner_lr=``, every one filled with ``inner_lr``.

    Parameters
    ----------
    params : mapping of str to Tensor
        The parameters (``mg.params_of(model)``); the rates get their dtype and device.
    inner_lr : float
        The initial step size.
    per : str
        ``"tensor"`` (one rate per parameter tensor), ``"entry"`` (one per entry,
        Meta-SGD), ``"step_tensor"`` (one per inner step and tensor, MAML++) or
        ``"step_entry"`` (one per step and entry).
    steps : int or None
        K, needed by the per-step forms.
    adapt : str, iterable of str or None
        The parameters to adapt: None for all, a name prefix (``"head"`` adapts
        ``head.weight`` and ``head.bias``; ANIL), or the names themselves. The others are
        left out of the dict, so the inner loop does not move them.
    requires_grad : bool
        Make the rates leaves that an optimizer can step (meta-parameters).

    Returns
    -------
    dict of str to Tensor
        One rate tensor per adapted parameter, in the parameters' order.
    """
    if per not in PER:
        raise ValueError(f"per must be one of {PER}, got {per!r}")
    if per.startswith("step") and (steps is None or steps < 1):
        raise ValueError(f"per={per!r} needs steps ≥ 1, got steps={steps!r}")
    names = _chosen(params, adapt)
    out = {}
    for name in names:
        p = params[name]
        shape: tuple[int, ...] = {"tensor": (), "entry": tuple(p.shape),
                                  "step_tensor": (steps or 0, *(1,) * p.dim()),
                                  "step_entry": (steps or 0, *p.shape)}[per]
        rate = torch.full(shape, float(inner_lr), dtype=p.dtype, device=p.device)
        out[name] = rate.requires_grad_(requires_grad)
    return out


def _chosen(params: Mapping[str, Tensor], adapt: str | Iterable[str] | None) -> list[str]:
    if adapt is None:
        return list(params)
    if isinstance(adapt, str):
        names = [k for k in params if k == adapt or k.startswith(adapt + ".")]
        if not names:
            raise ValueError(f"adapt={adapt!r} matches no parameter name; the names are "
                             f"{list(params)[:8]}")
        return names
    wanted = list(adapt)
    unknown = [k for k in wanted if k not in params]
    if unknown or not wanted:
        raise ValueError(f"adapt names {unknown or 'nothing'}; the parameters are "
                         f"{list(params)[:8]}")
    return [k for k in params if k in wanted]


def _jittered(rates: dict[str, Tensor], seed: int | None) -> dict[str, Tensor]:
    """Rates spread by a factor in [0.5, 1.5) (seeded), so that a check sees every rate
    apart from the others (a rate applied to the wrong entry then changes the result)."""
    if seed is None:
        return rates
    gen = torch.Generator().manual_seed(seed)
    return {k: (v.detach() * (0.5 + torch.rand(v.shape, generator=gen, dtype=torch.float64)
                              .to(v.dtype).to(v.device))).requires_grad_(v.requires_grad)
            for k, v in rates.items()}


@dataclass(frozen=True)
class InnerForm:
    """A named variant of the inner loop (see the module docstring).

    Parameters
    ----------
    name : str
        The short name (tables, ``metagrad verify``).
    title : str
        What it is, in words.
    paper : str
        The reference that defines it.
    build : callable
        ``build(params, steps, inner_lr, learn)`` → the method's keyword arguments.
    rates : bool
        It gives ``inner_lr`` as rate tensors (learned when the method can differentiate
        them).
    partial : bool
        It leaves parameters out of the adaptation.
    weights : bool
        It sets MAML's ``step_weights``.
    """

    name: str
    title: str
    paper: str
    build: Callable[..., dict[str, Any]]
    rates: bool = False
    partial: bool = False
    weights: bool = False

    def kwargs(self, params: Mapping[str, Tensor], steps: int, inner_lr: float, *,
               learn: bool = True, jitter: int | None = None) -> dict[str, Any]:
        """The keyword arguments that turn a method into this variant: rates (learned when
        ``learn``; spread around ``inner_lr`` with seed ``jitter``, for checks), the update
        rule, the loss weights."""
        out = self.build(params, steps, inner_lr, learn)
        if isinstance(out.get("inner_lr"), dict):
            out["inner_lr"] = _jittered(out["inner_lr"], jitter)
        return out

    def applies_to(self, cls: Any) -> str | None:
        """None when the method class can run this variant, else why not."""
        if self.weights and "step_weights" not in cls.__dataclass_fields__:
            return "the multi-step loss is MAML's"
        if self.partial and cls.target == "implicit":
            return "the implicit methods adapt every parameter"
        return None


def _head(params: Mapping[str, Tensor]) -> list[str]:
    """The last layer: the last two parameter tensors (a weight and its bias)."""
    return list(params)[-2:]


INNER_FORMS: dict[str, InnerForm] = {form.name: form for form in (
    InnerForm("per_entry", "one learned step size per entry (Meta-SGD)",
              "Li, Zhou, Chen & Li 2017, Meta-SGD: Learning to Learn Quickly for Few-Shot "
              "Learning (arXiv:1707.09835)",
              lambda p, k, lr, learn: {"inner_lr": inner_rates(p, lr, per="entry",
                                                               requires_grad=learn)},
              rates=True),
    InnerForm("per_step", "one learned step size per layer and inner step (MAML++)",
              "Antoniou, Edwards & Storkey 2019, How to train your MAML (ICLR), section 4",
              lambda p, k, lr, learn: {"inner_lr": inner_rates(
                  p, lr, per="step_tensor", steps=max(k, 1), requires_grad=learn)},
              rates=True),
    InnerForm("anil", "only the last layer adapted (ANIL)",
              "Raghu, Raghu, Bengio & Vinyals 2020, Rapid Learning or Feature Reuse? (ICLR)",
              lambda p, k, lr, learn: {"inner_lr": inner_rates(p, lr, adapt=_head(p),
                                                               requires_grad=False)},
              rates=True, partial=True),
    InnerForm("momentum", "heavy-ball momentum inner loop, β = 0.9",
              "Polyak 1964, Some methods of speeding up the convergence of iteration methods",
              lambda p, k, lr, learn: {"inner": Momentum(0.9)}),
    InnerForm("nesterov", "Nesterov momentum inner loop, β = 0.9",
              "Sutskever, Martens, Dahl & Hinton 2013, On the importance of initialization "
              "and momentum in deep learning (ICML)",
              lambda p, k, lr, learn: {"inner": Momentum(0.9, nesterov=True)}),
    InnerForm("adam", "Adam inner loop",
              "Kingma & Ba 2015, Adam: A Method for Stochastic Optimization (ICLR)",
              lambda p, k, lr, learn: {"inner": Adam()}),
    InnerForm("multistep", "MAML++'s multi-step loss, equal weights",
              "Antoniou, Edwards & Storkey 2019, How to train your MAML (ICLR), section 4",
              lambda p, k, lr, learn: {"step_weights": (1 / max(k, 1),) * max(k, 1)},
              weights=True),
)}
"""name → :class:`InnerForm`, in the order tables list them."""


def forms_kwargs(names: Iterable[str], params: Mapping[str, Tensor], steps: int,
                 inner_lr: float, *, learn: bool) -> dict[str, Any]:
    """The keyword arguments that the forms ``names`` together set on a method (rates, the
    update rule, the loss weights; rates learned when ``learn``), for the command lines'
    ``--inner``. Two forms that set the same argument are refused (``ValueError``)."""
    out: dict[str, Any] = {}
    owner: dict[str, str] = {}
    for name in names:
        for key, value in inner_form(name).kwargs(params, steps, inner_lr,
                                                   learn=learn).items():
            if key in owner:
                raise ValueError(f"--inner {owner[key]} and {name} both set {key}; give one "
                                 "of them")
            owner[key], out[key] = name, value
    return out


def inner_form(name: str) -> InnerForm:
    """The form registered as ``name``; a clear error for an unknown one."""
    if name not in INNER_FORMS:
        raise ValueError(f"unknown inner-loop form {name!r}; choose from "
                         f"{', '.join(INNER_FORMS)}")
    return INNER_FORMS[name]
