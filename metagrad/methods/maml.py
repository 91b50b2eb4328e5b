"""MAML: the exact second-order meta-gradient through K inner steps."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor
from torch.func import grad_and_value, vmap

from .. import _pytree as pt
from .._hvp import Loss, resolve_mode
from .._inner import InnerResult
from .._pytree import Params
from ._backward import BACKWARD_MODES, Trajectory, Unrolled, sweep_scanned
from ._base import Method, TaskOutput


@dataclass(frozen=True)
class MAML(Method):
    """Model-agnostic meta-learning (Finn, Abbeel & Levine 2017, "Model-Agnostic
    Meta-Learning for Fast Adaptation of Deep Networks", eq. (1)-(2)).

    For one task, K steps of gradient descent θ⁽ᵏ⁺¹⁾ = θ⁽ᵏ⁾ − α ∇L_tr(θ⁽ᵏ⁾) from
    θ⁽⁰⁾ = θ give φ = θ⁽ᴷ⁾, and the exact meta-gradient is

        gᵢ = ∇_θ L_val(θ⁽ᴷ⁾(θ))
           = (I − αH(θ⁽⁰⁾)) (I − αH(θ⁽¹⁾)) ⋯ (I − αH(θ⁽ᴷ⁻¹⁾)) ∇L_val(φ),   H = ∇²L_tr.

    Cost about 3K + 1 gradient-equivalents per task (plus the recomputation of a
    checkpointed trajectory). The inner loop diverges once α·λ_max(H) ≥ 2; a rising
    inner loss is reported.

    Fields: ``steps`` (K), ``inner_lr`` (α), the options ``batching``, ``hvp``,
    ``diagnose`` of :class:`metagrad.Method`, and

    * ``backward``: ``"unrolled"`` (default, autograd through the inner loop),
      ``"trajectory"`` (stored iterates and a Hessian-vector-product sweep: the same
      number with less memory), or an object :class:`metagrad.Unrolled` /
      :class:`metagrad.Trajectory`; after construction it is always the object;
    * ``checkpoint``: with ``backward="trajectory"``, keep every c-th iterate only and
      recompute the rest (``MAML(backward=mg.Trajectory(checkpoint=c))`` says the same).
    """

    backward: str | Unrolled | Trajectory = field(default="unrolled", kw_only=True)
    checkpoint: int | None = field(default=None, kw_only=True)

    name: ClassVar[str] = "maml"
    title: ClassVar[str] = "MAML (second order)"
    paper: ClassVar[str] = ("Finn, Abbeel & Levine 2017, Model-Agnostic Meta-Learning for "
                            "Fast Adaptation of Deep Networks (ICML)")
    gradient_of: ClassVar[str | None] = "meta_objective"
    code_paths: ClassVar[dict[str, tuple[Any, ...]]] = {
        **Method.code_paths, "backward": tuple(BACKWARD_MODES)}

    @classmethod
    def verify_plan(cls, inner_lr: float, lam: float) -> list[dict[str, Any]]:
        # K = 0 too: MAML is then the plain gradient of L_val, a limiting case worth a row
        return [dict(steps=k, inner_lr=inner_lr) for k in (0, 1, 5)]

    def __post_init__(self) -> None:
        super().__post_init__()
        mode = self.backward
        if isinstance(mode, str):
            if mode not in BACKWARD_MODES:
                raise ValueError(f"backward must be one of {tuple(BACKWARD_MODES)} or a "
                                 f"backward-mode object, got {mode!r}")
            if self.checkpoint is not None and mode != Trajectory.name:
                raise ValueError("checkpoint=... applies to backward='trajectory' only, "
                                 f"got backward={mode!r}")
            mode = Trajectory(self.checkpoint) if mode == Trajectory.name else Unrolled()
        elif not isinstance(mode, (Unrolled, Trajectory)):
            raise ValueError(f"backward must be one of {tuple(BACKWARD_MODES)} or a "
                             f"backward-mode object, got {mode!r}")
        elif self.checkpoint is not None and self.checkpoint != getattr(mode, "checkpoint", None):
            raise ValueError(f"checkpoint={self.checkpoint!r} contradicts backward={mode!r}; "
                             "give the interval in one place")
        # One representation after construction: the mode object, with ``checkpoint``
        # mirroring it (so ``dataclasses.replace`` and equality behave).
        object.__setattr__(self, "backward", mode)
        object.__setattr__(self, "checkpoint", getattr(mode, "checkpoint", None))

    def gradient_equivalents(self) -> float:
        assert not isinstance(self.backward, str)  # normalised in __post_init__
        # the loop's K gradients, K Hessian-vector products back through it, ∇L_val(φ)
        return (3 * self.inner_loop.gradient_equivalents() + 1
                + self.backward.recomputed_gradients(self.steps))

    def _per_task(self, loss: Loss, theta: Params, train: Any, val: Any) -> TaskOutput:
        assert not isinstance(self.backward, str)
        return self.backward.per_task(loss, theta, train, val, self.inner_loop, self.hvp)

    # -- the scanned form (metagrad.compile) -----------------------------------------------
    scan_needs_trajectory: ClassVar[bool] = True

    @property
    def scannable(self) -> str | None:
        if isinstance(self.backward, Trajectory) and self.backward.checkpoint not in (None, 1):
            return ("the scanned loop stores every inner iterate for the backward sweep, so a "
                    "checkpointed trajectory cannot use it")
        return None

    def batched_from_scan(self, loss: Loss, theta: Params, train: Any, val: Any,
                          inner: InnerResult, trajectory: Params | None
                          ) -> tuple[Params, dict[str, Tensor]]:
        """The reverse sweep v ← v − αH(θ⁽ᵏ⁾)v from v = ∇L_val(φ) over the stored iterates
        (the ``backward="trajectory"`` algorithm: the same meta-gradient as autograd through
        the loop), for all tasks at once."""
        assert trajectory is not None
        mode = resolve_mode(self.hvp, next(iter(theta.values())).device)
        v, post = vmap(grad_and_value(loss))(inner.phi, val)
        v = sweep_scanned(loss, train, trajectory, v, self.inner_lr, mode)
        # The eager method's diagnostics (Method._task_result), batched.
        diag = {"inner_losses": inner.inner_losses, "pre_update_loss": inner.pre_update_loss,
                "post_update_loss": post, "grad_norm": pt.norm_per_task(v)}
        if self.diagnose != "off":  # the last iterate is checked too, as in the eager call
            diag["final_inner_loss"] = vmap(loss)(inner.phi, train)
        return pt.mean0(v), diag
