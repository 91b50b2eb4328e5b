"""The method comparison as a reproducible study: several seeds, hyperparameters chosen on
validation tasks, each implicit method also in the regime where its theory holds, a
matched-cost view, and the meta-gradient's accuracy along training.

**Variants.** A variant is one method in one regime, and a row of every table:

* ``k1`` — Finn et al.'s protocol (2017, §5.1): one inner step (K = 1) at
  ``inner_lr`` = 0.01 per meta-step, each method at its sinusoid settings
  (``train_settings``), with its ``tuning_grid`` tried when tuning (Reptile, joint
  training at K = 1, tunes its K). For the implicit methods one proximal step does not
  solve the proximal problem, so their direction is not the implicit gradient there.
* ``solved`` (the implicit methods, variants ``<method>-solved``) — the regime of
  Rajeswaran et al. 2019's theory: the proximal problem min_φ L_tr(φ) + λ/2‖φ − θ‖²
  nearly solved and the linear system nearly solved. With the Hessian spectrum of the
  training loss assumed in [μ, L] = :data:`CURVATURE`, λ > −μ makes the problem strongly
  convex and :func:`solved_settings` takes the fastest proximal GD step
  α = 2/(2λ + μ + L) (so α(λ + L) < 2, contraction ρ = (L − μ)/(2λ + μ + L) per step),
  K = ⌈log tol/log ρ⌉ steps, and the method's ``solver_settings`` for the linear system
  to reach ``tol`` = :data:`TOL`. Each run's probe measures the curvature and the proximal
  residual, and its log counts the "proximal inner loop cannot converge" findings, which
  must be zero.
* ``matched`` (variant ``<method>-matched``) — every method at MAML's cost per meta-step,
  4 gradient-equivalents per task (``method.gradient_equivalents()``), spending it on
  its own inner steps or solver iterations (:func:`matched_settings`), the other
  settings as chosen for ``k1``.

**Inner-loop forms** (``Study.inner``, e.g. learned per-entry step sizes): applied to
every variant, named as :func:`metagrad.train.config.variant_name` says (``metasgd``,
``maml+per_step``). A study may also list its variants explicitly (``Study.variant_list``,
as the learned-rates study of :mod:`metagrad.train.study.rates` does).

**Evaluation** is the same for every variant: plain GD with ``eval_lr`` = 0.01 from the
learned initialisation on the held-out test tasks, MSE after 1, 5 and 10 steps; and each
variant's own adaptation (its K steps, update rule and step sizes) beside it.

**Tuning** (:func:`tune`): each variant's own settings (:func:`tuning_grid`) are chosen by
the validation MSE after one adaptation step (``Variant.score = "gd"``), or after the
variant's own adaptation (``"own"``: for learned step sizes, which only its own adaptation
uses), from runs with their own training seed (:data:`TUNING_SEED`) evaluated on the
validation tasks (their own seed). The test tasks are never drawn while tuning.

**Output layout** (``out``): ``study.json`` (the specification and what was chosen),
``runs/<variant>/seed<s>/`` and ``baselines/seed<s>/`` (one finished run each, resumable),
``tuning/<variant>/<point>/`` and ``tuning.csv``; the tables and figures are written
by :mod:`metagrad.train.study.aggregate`.
"""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from ...methods import METHOD_NAMES, ImplicitMethod, is_implicit, method_class
from .. import outdir
from ..baseline import BaselineResult, train_baseline
from ..config import TrainConfig, train_defaults, variant_name
from ..loop import FILES, TrainingDiverged, train
from ..status import status as _status

REGIMES = {
    "k1": "K = 1 inner step at inner_lr (Finn et al. 2017); K tuned where a method tunes it",
    "solved": "proximal problem and linear system solved to 1e-3 (the implicit methods)",
    "matched": "4 gradient-equivalents per task per meta-step (MAML K = 1's cost)",
}
TUNING_SEED = 100
"""Initialisation and task stream of every tuning run (the study's seeds are others)."""
CURVATURE = (-100.0, 500.0)
"""Assumed range [μ, L] of the training loss's Hessian eigenvalues along training for the
``solved`` regime (the measured range with margins: ``bench/results/train_defaults``)."""
TOL = 1e-3
"""Contraction asked of the proximal loop and of the linear solver in the ``solved`` regime."""
MATCHED_COST = 4.0
"""Gradient-equivalents per task per meta-step of the ``matched`` view: MAML with K = 1."""
BASELINE_EVAL_LRS = (0.003, 0.01, 0.03, 0.1)
"""Fine-tuning step sizes tried for the joint-training baseline in a study."""


