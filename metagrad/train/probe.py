"""How accurate a method's meta-gradient is *during* meta-training.

At chosen meta-steps (``TrainConfig.probe_at``) the current parameters θ (the float32
parameters the run trains) are frozen and, on ``probe_tasks`` fixed tasks drawn from
``probe_seed`` (never the test tasks), each task's meta-gradient gᵢ of the run's own
method (float32, as in training) is compared with the exact ones computed by the
independent float64 oracle (``metagrad.verify.compare.exact_target``):

* ``err_maml``, ``cos_maml``: against exact MAML at the same ``steps`` K and
  ``inner_lr`` α, ∇_θ L_val(θ⁽ᴷ⁾(θ)) (Finn et al. 2017, eq. 1) — every method;
* ``err_implicit``, ``cos_implicit``: against the exact implicit gradient
  λ(H(φ*) + λI)⁻¹∇L_val(φ*) at the run's λ, φ* the exact proximal minimiser
  (Rajeswaran et al. 2019, eq. 6-7) — IMAML and Neumann only.

``err`` is the relative error ‖gᵢ − g*ᵢ‖/‖g*ᵢ‖ and ``cos`` the cosine between them,
each averaged over the probe tasks. The cosine matters as much as the error: Adam's
update is nearly invariant to the gradient's scale, and Reptile's θ − φ is a gradient
scaled by α, so its relative error is near 1 by construction while its direction may
still be close.

On the ReLU net the implicit gradient is defined only where the proximal problem
min_φ L_tr(φ) + λ/2‖φ − θ‖² has a strict minimiser at which L_tr is twice
differentiable: the oracle's Newton iteration then converges to roundoff. Where φ*
sits on a ReLU kink the oracle refuses (it raises), and the task counts as undefined:
``implicit_defined`` says for how many of the probe tasks it was defined, and the
implicit errors average over those. (The smooth ``sinusoid_tanh`` net would always
define it, but it is a different experiment from the one trained here.)

Besides, for the implicit methods: ``prox_residual``, the largest over tasks of
‖∇L_tr(φ_K) + λ(φ_K − θ)‖ / ‖∇L_tr(θ)‖ (float64), how far the K proximal steps are
from solving the proximal problem (0: solved); and for every method ``curvature``, the
largest |eigenvalue| of ∇²L_tr(θ) over the probe tasks (power iteration), the L of the
step-size conditions α·L < 2 and α(λ + L) < 2. ``findings`` lists the kinds of the
method's own numerical findings on the probe tasks.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import replace
from typing import Any

import torch
from torch.func import grad
from torch.nn import functional as F

from .. import _pytree as pt
from .._module import module_loss
from .._task import Task
from ..diagnose import largest_curvature
from ..distributions import Sinusoid
from ..methods import MAML, Method
from ..problems import Problem
from .config import TrainConfig, make_model

COLUMNS = ["meta_step", "err_maml", "cos_maml", "err_implicit", "cos_implicit",
           "implicit_defined", "prox_residual", "curvature", "findings", "probe_time_s"]

_KEYS = itertools.count()


def _flat(g: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([v.detach().double().reshape(-1) for v in g.values()])


def _compare(g: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    denom = float(target.norm())
    err = float((g - target).norm()) / denom if denom > 0 else float((g - target).norm())
    cos = float(g @ target) / (float(g.norm()) * denom) if denom > 0 and g.norm() > 0 \
        else math.nan
    return err, cos


def probe_tasks(cfg: TrainConfig) -> Task:
    """The fixed probe tasks (float64), from ``probe_seed``."""
    return Sinusoid(shots=cfg.shots, query=cfg.query).sample(
        cfg.probe_tasks, seed=cfg.probe_seed, dtype=torch.float64, device=cfg.device)


class GradientProbe:
    """Measures one run's meta-gradient against the exact ones (see the module docstring)."""

    def __init__(self, cfg: TrainConfig, method: Method, loss):
        from ..verify import compare  # the oracle's client: loaded only when probing

        self._compare = compare
        self.cfg = cfg
        self.method = replace(method, diagnose="record")
        self.loss = loss
        self.tasks64 = probe_tasks(cfg)
        self.tasks32 = self.tasks64.to(torch.float32)
        model64 = make_model(cfg).to(torch.float64)
        self.loss64 = module_loss(model64, F.mse_loss)

    def _one(self, i: int, tasks: Task) -> Task:
        pick = lambda x: x[i:i + 1]  # noqa: E731
        return Task((pick(tasks.train[0]), pick(tasks.train[1])),
                    (pick(tasks.val[0]), pick(tasks.val[1])))

    def measure(self, params: dict[str, torch.Tensor], meta_step: int) -> dict[str, Any]:
        started = time.perf_counter()
        m, cfg = self.method, self.cfg
        theta32 = {k: v.detach().float() for k, v in params.items()}
        theta64 = {k: v.detach().double() for k, v in params.items()}
        maml_settings = {"steps": m.steps, "inner_lr": m.inner_lr}
        errs: dict[str, list[float]] = {"err_maml": [], "cos_maml": [], "err_implicit": [],
                                        "cos_implicit": []}
        residuals = []
        for i in range(cfg.probe_tasks):
            one32, one64 = self._one(i, self.tasks32), self._one(i, self.tasks64)
            g = _flat(m(self.loss, theta32, one32).grad)
            problem = Problem(f"train-probe-{next(_KEYS)}", self.loss64,
                                            theta64, one64)
            # every method against exact MAML at the same K and inner_lr
            err, cos = _compare(g, self._compare.exact_target(problem, MAML.name,
                                                              maml_settings))
            errs["err_maml"].append(err)
            errs["cos_maml"].append(cos)
            if m.implicit:
                lam = float(m.config()["lam"])
                try:
                    target = self._compare.exact_target(problem, m.name, {"lam": lam})
                except ValueError:  # no strict proximal minimiser (a ReLU kink)
                    pass
                else:
                    err, cos = _compare(g, target)
                    errs["err_implicit"].append(err)
                    errs["cos_implicit"].append(cos)
                train = one64.task(0)[0]
                inner = m.inner_loop.run(self.loss64, theta64, train)
                stationarity = pt.axpy(lam, pt.sub(inner.phi, theta64),
                                       grad(self.loss64)(inner.phi, train))
                residuals.append(float(pt.norm(stationarity))
                                 / float(pt.norm(grad(self.loss64)(theta64, train))))
        found = m(self.loss, theta32, self.tasks32).findings
        curvature = largest_curvature(self.loss64, theta64, self.tasks64.train, iters=50)
        mean = lambda v: sum(v) / len(v) if v else math.nan  # noqa: E731
        return {
            "meta_step": meta_step,
            **{k: mean(v) for k, v in errs.items()},
            "implicit_defined": len(errs["err_implicit"]) if m.implicit else math.nan,
            "prox_residual": max(residuals) if residuals else math.nan,
            "curvature": float(curvature.max()),
            "findings": "+".join(sorted({f.kind for f in found})),
            "probe_time_s": time.perf_counter() - started,
        }


__all__ = ["COLUMNS", "GradientProbe", "probe_tasks"]
