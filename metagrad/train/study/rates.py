"""Learned inner step sizes beside MAML on sinusoid regression: ``metagrad train --preset
rates``.

For each support size K in :data:`SHOTS` (trained and tested with K support points) one
study of :mod:`metagrad.train.study.design`, in ``out/shots<K>/``, with these variants
(:func:`rate_variants`), every seed sharing initialisation, task stream and test tasks:

* ``maml``: MAML, one inner step at ``inner_lr`` = 0.01 (Finn et al. 2017, §5.1);
* ``metasgd``: MAML with one learned step size per parameter entry, one inner step
  (Meta-SGD, Li, Zhou, Chen & Li 2017);
* ``maml-k5``: MAML, :data:`STEPS` inner steps at 0.01;
* ``maml+per_step-k5``: one learned step size per layer and inner step (MAML++'s
  per-layer per-step rates, Antoniou, Edwards & Storkey 2019, §4), :data:`STEPS` steps;
* ``maml+per_step+multistep-k5``: the same with MAML++'s multi-step loss (the validation
  loss after every inner step, equal weights 1/K).

The learned rates start at ``inner_lr``, chosen per variant from :data:`RATE_GRID` on the
validation tasks (never the test tasks) by the MSE after the variant's own adaptation;
the MAML rows keep the protocol's 0.01 (nothing to tune). Every run is evaluated twice on
the held-out test tasks: plain GD at ``eval_lr`` = 0.01 (the study's table, the same for
every variant) and the variant's own adaptation (its K steps with its learned rates: the
evaluation that defines Meta-SGD, and the one the published numbers use).

The report (:mod:`metagrad.train.study.rates_report`) puts the own-adaptation test MSE of
every variant and support size in one table with the study's intervals (seeds and test
tasks), judges the planned comparisons (:func:`comparisons`) with Holm's correction over
all of them, and sets the result beside the numbers Li et al. 2017 published for MAML and
Meta-SGD on this benchmark (:data:`PUBLISHED`), with the protocols side by side
(:data:`PROTOCOL`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ...methods import MAML
from .. import outdir
from ..config import TrainConfig, variant_name
from ..loop import FILES
from .design import Study, Variant
from .design import run as run_study

SHOTS = (5, 10, 20)
"""Support sizes K: each is trained and tested with K support points (Li et al. 2017)."""
SEEDS = (0, 1, 2, 3, 4)
STEPS = 5
"""Inner steps of the per-step variants (MAML++'s default on its benchmarks): per-step
rates and the multi-step loss mean something only with several steps."""
RATE_GRID = (0.003, 0.01, 0.03)
"""Starting values of the learned rates tried on the validation tasks (Li et al. 2017 draw
one value from [0.005, 0.1]; MAML's fixed 0.01 lies in the middle of the grid)."""
FILE = "rates.json"


def folder(shots: int) -> str:
    """The subfolder of the study with ``shots`` support points."""
    return f"shots{shots}"


def rate_variants(steps: int = STEPS) -> tuple[Variant, ...]:
    """The variants of each support size's study, in table order (see the module
    docstring)."""
    maml = MAML.name
    grid = {"inner_lr": RATE_GRID}
    k = {"steps": steps}
    tag = f"-k{steps}"
    return (
        Variant(maml, maml, "k1"),
        Variant(variant_name(maml, ("per_entry",)), maml, "k1", inner=("per_entry",),
                grid=grid, score="own"),
        Variant(maml + tag, maml, f"k{steps}", fixed=k),
        Variant(variant_name(maml, ("per_step",)) + tag, maml, f"k{steps}", fixed=k,
                inner=("per_step",), grid=grid, score="own"),
        Variant(variant_name(maml, ("per_step", "multistep")) + tag, maml, f"k{steps}",
                fixed=k, inner=("per_step", "multistep"), grid=grid, score="own"),
    )


def comparisons(steps: int = STEPS) -> tuple[tuple[str, str, str], ...]:
    """The planned comparisons (a, b, question) of every support size, judged on the test
    MSE after each variant's own adaptation, a − b, with Holm's correction over all of them
    and all support sizes together."""
    v = [x.name for x in rate_variants(steps)]
    maml, metasgd, maml_k, per_step, multistep = v
    return (
        (metasgd, maml, "learned per-entry rates (Meta-SGD) against MAML, one step"),
        (per_step, maml_k, f"learned per-layer per-step rates against MAML, {steps} steps"),
        (multistep, maml_k, f"per-step rates with the multi-step loss against MAML, "
                            f"{steps} steps"),
        (multistep, per_step, "the multi-step loss, with per-step rates"),
    )


PUBLISHED: dict[str, Any] = {
    "source": "Li, Zhou, Chen & Li 2017, Meta-SGD: Learning to Learn Quickly for Few-Shot "
              "Learning, arXiv:1707.09835, section 4.1, Table 1",
    "interval": "95 % confidence interval over the 100 test tasks, as published",
    "variants": {MAML.name: MAML.name, variant_name(MAML.name, ("per_entry",)): "Meta-SGD"},
    "mse": {
        # K (as JSON keys): [mean, half-width of the published 95 % interval]
        MAML.name: {"5": [1.13, 0.18], "10": [0.85, 0.14], "20": [0.71, 0.12]},
        variant_name(MAML.name, ("per_entry",)): {"5": [0.90, 0.16], "10": [0.53, 0.09],
                                                 "20": [0.31, 0.05]},
    },
}
"""The test MSEs Li et al. 2017 published for MAML and Meta-SGD on sinusoid regression
(both after one adaptation step, Meta-SGD with its learned rates). MAML++ (Antoniou et al.
2019) published no sinusoid numbers."""

PROTOCOL: tuple[tuple[str, str], ...] = (
    ("task family", "y = A sin(ωx + b), A ~ U[0.1, 5], ω ~ U[0.8, 1.2], b ~ U[0, π], "
                    "x ~ U[−5, 5]"),
    ("network", "1-40-40-1 ReLU"),
    ("initialisation", "weights truncated normal (std 0.01), biases zero; Meta-SGD's rates "
                       "all one value drawn from U[0.005, 0.1]"),
    ("inner loop", "one step; MAML at α = 0.01"),
    ("meta-training", "60 000 meta-steps, meta-batch 4 tasks, K support + 10 query points"),
    ("test tasks", "100 tasks, K support points, 100 query points evenly spaced on [−5, 5]"),
    ("interval", "95 % over the 100 test tasks of one trained model"),
)
"""Li et al. 2017's protocol (§4.1), aspect by aspect; :func:`ours` describes this study's."""


def ours(base: TrainConfig) -> dict[str, str]:
    """This study's protocol, for the aspects of :data:`PROTOCOL`, from its settings."""
    init = ("weights truncated normal (std 0.01), biases zero" if base.init == "finn2017"
            else "PyTorch's default Linear initialisation")
    return {
        "task family": "y = A sin(x − b), A ~ U[0.1, 5], b ~ U[0, π], x ~ U[−5, 5] (no "
                       "frequency: Finn et al. 2017)",
        "network": "1-" + "-".join(map(str, base.hidden)) + "-1 ReLU",
        "initialisation": f"{init}; learned rates all start at one value chosen from "
                          f"{', '.join(map(str, RATE_GRID))} on validation tasks",
        "inner loop": f"one step (maml, metasgd) or {STEPS} (the -k{STEPS} rows); MAML at "
                      f"α = {base.inner_lr}",
        "meta-training": f"{base.meta_steps} meta-steps, meta-batch {base.meta_batch} tasks, "
                         f"K support + {base.query} query points",
        "test tasks": f"{base.heldout_tasks} tasks, K support points, {base.heldout_query} "
                      "query points drawn from U[−5, 5]",
        "interval": "95 % over the training seeds and the test tasks together",
    }


@dataclass
class RatesStudy:
    """What ``--preset rates`` runs (see the module docstring)."""

    base: TrainConfig
    shots: tuple[int, ...] = SHOTS
    seeds: tuple[int, ...] = SEEDS
    tune: bool = True
    steps: int = STEPS
    variants: tuple[Variant, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.variants:
            self.variants = rate_variants(self.steps)

    def study(self, shots: int) -> Study:
        """The study of one support size."""
        base = replace(self.base, shots=shots, eval_shots=(), inner=())
        return Study(base=base, methods=tuple(dict.fromkeys(v.method for v in self.variants)),
                     seeds=self.seeds, regimes=tuple(dict.fromkeys(
                         v.regime for v in self.variants)), tune=self.tune,
                     variant_list=self.variants)

    def spec(self) -> dict[str, Any]:
        return {"base": self.base.as_dict(), "shots": list(self.shots),
                "seeds": list(self.seeds), "tune": self.tune, "steps": self.steps,
                "variants": [v.as_dict() for v in self.variants],
                "comparisons": [list(c) for c in comparisons(self.steps)],
                "folders": {str(k): folder(k) for k in self.shots},
                "published": PUBLISHED, "protocol": [list(p) for p in PROTOCOL],
                "ours": ours(self.base)}


def run(spec: RatesStudy, out: Path, *, resume: bool = False, progress: bool = True
        ) -> dict[str, Any]:
    """Run every support size's study into ``out/shots<K>/`` (resumable: finished runs are
    kept), and write ``rates.json``; returns its record (the specification and each
    study's record)."""
    record: dict[str, Any] = {"spec": spec.spec(), "studies": {}}
    outdir.write_json(out / FILE, record)
    for shots in spec.shots:
        sub = out / folder(shots)
        sub.mkdir(parents=True, exist_ok=True)
        record["studies"][str(shots)] = run_study(spec.study(shots), sub, resume=resume,
                                                  progress=progress)
        outdir.write_json(out / FILE, record)
    return record


def read(out: Path) -> dict[str, Any]:
    """The record ``run`` wrote to ``out/rates.json``."""
    return json.loads((out / FILE).read_text())


def traced_runs(out: Path, record: dict[str, Any]) -> list[tuple[str, Path, TrainConfig]]:
    """The runs a trace covers: the first seed of every variant of every support size."""
    from .trace import config_from

    runs = []
    seed = record["spec"]["seeds"][0]
    for shots, study in record["studies"].items():
        for name in study["settings"]:
            path = out / folder(int(shots)) / "runs" / name / f"seed{seed}"
            if (path / FILES["summary"]).is_file():
                cfg = config_from(outdir.read_json(path / FILES["summary"])["config"])
                runs.append((f"{name} (K = {shots})", path, cfg))
    return runs


__all__ = ["FILE", "PROTOCOL", "PUBLISHED", "RATE_GRID", "SEEDS", "SHOTS", "STEPS",
           "RatesStudy", "comparisons", "folder", "ours", "rate_variants", "read", "run",
           "traced_runs"]