def tuning_grid(method: str, regime: str) -> dict[str, tuple]:
    """The values of ``method``'s own settings tried in ``regime`` (read off the class:
    ``tuning_grid``, or ``solved_tuning_grid`` for the solved regime; the matched view
    reuses the ``k1`` choice and has none)."""
    cls = method_class(method)
    if regime == "solved":
        return dict(cls.solved_tuning_grid) if issubclass(cls, ImplicitMethod) else {}
    return dict(cls.tuning_grid) if regime == "k1" else {}


def solved_settings(method: str, lam: float, curvature: tuple[float, float] = CURVATURE,
                    tol: float = TOL) -> dict[str, Any]:
    """``steps``, ``inner_lr`` and the solver's settings that solve the proximal problem
    and the linear system to ``tol`` for any Hessian spectrum inside ``curvature`` (see
    the module docstring). Raises ``ValueError`` when λ + μ ≤ 0 (not strongly convex)."""
    cls = method_class(method)
    if not issubclass(cls, ImplicitMethod):
        raise ValueError(f"the solved regime is for the implicit methods, not {method}")
    lo, hi = curvature
    if not lam + lo > 0:
        raise ValueError(f"the solved regime needs lam > {-lo:g} (the proximal problem must "
                         f"be strongly convex for curvature down to {lo:g}), got {lam!r}")
    rho = (hi - lo) / (2 * lam + lo + hi)
    return {"lam": lam, "inner_lr": 2.0 / (2 * lam + lo + hi),
            "steps": max(1, math.ceil(math.log(tol) / math.log(rho))),
            **cls.solver_settings(lam, curvature, tol)}


def matched_settings(method: str, settings: dict[str, Any],
                     budget: float = MATCHED_COST) -> dict[str, Any]:
    """The smallest change of ``settings`` that makes ``gradient_equivalents()`` equal
    ``budget``: a method with a solver-iteration setting (an integer setting besides
    ``steps``: CG iterations, Neumann terms) spends it there at K = 1, the others on
    their inner steps."""
    cls = method_class(method)
    reads = cls.setting_names()
    base = {k: v for k, v in settings.items() if k in reads}
    defaults = cls.default_settings()
    solver = [k for k in reads if k != "steps" and isinstance(defaults[k], int)]
    knob, fixed = (solver[0], {"steps": 1}) if solver else ("steps", {})
    for n in range(0, 64):
        trial: dict[str, Any] = {**base, **fixed, knob: n}
        if cls(**trial).gradient_equivalents() == budget:
            return trial
    raise ValueError(f"no setting of {method} costs exactly {budget:g} gradient-equivalents")


SCORES = ("gd", "own")
"""What tuning minimises on the validation tasks: the MSE after one plain GD step at
``eval_lr`` (``"gd"``), or after the variant's own adaptation (``"own"``)."""


@dataclass(frozen=True)
class Variant:
    """One method in one regime: ``fixed`` settings, a ``grid`` to choose from, the
    inner-loop forms ``inner``, and the validation ``score`` tuning minimises."""

    name: str
    method: str
    regime: str
    fixed: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, tuple] = field(default_factory=dict)
    inner: tuple[str, ...] = ()
    score: str = "gd"

    def __post_init__(self) -> None:
        if self.score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {self.score!r}")

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON values (``study.json``); :meth:`from_dict` reads them back."""
        return {"name": self.name, "method": self.method, "regime": self.regime,
                "fixed": dict(self.fixed), "grid": {k: list(v) for k, v in self.grid.items()},
                "inner": list(self.inner), "score": self.score}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Variant:
        return cls(d["name"], d["method"], d["regime"], dict(d.get("fixed", {})),
                   {k: tuple(v) for k, v in d.get("grid", {}).items()},
                   tuple(d.get("inner", ())), d.get("score", "gd"))

    def points(self) -> list[dict[str, Any]]:
        """Every combination of the grid's values (one empty point without a grid)."""
        keys = sorted(self.grid)
        return [dict(zip(keys, values, strict=True))
                for values in itertools.product(*(self.grid[k] for k in keys))]

    def settings(self, chosen: dict[str, Any]) -> dict[str, Any]:
        """The run settings for grid point ``chosen`` (``solved`` derives its own from λ)."""
        s = {**self.fixed, **chosen}
        if self.regime == "solved":
            s = {**s, **solved_settings(self.method, s["lam"])}
        return s


