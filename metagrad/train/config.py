"""Every setting of a meta-training run, its defaults, and the objects built from them.

Defaults follow Finn, Abbeel & Levine 2017 §5.1 (sinusoid regression): MLP 1-40-40-1
ReLU, meta-batch 25, 10 + 10 shots, ``inner_lr`` 0.01, Adam with ``meta_lr`` 1e-3,
K = ``steps`` = 1 inner step in meta-training (up to 10 at test time), 2000 meta-steps
(the quick experiment), float32.

Settings of the methods beyond ``steps`` and ``inner_lr`` take the method class's
default unless :data:`SETTING_DEFAULTS` chose another value for this problem, with the
measurements that chose it:

* IMAML ``lam = 300``: meta-training sharpens the net (the largest train-loss Hessian
  eigenvalue L grows from ~35 at initialisation to 150-400, the smallest reaches about
  −75), CG needs I + H/λ positive definite (λ > −λ_min(H)), and with λ = 100 the system
  turned indefinite and training went unstable (measured).
* Neumann ``lam = 1000`` with η = 1: the series converges only while ρ(H/λ) < 1; at
  λ = 100 or 300 (also η = 0.5 at λ = 100) it diverged after 400-600 meta-steps and
  wrecked training. Larger λ means a milder correction (λ → ∞ is FOMAML). With K = 1 the
  proximal inner problem is far from solved whatever λ, so the implicit gradient is a
  preconditioned first-order direction here, not the exact bilevel gradient; the
  diagnostics say so ("the proximal inner loop cannot converge"), counted in the log.
* Penalty ``lam = 0.001``: ‖∇L_tr(φ)‖² is 1-20 here against L_val ≈ 1-4; at λ = 0.1 the
  penalty won and training collapsed to a near-constant predictor (held-out MSE 4.07 ≈
  E[A²]/2 before and after adaptation); λ = 0.01 only matched the joint-training
  baseline; λ = 0.001 meta-learns (post-update MSE 1.25 over 2000 meta-steps).
* Reptile takes its own outer rule θ ← θ + ε(φ̄ − θ), i.e. plain SGD with rate ε on
  g = θ − φ̄, with ``meta_lr`` = ε = 1 (Nichol et al. 2018 use an outer step of 1,
  annealed; g already carries α, so ε = 1 with α = 0.01 moves θ by 0.01·∇L_tr for K = 1).
  For K = 1 Reptile *is* joint training on the train split; it meta-learns for K ≥ 2.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from .._validate import non_negative_int, positive_float, positive_int
from ..distributions import Sinusoid
from ..methods import METHOD_NAMES, SETTINGS, Method, method_class
from ..models import mlp

ADAM_META_LR = 1e-3
"""Finn et al.'s meta learning rate (Adam), also used for the joint-training baseline."""
REPTILE_META_LR = 1.0
"""Reptile's outer step size ε (see the module docstring)."""
SETTING_DEFAULTS: dict[str, dict[str, Any]] = {
    "imaml": {"lam": 300.0},
    "neumann": {"lam": 1000.0},
    "penalty": {"lam": 0.001},
}
"""Values chosen for sinusoid meta-training where a method's class default does not suit
it (see the module docstring); every other setting takes the class default."""
METHOD_SETTINGS = tuple(s for s in SETTINGS if s not in ("steps", "inner_lr"))
"""Settings that only some methods read; a run keeps them None for the others."""


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a meta-training run (the CLI flags, one vocabulary)."""

    method: str = "maml"
    meta_steps: int = 2000
    steps: int = 1
    inner_lr: float = 0.01
    lam: float | None = None
    cg_iters: int | None = None
    terms: int | None = None
    step: float | None = None
    meta_batch: int = 25
    meta_lr: float | None = None
    seed: int = 0
    device: str = "cpu"
    shots: int = 10
    query: int = 10
    hidden: tuple[int, ...] = (40, 40)
    snapshot_every: int = 100
    heldout_tasks: int = 500
    heldout_query: int = 100
    heldout_seed: int = 2017
    eval_steps: tuple[int, ...] = (1, 5, 10)
    threads: int = 1
    """CPU threads for torch ops during the run. One by default: every op here is tiny
    (40-wide layers, 10 points per task), so intra-op threads only add synchronisation;
    on the 2-core dev machine one thread made a meta-step 2-7x faster than two."""

    # Settings that may change between a run and its resumption. (A different ``threads``
    # count can change float rounding, so bit-identical resumes need the same count.)
    RESUMABLE_CHANGES = ("meta_steps", "snapshot_every", "threads")

    def resolved(self) -> TrainConfig:
        """Validate, and fill the method's settings (settings it does not read stay None;
        giving one is an error)."""
        cls = method_class(self.method)
        reads = cls.setting_names()
        given = {name: getattr(self, name) for name in METHOD_SETTINGS}
        ignored = sorted(name for name, value in given.items()
                         if value is not None and name not in reads)
        if ignored:
            raise ValueError(f"{self.method} does not read {', '.join(ignored)} "
                             f"(it reads {', '.join(reads)})")
        chosen = {**cls.default_settings(), **SETTING_DEFAULTS.get(self.method, {})}
        filled: dict[str, Any] = {name: (chosen[name] if given[name] is None else given[name])
                  if name in reads else None for name in METHOD_SETTINGS}
        meta_lr = self.meta_lr
        if meta_lr is None:
            meta_lr = REPTILE_META_LR if self.method == "reptile" else ADAM_META_LR
        cfg = replace(self, meta_lr=meta_lr, hidden=tuple(self.hidden),
                      eval_steps=tuple(sorted(set(self.eval_steps))), **filled)
        cfg._validate()
        return cfg

    def _validate(self) -> None:
        for name in ("meta_steps", "meta_batch", "shots", "query", "heldout_tasks",
                     "heldout_query", "threads"):
            positive_int(name, getattr(self, name))
        for name in ("steps", "snapshot_every", "seed", "heldout_seed"):
            non_negative_int(name, getattr(self, name))
        for name in ("inner_lr", "meta_lr"):
            positive_float(name, getattr(self, name))
        if not self.hidden:
            raise ValueError("hidden must list at least one layer width")
        for width in self.hidden:
            positive_int("hidden width", width)
        if not self.eval_steps:
            raise ValueError("eval_steps must list at least one number of adaptation steps")
        for k in self.eval_steps:
            positive_int("eval_steps entry", k)
        make_method(self)  # the method checks its own settings (lam, cg_iters, terms)

    @property
    def optimizer(self) -> str:
        return "sgd" if self.method == "reptile" else "adam"

    def identity(self) -> dict[str, Any]:
        """Settings that determine the run's numbers; a snapshot must match all of them."""
        d = self.as_dict()
        for name in (*self.RESUMABLE_CHANGES, "optimizer"):
            d.pop(name)
        return d

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        d["eval_steps"] = list(self.eval_steps)
        d["optimizer"] = self.optimizer
        return d


