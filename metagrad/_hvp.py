"""Hessian-vector products of a task loss with respect to the parameters.

``H(φ) v = ∇²_φ L(φ; batch) v`` without forming ``H`` (Pearlmutter 1994, "Fast exact
multiplication by the Hessian"). Two exact modes:

* ``"fwdrev"``, forward-over-reverse: ``jvp(grad L)(φ; v)``. One forward-mode pass
  through the gradient computation; the mode the JAX and ``torch.func`` docs recommend
  for memory.
* ``"revrev"``, reverse-over-reverse (double backward): ``vjp(grad L)(φ)(v)``,
  valid because ``H`` is symmetric. It works where a forward-mode rule is missing.

Both compose with ``torch.func.vmap`` over tasks and cost about two gradients.
Where many products are taken at the same point (a linear solver's iterations),
:func:`hvp_operator` records the gradient computation once and replays only its
reverse pass per product (``"revrev"``), which saves one gradient per product.
``"auto"`` (the default) picks the mode measured faster for the device
(:data:`DEFAULT_MODE`; the measurements: ``python -m metagrad_bench.hvp_modes``, results
pages *hvp_modes_cpu* and *gpu_h200*). Forward-over-reverse also fails inside
``F.mse_loss``'s backward on every torch release tried ("ZeroTensors are immutable").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor
from torch.func import grad, jvp, vjp

from ._pytree import Params

HVP_MODES = ("auto", "fwdrev", "revrev")

DEFAULT_MODE = {"cpu": "revrev", "cuda": "revrev"}
"""The mode ``"auto"`` takes per device type: double backward, measured faster on the
sinusoid workloads on CPU and on an H200 (see the module docstring for the results)."""

Loss = Callable[[Params, Any], Tensor]


def resolve_mode(mode: str, device: Any) -> str:
    """Map ``"auto"`` to the measured default for ``device``; check the name."""
    if mode not in HVP_MODES:
        raise ValueError(f"hvp mode must be one of {HVP_MODES}, got {mode!r}")
    if mode == "auto":
        return DEFAULT_MODE.get(getattr(device, "type", str(device)), "revrev")
    return mode


def hvp(loss: Loss, params: Params, batch: Any, v: Params, mode: str = "auto") -> Params:
    """``∇²_params loss(params, batch) · v`` as a dict shaped like ``params``.

    Parameters
    ----------
    loss : callable
        ``loss(params, batch) -> 0-dim tensor``.
    params : dict of str to Tensor
        The point where the Hessian is taken.
    batch
        The batch the loss is evaluated on.
    v : dict of str to Tensor
        The vector, shaped like ``params``.
    mode : {"auto", "revrev", "fwdrev"}
        Double backward, forward-over-reverse, or the measured default for the device.

    Returns
    -------
    dict of str to Tensor
        H v, shaped like ``params``.
    """
    if mode == "auto":
        mode = resolve_mode(mode, next(iter(params.values())).device)

    def gradient(p: Params) -> Params:
        return grad(loss)(p, batch)

    if mode == "fwdrev":
        try:
            return jvp(gradient, (params,), (v,))[1]
        except RuntimeError as err:
            if "ZeroTensors are immutable" not in str(err):
                raise
            raise RuntimeError(
                "forward-over-reverse Hessian-vector products (hvp='fwdrev') failed inside the "
                "loss's backward with torch's 'ZeroTensors are immutable' (F.mse_loss's "
                "backward does this on every torch release tried); use hvp='revrev' or "
                "'auto' (the same numbers), or write the MSE as ((a - b) ** 2).mean()") from err
    if mode == "revrev":
        pullback = vjp(gradient, params)[1]
        return pullback(v)[0]
    raise ValueError(f"hvp mode must be one of {HVP_MODES}, got {mode!r}")


def hvp_operator(loss: Loss, params: Params, batch: Any,
                 mode: str = "auto") -> Callable[[Params], Params]:
    """``v ↦ ∇²_params loss(params, batch) · v`` for many v at one point.

    ``"revrev"``: the gradient's graph is built once (``torch.func.vjp`` of ∇L at
    ``params``) and each product is one reverse pass through it, where :func:`hvp` runs
    the forward and backward of ∇L again for every v. ``"fwdrev"``: each product is a
    forward-mode pass, as in :func:`hvp` (``torch.func.linearize`` would record it once,
    but it traces with ``make_fx`` and does not run under ``vmap``).
    """
    if mode == "auto":
        mode = resolve_mode(mode, next(iter(params.values())).device)
    if mode == "fwdrev":
        return lambda v: hvp(loss, params, batch, v, "fwdrev")
    if mode != "revrev":
        raise ValueError(f"hvp mode must be one of {HVP_MODES}, got {mode!r}")

    def gradient(p: Params) -> Params:
        return grad(loss)(p, batch)

    pullback = vjp(gradient, params)[1]
    return lambda v: pullback(v)[0]