def variants(methods: Sequence[str], regimes: Sequence[str], tune: bool,
             given: dict[str, Any] | None = None, inner: Sequence[str] = ()) -> list[Variant]:
    """The study's variants, in table order: ``k1`` for every method, then ``solved`` for
    the implicit ones, then ``matched`` for every method, each with the inner-loop forms
    ``inner``. Without ``tune`` the grids are dropped and the hand-set defaults (or
    ``given`` settings) are used."""
    given = given or {}
    inner = tuple(inner)
    out: list[Variant] = []
    for regime in [r for r in REGIMES if r in regimes]:
        for m in methods:
            if regime == "solved" and not is_implicit(m):
                continue
            base = variant_name(m, inner)
            name = base if regime == "k1" else f"{base}-{regime}"
            fixed = {k: v for k, v in given.items() if k in (*method_class(m).setting_names(),
                                                             "meta_lr")}
            # A setting given explicitly stays as given: it is not tuned.
            grid = {k: v for k, v in tuning_grid(m, regime).items()
                    if k not in fixed} if tune else {}
            if regime == "solved" and "lam" not in grid and "lam" not in fixed:
                fixed["lam"] = train_defaults(m)["lam"]
            out.append(Variant(name, m, regime, fixed, grid, inner,
                               "own" if grid and inner else "gd"))
    return out


def point_id(point: dict[str, Any]) -> str:
    return ",".join(f"{k}={v:g}" for k, v in sorted(point.items())) or "default"


COMPILED_METHODS = tuple(name for name in METHOD_NAMES if is_implicit(name))
"""Methods whose meta-gradient a study compiles when ``base.compile`` is set: the implicit
ones, whose eager meta-step is expensive enough that compiling a configuration pays within
one run. Runs of at least :data:`COMPILE_ALL_FROM` meta-steps (the finn2017 preset's
70 000) compile every method. The timings behind this rule: ``bench/results/train_defaults``."""
COMPILE_ALL_FROM = 20_000


def config_for(base: TrainConfig, variant: Variant, settings: dict[str, Any],
               seed: int) -> TrainConfig:
    """``base`` with the variant's method, its settings and ``seed``; the evaluation step
    size stays ``base``'s (the same adaptation for every variant)."""
    fields = {k: v for k, v in settings.items()
              if k in (*method_class(variant.method).setting_names(), "meta_lr")}
    return replace(base, method=variant.method, inner=variant.inner, seed=seed,
                   eval_lr=base.eval_lr or base.inner_lr, compile=base.compile and (
                       variant.method in COMPILED_METHODS
                       or base.meta_steps >= COMPILE_ALL_FROM),
                   **fields).resolved()