def make_method(cfg: TrainConfig) -> Method:
    """The metagrad method object for ``cfg`` (settings filled by :meth:`TrainConfig.resolved`)."""
    cls = method_class(cfg.method)
    return cls(**{name: getattr(cfg, name) for name in cls.setting_names()})


def make_model(cfg: TrainConfig) -> torch.nn.Sequential:
    """The 1-h₁-…-1 ReLU MLP, initialised from ``cfg.seed`` (float32)."""
    return mlp((1, *cfg.hidden, 1), seed=cfg.seed, dtype=torch.float32, device=cfg.device)


def task_family(cfg: TrainConfig) -> Sinusoid:
    return Sinusoid(shots=cfg.shots, query=cfg.query)


def heldout_tasks(cfg: TrainConfig):
    """The fixed evaluation tasks: ``heldout_seed``, ``shots`` support and ``heldout_query``
    query points each (more query points than in training: a less noisy MSE)."""
    return Sinusoid(shots=cfg.shots, query=cfg.heldout_query).sample(
        cfg.heldout_tasks, seed=cfg.heldout_seed, device=cfg.device)


__all__ = ["ADAM_META_LR", "METHOD_NAMES", "REPTILE_META_LR", "SETTING_DEFAULTS", "TrainConfig",
           "heldout_tasks", "make_method", "make_model", "task_family"]
