"""Reptile: the displacement of the inner loop as the meta-direction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from .. import _pytree as pt
from .._hvp import Loss
from .._inner import InnerResult
from .._pytree import Params
from .._task import Task
from ..diagnose import Finding
from ._base import Method, TaskOutput


@dataclass(frozen=True)
class Reptile(Method):
    """Reptile (Nichol, Achiam & Schulman 2018, "On First-Order Meta-Learning
    Algorithms", Alg. 1).

        gᵢ = θ − φ = α Σ_{k=0..K−1} ∇L_tr(θ⁽ᵏ⁾),   φ = θ⁽ᴷ⁾,

    the displacement of K plain GD steps on the train batch. An outer SGD step with
    rate ε is then θ ← θ − ε g = θ + ε(φ − θ). It reads only the train batch (the
    val batch gives the post-update loss). For K = 1 it is α ∇L_tr(θ): joint training,
    not meta-learning. Cost K gradient-equivalents per task.

    Parameters
    ----------
    steps : int
        K ≥ 0, the inner steps per task.
    inner_lr : float, Tensor or dict of str to Tensor
        The inner step size α > 0, or fixed rates (tensors that do not require grad): a
        0-dim tensor, or one tensor per adapted parameter (per tensor, per entry, per step;
        see :class:`InnerLoop`).
    inner : GD, Momentum, Adam or str
        The inner update rule: ``mg.GD()`` (default), ``mg.Momentum(beta)``, ``mg.Adam()``,
        or its name.
    batching : {"vmap", "loop"}
        All tasks at once with ``torch.func.vmap`` (default), or a Python loop over them.
    hvp : {"auto", "revrev", "fwdrev"}
        How Hessian-vector products are taken (``"auto"``: the measured default).
    diagnose : {"warn", "error", "record", "off"}
        What the numerical checks do with a problem they find (``metagrad.diagnose``).
    """

    name: ClassVar[str] = "reptile"
    title: ClassVar[str] = "Reptile"
    paper: ClassVar[str] = ("Nichol, Achiam & Schulman 2018, On First-Order Meta-Learning "
                            "Algorithms (arXiv:1803.02999)")
    gradient_of: ClassVar[str | None] = "train_along_path"
    hyper_gradient_note: ClassVar[str] = (
        "Reptile's direction θ − φ is not the gradient of an objective in them.")

    def gradient_equivalents(self) -> float:
        return self.inner_loop.gradient_equivalents()

    def _findings(self, loss: Loss, theta: Params, tasks: Task,
                  diag: dict[str, Tensor]) -> list[Finding]:
        found = super()._findings(loss, theta, tasks, diag)
        if self.steps == 0:
            found.append(Finding(
                "not_solved", "steps=0: no inner step ran, so Reptile's direction θ − φ is "
                "zero in {where}; use steps ≥ 1", tuple(range(tasks.num_tasks))))
        return found

    def _from_inner(self, loss: Loss, theta: Params, train: Any, val: Any,
                    inner: InnerResult) -> TaskOutput:
        post = loss(inner.phi, val)
        g = pt.sub(theta, inner.phi)
        return TaskOutput(g, inner.pre_update_loss, post, {"inner_losses": inner.inner_losses},
                          inner.phi)

    # Meta-training: its own outer rule θ ← θ + ε(φ̄ − θ) = θ − ε g, with ε = 1 (Nichol et
    # al. 2018 use an outer step of 1); for K = 0, g = 0 and nothing moves.
    outer_optimizer: ClassVar[str] = "sgd"
    outer_lr: ClassVar[float] = 1.0
    min_train_steps: ClassVar[int] = 1
    tuning_grid: ClassVar[dict[str, tuple]] = {"meta_lr": (0.1, 0.3, 1.0, 3.0),
                                               "steps": (1, 3, 10)}

    audit_family: ClassVar[tuple[str, dict[str, Any]] | None] = (
        "unrolled", {"output": "displacement"})
    audit_mistakes: ClassVar[tuple[str, ...]] = ("displacement_early", "reptile_unscaled",
                                                 "last_step_squared", "last_step_doubled")