@dataclass
class Study:
    """What a study runs (see the module docstring)."""

    base: TrainConfig
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    regimes: tuple[str, ...] = ("k1",)
    tune: bool = False
    given: dict[str, Any] = field(default_factory=dict)
    tuning_seed: int = TUNING_SEED
    baseline_eval_lrs: tuple[float, ...] = ()
    """The baseline's fine-tuning step sizes; empty: ``base.baseline_eval_lrs`` if set
    (e.g. by the finn2017 preset), else :data:`BASELINE_EVAL_LRS`."""
    inner: tuple[str, ...] = ()
    """Inner-loop forms applied to every generated variant."""
    variant_list: tuple[Variant, ...] = ()
    """The variants, given explicitly (then ``methods``, ``regimes`` and ``inner`` only
    describe them); empty: generated by :func:`variants`."""

    def eval_lrs(self) -> tuple[float, ...]:
        return tuple(self.baseline_eval_lrs or self.base.baseline_eval_lrs or BASELINE_EVAL_LRS)

    def variants(self) -> list[Variant]:
        if self.variant_list:
            return [replace(v, grid={}) if not self.tune else v for v in self.variant_list]
        return variants(self.methods, self.regimes, self.tune, self.given, self.inner)

    def spec(self) -> dict[str, Any]:
        out = {"base": self.base.as_dict(), "methods": list(self.methods),
               "seeds": list(self.seeds), "regimes": list(self.regimes), "tune": self.tune,
               "given": self.given, "tuning_seed": self.tuning_seed,
               "baseline_eval_lrs": list(self.eval_lrs()),
               "grids": {v.name: {k: list(vals) for k, vals in v.grid.items()}
                         for v in self.variants()},
               "curvature": list(CURVATURE), "tol": TOL, "matched_cost": MATCHED_COST}
        if self.inner:
            out["inner"] = list(self.inner)
        if self.variant_list:
            out["variants"] = [v.as_dict() for v in self.variant_list]
        return out


def spec_variants(spec: dict[str, Any]) -> list[Variant]:
    """The variants of a study from its ``study.json`` specification."""
    if spec.get("variants"):
        listed = [Variant.from_dict(d) for d in spec["variants"]]
        return [v if spec["tune"] else replace(v, grid={}) for v in listed]
    return variants(spec["methods"], spec["regimes"], spec["tune"], spec.get("given"),
                    spec.get("inner", ()))


def _finished(folder: Path, cfg: TrainConfig) -> dict[str, Any] | None:
    """The summary of a finished run in ``folder`` made with ``cfg``'s settings, if any."""
    path = folder / FILES["summary"]
    if not path.is_file():
        return None
    summary = outdir.read_json(path)
    return summary if summary.get("identity") == outdir.as_json_value(cfg.identity()) \
        else None


def tune(study: Study, out: Path, *, resume: bool, progress: bool) -> dict[str, dict[str, Any]]:
    """Choose each variant's settings on the validation tasks (see the module docstring).
    Returns variant name → chosen grid point, and writes ``tuning.csv``."""
    rows: list[dict[str, Any]] = []
    chosen: dict[str, dict[str, Any]] = {}
    tuning_base = replace(study.base, probe_at=())
    for v in study.variants():
        if v.regime == "matched" or not v.grid:
            continue
        scores: dict[str, float] = {}
        for point in v.points():
            cfg = config_for(tuning_base, v, v.settings(point), study.tuning_seed)
            folder = out / "tuning" / v.name / point_id(point)
            row: dict[str, Any] = {"variant": v.name, "point": point_id(point), **point}
            summary = _finished(folder, cfg) if resume else None
            try:
                if summary is None:
                    summary = train(cfg, folder, overwrite=True, progress=progress,
                                    evaluate="validation", label=f"{v.name} {point_id(point)}"
                                    ).summary
                assert summary is not None
                val = summary["validation"]["post_update_mse"]
                # (a summary written before the own adaptation was evaluated has none)
                own = summary.get("validation_own", {}).get("mse_by_steps", [math.nan])
                row.update(validation_mse_1=val["1"], validation_mse_10=val[str(max(
                    cfg.eval_steps))], validation_own_mse=own[-1],
                    status=_status(summary),
                    proximal_rate_steps=summary["finding_steps"].get("proximal_rate", 0))
            except TrainingDiverged as err:
                print(f"metagrad train: tuning {v.name} {point_id(point)}: {err}",
                      file=sys.stderr)
                row.update(validation_mse_1=math.inf, validation_mse_10=math.inf,
                           validation_own_mse=math.inf,
                           status=f"diverged at meta-step {err.meta_step}")
            row["score"] = v.score
            score = row["validation_own_mse" if v.score == "own" else "validation_mse_1"]
            scores[point_id(point)] = score if score is not None and math.isfinite(score) \
                else math.inf
            rows.append(row)
        best = min(v.points(), key=lambda p: scores[point_id(p)])
        if not math.isfinite(scores[point_id(best)]):
            raise ValueError(f"tuning {v.name}: every grid point diverged or was not finite")
        chosen[v.name] = best
        for row in rows:
            if row["variant"] == v.name:
                row["chosen"] = row["point"] == point_id(best)
    pd.DataFrame(rows).to_csv(out / "tuning.csv", index=False)
    return chosen


