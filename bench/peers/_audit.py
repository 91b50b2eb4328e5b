"""Pieces the audit adapters share: turning a functional ``loss(params, batch)`` into the
``nn.Module`` the peer libraries want (``metagrad.testing.LossModule``), checking the
settings a factory is given, and the mean over tasks.

An audit *target* is ``target(loss, params, tasks) -> dict[str, Tensor]``: the mean over
the meta-batch of one method's per-task meta-gradient, computed by a peer library's own
machinery, keyed and ordered like ``params``. Each peer module maps metagrad's method
names to factories ``AUDIT_TARGETS[name](**settings) -> target`` in metagrad's vocabulary
(``steps``, ``inner_lr``, ``lam``, ``cg_iters``, ``terms``, ``step``).

Inner-loop variants (``metagrad audit --inner``, ``metagrad.testing.variant``): a factory may
also be given ``inner_lr`` as rate tensors (a 0-dim tensor, or a dict of per-tensor or
per-entry tensors built by the audit on the problem's parameters) and ``inner``, metagrad's
update rule (``mg.Momentum``, ``mg.Adam``); :func:`inner_settings` reads them, and a target
with learned rates returns ``(grad, {"inner_lr": rate-gradients})``. Each peer module lists
the forms a method runs in ``AUDIT_INNER``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from metagrad.testing import LossModule

Loss = Callable[[Mapping[str, Tensor], Any], Tensor]
Target = Callable[[Loss, Mapping[str, Tensor], Any], dict[str, Tensor]]


ParamModule = LossModule
"""The functional loss as an ``nn.Module`` whose ``forward(batch)`` is the loss: the public
:class:`metagrad.testing.LossModule` (parameters ``p0, p1, …``, ``keys`` the original names),
which higher, learn2learn and torchopt patch and betty optimises."""


def proximal(phi: Sequence[Tensor], theta: Sequence[Tensor], lam: float) -> Tensor:
    """λ/2 ‖φ − θ‖², the iMAML proximal term (Rajeswaran et al. 2019, eq. (4))."""
    return 0.5 * lam * sum(((p - t) ** 2).sum() for p, t in zip(phi, theta))


def mean_over_tasks(per_task: Callable[[int], Sequence[Tensor]], tasks: Any,
                    keys: Sequence[str]) -> dict[str, Tensor]:
    """(1/T) Σᵢ gᵢ as a dict in ``keys`` order; ``per_task(i)`` gives task i's gᵢ as a list."""
    total: list[Tensor] | None = None
    for i in range(tasks.num_tasks):
        g = [t.detach() for t in per_task(i)]
        if len(g) != len(keys):
            raise RuntimeError(f"task {i}: {len(g)} gradient tensors for {len(keys)} parameters")
        total = g if total is None else [a + b for a, b in zip(total, g)]
    assert total is not None
    return {k: t / tasks.num_tasks for k, t in zip(keys, total)}


@dataclass(frozen=True)
class Inner:
    """The inner loop a factory was asked for: ``kind`` (``"gd"``, ``"momentum"``,
    ``"nesterov"``, ``"adam"``) with the rule's hyperparameters, and either one number
    ``lr`` or the rate tensors ``rates`` (a 0-dim tensor or a dict keyed like the
    parameters), whose gradient the target returns."""

    kind: str = "gd"
    beta: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    lr: float | None = None
    rates: Tensor | dict[str, Tensor] | None = None

    def rate_list(self, keys: Sequence[str]) -> list[Tensor]:
        """The rate tensors in the parameters' order, as fresh leaves that require grad."""
        assert self.rates is not None
        values = [self.rates] if isinstance(self.rates, Tensor) else [self.rates[k]
                                                                       for k in keys]
        return [v.detach().clone().requires_grad_(True) for v in values]

    def with_rates(self, grad: dict[str, Tensor], rate_grads: Sequence[Tensor],
                   keys: Sequence[str]) -> Any:
        """``grad`` alone, or ``(grad, {"inner_lr": ...})`` keyed like the rates."""
        if self.rates is None:
            return grad
        if isinstance(self.rates, Tensor):
            return grad, {"inner_lr": rate_grads[0]}
        return grad, {"inner_lr": dict(zip(keys, rate_grads))}


