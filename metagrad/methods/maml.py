"""MAML: the exact second-order meta-gradient through K inner steps."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor
from torch.func import grad_and_value, vmap

from .. import _pytree as pt
from .. import _rates
from .._batched import task_dims
from .._hvp import Loss, resolve_mode
from .._inner import InnerResult
from .._pytree import Params
from .._rules import GD
from ._backward import BACKWARD_MODES, Trajectory, Unrolled, sweep_scanned, sweep_step
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

    **Inner-loop variants, all exact.** With step sizes αₖ given as tensors (``inner_lr``:
    0-dim, per parameter tensor, per entry, per step; see :class:`metagrad.InnerLoop`) the
    loop is θ⁽ᵏ⁺¹⁾ = θ⁽ᵏ⁾ − αₖ ⊙ ∇L_tr(θ⁽ᵏ⁾): Meta-SGD (Li et al. 2017) learns one rate per
    entry, MAML++ (Antoniou et al. 2019) one per layer and step, and a parameter left out
    of the rates is not adapted (ANIL, Raghu et al. 2020). The call then also returns the
    exact meta-gradient with respect to the rates, ``out.hyper_grad["inner_lr"]`` (same
    keys and shapes), ∂F/∂αₖ = −(Jₖ₊₁ᵀ∇L_val(φ)) ⊙ ∇L_tr(θ⁽ᵏ⁾) summed over the entries a
    rate covers, Jₖ₊₁ = ∂φ/∂θ⁽ᵏ⁺¹⁾. With ``inner=mg.Momentum(...)`` or ``mg.Adam(...)`` the
    loop is that optimizer (its state starting at zero in every task), differentiated
    through every step; a momentum β given as a tensor is a meta-parameter too
    (``out.hyper_grad["beta"]``). With ``step_weights=(w₁, …, w_K)`` the objective is
    MAML++'s multi-step loss (Antoniou et al. 2019, §4) F = Σₖ wₖ L_val(θ⁽ᵏ⁾), k = 1 … K,
    and gᵢ = ∇_θ F (``post_update_loss`` stays L_val(φ)).

    Parameters
    ----------
    steps : int
        K ≥ 0, the inner steps per task.
    inner_lr : float, Tensor or dict of str to Tensor
        The inner step size α > 0, or learned rates: a 0-dim tensor, or one tensor per
        adapted parameter (per tensor, per entry, per step; see :class:`InnerLoop`).
    inner : GD, Momentum, Adam or str
        The inner update rule: ``mg.GD()`` (default), ``mg.Momentum(beta)``, ``mg.Adam()``,
        or its name.
    batching : {"vmap", "loop"}
        All tasks at once with ``torch.func.vmap`` (default), or a Python loop over them.
    hvp : {"auto", "revrev", "fwdrev"}
        How Hessian-vector products are taken (``"auto"``: the measured default).
    diagnose : {"warn", "error", "record", "off"}
        What the numerical checks do with a problem they find (``metagrad.diagnose``).
    backward : {"unrolled", "trajectory"}, Unrolled or Trajectory
        ``"unrolled"`` (default: autograd through the inner loop) or ``"trajectory"``
        (stored iterates and a Hessian-vector-product sweep: the same number with less
        memory, for plain gradient descent with a float ``inner_lr``); after construction
        always the object.
    checkpoint : int or None
        With ``backward="trajectory"``, keep every c-th iterate only and recompute the rest
        (``backward=mg.Trajectory(checkpoint=c)`` says the same).
    step_weights : tuple of float or None
        w₁ … w_K of the multi-step loss, or None (the last step's loss only).
    """

    backward: str | Unrolled | Trajectory = field(default="unrolled", kw_only=True)
    checkpoint: int | None = field(default=None, kw_only=True)
    step_weights: tuple[float, ...] | None = field(default=None, kw_only=True)

    name: ClassVar[str] = "maml"
    title: ClassVar[str] = "MAML (second order)"
    paper: ClassVar[str] = ("Finn, Abbeel & Levine 2017, Model-Agnostic Meta-Learning for "
                            "Fast Adaptation of Deep Networks (ICML)")
    gradient_of: ClassVar[str | None] = "meta_objective"
    hyper_gradient: ClassVar[str | None] = "exact"
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
        if self.step_weights is not None:
            object.__setattr__(self, "step_weights", _weights(self.step_weights, self.steps))
        if isinstance(mode, Trajectory):
            plain = (isinstance(self.inner_lr, float) and isinstance(self.inner, GD)
                     and self.step_weights is None)
            if not plain:
                raise ValueError(
                    "backward='trajectory' sweeps back through plain gradient descent with a "
                    "float inner_lr; use the default backward='unrolled' for rate tensors, "
                    "momentum or Adam inner loops and step_weights")

    def gradient_equivalents(self) -> float:
        assert not isinstance(self.backward, str)  # normalised in __post_init__
        # the loop's K gradients, K Hessian-vector products back through it, ∇L_val(φ)
        return (3 * self.inner_loop.gradient_equivalents() + 1
                + self.backward.recomputed_gradients(self.steps))

    def _per_task(self, loss: Loss, theta: Params, train: Any, val: Any,
                  hyper: dict[str, Any]) -> TaskOutput:
        assert not isinstance(self.backward, str)
        if isinstance(self.backward, Trajectory):  # plain GD, no meta-parameters (checked)
            return self.backward.per_task(loss, theta, train, val, self.inner_loop, self.hvp)
        return self.backward.per_task(loss, theta, train, val, self.inner_loop, self.hvp,
                                      hyper, self.step_weights)

    def batched_eager(self, loss: Loss, theta: Params, train: Any, val: Any,
                      hyper: dict[str, Any]
                      ) -> tuple[Params, dict[str, Any], dict[str, Tensor]] | None:
        if self.batching != "vmap" or not isinstance(self.backward, Unrolled):
            return None
        return self.backward.batched(loss, theta, train, val, self.inner_loop, hyper,
                                     self.step_weights, (task_dims(train), task_dims(val)),
                                     self.diagnose != "off")

    # -- the scanned form (metagrad.compile) -----------------------------------------------
    scan_needs_trajectory: ClassVar[bool] = True

    @property
    def scannable(self) -> str | None:
        if isinstance(self.backward, Trajectory) and self.backward.checkpoint not in (None, 1):
            return ("the scanned loop stores every inner iterate for the backward sweep, so a "
                    "checkpointed trajectory cannot use it")
        if not (isinstance(self.inner_lr, float) and isinstance(self.inner, GD)
                and self.step_weights is None):
            return ("the scanned backward sweep is written for plain gradient descent with a "
                    "float inner_lr")
        return None

    def batched_from_scan(self, loss: Loss, theta: Params, train: Any, val: Any,
                          inner: InnerResult, trajectory: Params | None
                          ) -> tuple[Params, dict[str, Any], dict[str, Tensor]]:
        """The reverse sweep v ← v − αH(θ⁽ᵏ⁾)v from v = ∇L_val(φ) over the stored iterates
        (the ``backward="trajectory"`` algorithm: the same meta-gradient as autograd through
        the loop), for all tasks at once: :meth:`sweep_start`, one ``scan`` of
        :meth:`sweep_step`, :meth:`sweep_finish`."""
        assert trajectory is not None
        v, post = self.sweep_start(loss, inner.phi, val)
        mode = resolve_mode(self.hvp, next(iter(theta.values())).device)
        v = sweep_scanned(loss, train, trajectory, v, _rates.number(self.inner_lr), mode)
        return self.sweep_finish(loss, train, inner, v, post)

    def sweep_start(self, loss: Loss, phi: Params, val: Any) -> tuple[Params, Tensor]:
        """The reverse sweep's start for every task: v = ∇L_val(φ), and L_val(φ)."""
        return vmap(grad_and_value(loss))(phi, val)

    def sweep_step(self, loss: Loss, point: Params, train: Any, v: Params) -> Params:
        """One step back for every task: v ← v − αH(θ⁽ᵏ⁾)v at the task's iterate θ⁽ᵏ⁾."""
        mode = resolve_mode(self.hvp, next(iter(v.values())).device)
        return sweep_step(loss, train, point, v, _rates.number(self.inner_lr), mode)

    def sweep_finish(self, loss: Loss, train: Any, inner: InnerResult, v: Params, post: Tensor
                     ) -> tuple[Params, dict[str, Any], dict[str, Tensor]]:
        """(mean gᵢ, no meta-parameter gradients, per-task diagnostics) from the swept v."""
        # The eager method's diagnostics (Method._task_result), batched.
        diag = {"inner_losses": inner.inner_losses, "pre_update_loss": inner.pre_update_loss,
                "post_update_loss": post, "grad_norm": pt.norm_per_task(v)}
        if self.diagnose != "off":  # the last iterate is checked too, as in the eager call
            diag["final_inner_loss"] = vmap(loss)(inner.phi, train)
        return pt.mean0(v), {}, diag

    # -- what the audit (metagrad.testing) may compare it with ------------------------------
    audit_family: ClassVar[tuple[str, dict[str, Any]] | None] = ("unrolled", {"output": "maml"})
    audit_mistakes: ClassVar[tuple[str, ...]] = (
        "first_order", "graph_first_step", "detached", "last_step_squared",
        "last_step_doubled")


def _weights(weights: Any, steps: int) -> tuple[float, ...]:
    """The multi-step loss's weights, one per inner step, as finite floats."""
    import math

    values = tuple(weights)
    if steps == 0 or len(values) != steps:
        raise ValueError(f"step_weights must give one weight per inner step ({steps}), got "
                         f"{len(values)}" + (" (the multi-step loss needs steps ≥ 1)"
                                             if steps == 0 else ""))
    out = []
    for i, w in enumerate(values):
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise ValueError(f"step_weights[{i}] must be a finite number, got {w!r}")
        out.append(float(w))
    return tuple(out)