def run(study: Study, out: Path, *, resume: bool = False, progress: bool = True
        ) -> dict[str, Any]:
    """Run the study into ``out`` (tuning first if asked, then every seed's baseline and
    variants); finished runs are kept on ``resume``. Returns the study record written to
    ``study.json``."""
    record: dict[str, Any] = {"spec": study.spec(), "chosen": {}, "settings": {},
                              "diverged": {}}
    chosen = tune(study, out, resume=resume, progress=progress) if study.tune else {}
    for v in study.variants():
        # the matched view reuses its k1 variant's choice
        point = chosen.get(v.name.removesuffix("-matched"), {})
        settings = v.settings(point)
        if v.regime == "matched":
            full = config_for(study.base, replace(v, regime="k1"), settings, 0)
            settings = {**settings, **matched_settings(v.method, full.as_dict())}
        record["chosen"][v.name] = point
        record["settings"][v.name] = settings
    outdir.write_json(out / "study.json", record)

    base = replace(study.base, baseline_eval_lrs=study.eval_lrs())
    baselines = {seed: _baseline(base, seed, out / "baselines" / f"seed{seed}", resume,
                                 progress) for seed in study.seeds}
    # Variant by variant (each configuration is compiled once), seed by seed.
    for v in study.variants():
        for seed in study.seeds:
            baseline = baselines[seed]
            cfg = config_for(base, v, record["settings"][v.name], seed)
            folder = out / "runs" / v.name / f"seed{seed}"
            if resume and _finished(folder, cfg) is not None:
                continue
            has_snapshot = (folder / FILES["snapshot"]).is_file()
            try:
                train(cfg, folder, resume=resume and has_snapshot, overwrite=True,
                      progress=progress, baseline=baseline, label=v.name)
            except TrainingDiverged as err:
                print(f"metagrad train: {err}", file=sys.stderr)
                record["diverged"].setdefault(v.name, {})[str(seed)] = err.meta_step
                outdir.write_json(out / "study.json", record)
    outdir.write_json(out / "study.json", record)
    return record


def _baseline(base: TrainConfig, seed: int, folder: Path, resume: bool,
              progress: bool) -> BaselineResult:
    """The seed's joint-training baseline, trained once and kept in ``folder``."""
    # The baseline reads no method setting; its settings are resolved with the registry's
    # first method, so that its identity is the same whichever methods a study runs.
    cfg = replace(base, method=METHOD_NAMES[0], inner=(), seed=seed).resolved()
    path = folder / "summary.json"
    identity = outdir.as_json_value({"baseline": cfg.identity()})
    if resume and path.is_file():
        summary = outdir.read_json(path)
        if summary.get("identity") == identity:
            preds = pd.read_csv(folder / FILES["predictions"])
            return BaselineResult({}, summary["evaluation"], preds,
                                  summary["evaluation"]["train_time_s"])
    result = train_baseline(cfg, progress=progress)
    folder.mkdir(parents=True, exist_ok=True)
    result.predictions.to_csv(folder / FILES["predictions"], index=False)
    if result.per_task is not None:
        result.per_task.to_csv(folder / FILES["per_task"], index=False)
    outdir.write_json(path, {"identity": identity, "evaluation": result.evaluation})
    return result


__all__ = ["BASELINE_EVAL_LRS", "COMPILED_METHODS", "COMPILE_ALL_FROM", "CURVATURE",
           "MATCHED_COST", "REGIMES", "SCORES", "TOL", "TUNING_SEED", "Study", "Variant",
           "config_for", "matched_settings", "point_id", "run", "solved_settings",
           "spec_variants", "tune", "tuning_grid", "variants"]