def inner_settings(what: str, settings: Mapping[str, Any], required: Sequence[str],
                   rates: Sequence[str] = ()) -> tuple[dict[str, Any], Inner]:
    """The settings and the inner loop of a factory call. ``rates``: the rate forms the
    library can run, among ``"one"`` (a 0-dim tensor for every parameter), ``"tensor"``
    (one 0-dim tensor per parameter) and ``"entry"`` (one per entry), every parameter
    adapted. Anything else (per-step rates, partial adaptation, loss weights) raises
    ``NotImplementedError`` naming it: the audit reports such a case "not run"."""
    given = dict(settings)
    rule = given.pop("inner", None)
    weights = given.pop("step_weights", None)
    lr = given.get("inner_lr")
    tensors = isinstance(lr, (Tensor, Mapping))
    if tensors:
        given["inner_lr"] = 1.0  # a number for the checks below; the tensors are kept apart
    s = check_settings(what, given, required)
    if weights is not None:
        raise NotImplementedError(f"{what}: no multi-step loss (step_weights)")
    kind = "gd" if rule is None else (
        "adam" if hasattr(rule, "beta1") else "nesterov" if rule.nesterov else "momentum")
    inner = Inner(kind)
    if kind in ("momentum", "nesterov"):
        if isinstance(rule.beta, Tensor):
            raise NotImplementedError(f"{what}: a learned momentum β")
        inner = Inner(kind, beta=float(rule.beta))
    elif kind == "adam":
        inner = Inner(kind, betas=(rule.beta1, rule.beta2), eps=rule.eps)
    if not tensors:
        return s, replace(inner, lr=float(lr))
    forms = {"one"} if isinstance(lr, Tensor) else {
        "tensor" if v.dim() == 0 else "entry" for v in lr.values()}
    if not forms <= set(rates):
        raise NotImplementedError(f"{what}: cannot run these rates ({_describe(lr)}); it "
                                  f"runs {', '.join(rates) or 'one number'}")
    return s, replace(inner, rates=lr)


def _describe(rates: Any) -> str:
    if isinstance(rates, Tensor):
        return "one 0-dim tensor"
    return ", ".join(f"{k}: {tuple(v.shape)}" for k, v in rates.items())


def check_rates_cover(what: str, inner: Inner, params: Mapping[str, Tensor]) -> None:
    """Every parameter adapted, every rate per tensor or per entry of its parameter;
    ``NotImplementedError`` otherwise (partial adaptation, per-step rates)."""
    if not isinstance(inner.rates, Mapping):
        return
    missing = [k for k in params if k not in inner.rates]
    if missing:
        raise NotImplementedError(f"{what}: adapts every parameter; no rate for {missing}")
    wrong = [k for k, v in inner.rates.items() if v.dim() != 0 and v.shape != params[k].shape]
    if wrong:
        raise NotImplementedError(f"{what}: rates per tensor or per entry only, not per step "
                                  f"({wrong})")


def mean_with_rates(per_task: Callable[[int], Sequence[Tensor]], tasks: Any,
                    keys: Sequence[str], inner: Inner) -> Any:
    """The mean over tasks of ``per_task(i)`` = task i's gradients in ``keys`` order followed
    by its rate-gradients (none without learned rates), as :meth:`Inner.with_rates` gives."""
    total: list[Tensor] | None = None
    for i in range(tasks.num_tasks):
        g = [t.detach() for t in per_task(i)]
        total = g if total is None else [a + b for a, b in zip(total, g)]
    assert total is not None
    mean = [t / tasks.num_tasks for t in total]
    return inner.with_rates(dict(zip(keys, mean[:len(keys)])), mean[len(keys):], keys)


def check_settings(method: str, given: Mapping[str, Any], required: Sequence[str],
                   optional: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The settings a factory takes, with ``optional`` defaults filled in.

    Unknown or missing names raise ``TypeError`` naming them; a non-integer or negative
    count and a non-positive rate raise ``ValueError`` naming the value.
    """
    optional = dict(optional or {})
    unknown = sorted(set(given) - set(required) - set(optional))
    if unknown:
        raise TypeError(f"{method}: unknown setting(s) {unknown}; "
                        f"takes {sorted([*required, *optional])}")
    missing = [k for k in required if k not in given]
    if missing:
        raise TypeError(f"{method}: missing setting(s) {missing}")
    out = {**optional, **given}
    for k in ("steps", "cg_iters", "terms"):
        if k in out and (isinstance(out[k], bool) or not isinstance(out[k], int) or out[k] < 0):
            raise ValueError(f"{method}: {k} must be a non-negative int, got {out[k]!r}")
    for k in ("inner_lr", "lam", "step"):
        if k in out and not (isinstance(out[k], (int, float)) and out[k] > 0):
            raise ValueError(f"{method}: {k} must be a positive number, got {out[k]!r}")
    return out


def one_scalar_grad(value: Tensor, wrt: Sequence[Tensor]) -> tuple[Tensor, ...]:
    """∂value/∂wrt, zeros for tensors value does not depend on."""
    grads = torch.autograd.grad(value, list(wrt), allow_unused=True)
    return tuple(torch.zeros_like(w) if g is None else g for g, w in zip(grads, wrt))
