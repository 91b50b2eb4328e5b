"""``metagrad train``: meta-train one or all methods on sinusoid regression.

    metagrad train --method all --out runs/train         # 2000 meta-steps per method
    metagrad train --method maml --meta-steps 500 --snapshot-every 50
    metagrad train --method maml --meta-steps 500 --resume  # continue a killed run exactly
    metagrad train --method all --seeds 0 1 2 3 4 --tune --regime both --matched-cost
    metagrad train --preset study --out study/          # the same, with probes, compiled
    metagrad train --preset finn2017 --out finn2017/    # Finn et al. 2017's protocol
    metagrad train --method metasgd --meta-steps 500    # Meta-SGD: learned per-entry rates
    metagrad train --method maml --inner per_step multistep --steps 5   # MAML++'s rates
    metagrad train --preset rates --out rates/          # learned rates beside MAML, K = 5, 10, 20

Three layouts of ``--out``:

* one method, one seed: the run's own files (``train_log.csv``, ``snapshot.pt``,
  ``summary.json``, ``heldout_per_task.csv``, ``predictions.csv``) plus
  ``comparison.csv`` and the figures;
* ``--method all``, one seed: one subfolder per method, and ``comparison.csv`` and the
  figures ``learning_curves.png``, ``heldout_mse.png``, ``predictions.png`` on top;
* a study (``--seeds``, ``--tune``, ``--regime``, ``--matched-cost`` or
  ``--preset study``): see :mod:`metagrad.train.study`; tables with intervals across
  seeds, which differences they resolve, tuning, and accuracy along training;
* ``--preset rates``: one study per support size K in ``shots<K>/`` and the report on top
  (:mod:`metagrad.train.study.rates`).

**Inner-loop forms.** ``--inner FORM ...`` applies named forms of ``metagrad.INNER_FORMS``
to the chosen method (refused with one line where the method cannot run one), and
``--method metasgd`` / ``--method anil`` spell MAML with ``per_entry`` / ``anil``
(``metagrad.train.config.SPELLINGS``). ``summary.json`` and the config keep the method and
its forms (``method``, ``inner``); folders and tables name the run by its variant name
(``metasgd``, ``anil``, ``maml+per_step+multistep``).

The folder is locked while a run writes into it, and one layout is never written over
another without ``--overwrite`` (:mod:`metagrad.train.outdir`). Every flag either acts on
the chosen method(s) or is refused.

Under ``torchrun`` (one method or ``--method all``; a study is refused) the processes
share each meta-batch and rank 0 alone writes (:mod:`metagrad.train.ranks`)::

    torchrun --standalone --nproc-per-node 8 -m metagrad train --device cuda --meta-batch 64
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pandas as pd

from .._app import UsageError, check_device, markdown_table
from .._forms import INNER_FORMS
from ..methods import METHOD_NAMES, is_implicit, method_class
from . import outdir, plots
from . import ranks as _ranks
from .baseline import train_baseline
from .config import METHOD_SETTINGS, SPELLINGS, TrainConfig, ordered_forms, train_defaults
from .loop import FILES, TrainingDiverged, TrainResult, check_world, train
from .status import status

FIGURES = {
    "curves": "learning_curves.png",
    "heldout": "heldout_mse.png",
    "predictions": "predictions.png",
}
STUDY_FIGURES = plots.STUDY_FIGURES
TABLES = ("comparison.csv", "differences.csv", "own_differences.csv", "probes.csv", "runs.csv",
          "tuning.csv", "per_task_means.csv", "study.json", "study.md", "finn2017.md",
          "finn2017.csv", "finn2017.png", "trace.json", "provenance.json", "rates.json",
          "rates.md", "rates.csv", "rates_differences.csv", "rates_published.csv",
          "rates.png")
PRESETS = ("finn2017", "study", "rates")
REGIME_CHOICES = {"k1": ("k1",), "solved": ("solved",), "both": ("k1", "solved")}

# Flags whose value is a TrainConfig field of the same name (None: not given).
CONFIG_FLAGS = ("meta_steps", "steps", "inner_lr", "eval_lr", *METHOD_SETTINGS, "meta_batch",
                "meta_lr", "device", "snapshot_every", "heldout_tasks", "threads", "compile",
                "check_every", "probe_at", "shots")


def add_parser(sub: argparse._SubParsersAction) -> None:
    d = TrainConfig()
    p = sub.add_parser(
        "train", help="meta-train on sinusoid regression: curves, held-out evaluation, resume",
        description="Meta-train on sinusoid regression (Finn et al. 2017) and evaluate on "
                    "held-out tasks against a joint-training baseline; with several seeds, "
                    "tuning and regimes, a comparison with intervals.")
    p.add_argument("--preset", choices=PRESETS, default=None,
                   help="finn2017: the protocol of Finn et al. 2017 (70 000 meta-steps, their "
                        "initialisation and test tasks; docs/finn2017.md); study: --method all "
                        "--seeds 0 1 2 3 4 --tune --regime both --matched-cost with probes at "
                        "meta-steps 0, 1/4, 1/2 and the end, checks every 10 steps, IMAML "
                        "and Neumann compiled; rates: Meta-SGD and per-step learned rates "
                        "beside MAML at K = 5, 10, 20 support points, 5 seeds, the starting "
                        "rates tuned (metagrad.train.study.rates). Flags given override the "
                        "preset's values")
    p.add_argument("--method", default=None, choices=[*METHOD_NAMES, *SPELLINGS, "all"],
                   help=f"method to train, or all of them (default: {d.method}); "
                        + ", ".join(f"{k} = {m} with --inner {' '.join(f)}"
                                    for k, (m, f) in SPELLINGS.items()))
    p.add_argument("--inner", nargs="+", default=None, metavar="FORM", choices=list(INNER_FORMS),
                   help="inner-loop forms applied to the method: "
                        + "; ".join(f"{n}: {f.title}" for n, f in INNER_FORMS.items())
                        + ". Learned rates start at --inner-lr and are stepped with θ")
    p.add_argument("--shots", type=int, nargs="+", default=None, metavar="K",
                   help=f"support points per task (default {d.shots}); several only with "
                        "--preset rates (one study per K)")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=None,
                       help="initialisation and task stream (default 0)")
    seeds.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED",
                       help="run every chosen method once per seed; tables give the mean and "
                            "95%% t intervals across seeds")
    p.add_argument("--tune", action=argparse.BooleanOptionalAction, default=None,
                   help="choose each method's own settings on its grid, on validation tasks "
                        "(never the test tasks), before the seeds run (--no-tune: keep the "
                        "default settings, e.g. under --preset study)")
    p.add_argument("--regime", choices=list(REGIME_CHOICES), default=None,
                   help="k1: one inner step as Finn et al. (default); solved: the implicit "
                        "methods (" + ", ".join(m for m in METHOD_NAMES if is_implicit(m))
                        + ") with the proximal problem solved (steps, inner_lr and solver "
                        "iterations derived from lam); both")
    p.add_argument("--matched-cost", action=argparse.BooleanOptionalAction, default=None,
                   help="also run every method at MAML K=1's cost per meta-step "
                        "(4 gradient-equivalents per task)")
    p.add_argument("--probe-at", type=int, nargs="+", default=None, metavar="META_STEP",
                   help="meta-steps at which the meta-gradient is compared with exact MAML "
                        "and the exact implicit gradient (float64 oracle, probe.csv)")
    p.add_argument("--meta-steps", type=int, default=None,
                   help=f"outer steps (default {d.meta_steps})")
    p.add_argument("--steps", type=int, default=None,
                   help=f"inner GD steps K during meta-training (default {d.steps}, as Finn "
                        "et al. for sinusoids)")
    p.add_argument("--inner-lr", type=float, default=None,
                   help=f"inner step size α (default {d.inner_lr})")
    p.add_argument("--eval-lr", type=float, default=None,
                   help="step size of the plain GD adaptation at evaluation "
                        "(default: --inner-lr)")
    for name in METHOD_SETTINGS:
        readers = [m for m in METHOD_NAMES if name in method_class(m).setting_names()]
        defaults = ", ".join(f"{m} {train_defaults(m)[name]:g}" for m in readers)
        p.add_argument(f"--{name.replace('_', '-')}", type=float if name in ("lam", "step")
                       else int, default=None, help=f"{name} (default: {defaults})")
    p.add_argument("--meta-batch", type=int, default=None,
                   help=f"tasks per meta-step (default {d.meta_batch})")
    p.add_argument("--meta-lr", type=float, default=None,
                   help="outer rate (default: the method's own, " + ", ".join(
                       f"{m} {method_class(m).outer_optimizer} {method_class(m).outer_lr:g}"
                       for m in METHOD_NAMES) + ")")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cpu)")
    p.add_argument("--out", default="train_out", help="output folder (default: train_out/)")
    p.add_argument("--snapshot-every", type=int, default=None,
                   help=f"write a resumable snapshot every N meta-steps, 0: only at the end "
                        f"(default {d.snapshot_every})")
    # The old spelling of --snapshot-every, kept working with a deprecation message.
    p.add_argument("--checkpoint-every", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--resume", action="store_true",
                   help="continue the run (or study) in --out from its snapshots (same "
                        "settings)")
    p.add_argument("--overwrite", action="store_true",
                   help="start again even if --out already holds results (removes them)")
    p.add_argument("--heldout-tasks", type=int, default=None,
                   help=f"held-out test tasks (default {d.heldout_tasks})")
    p.add_argument("--threads", type=int, default=None,
                   help=f"CPU threads for torch (default {d.threads}: faster for these tiny ops)")
    p.add_argument("--check-every", type=int, default=None, metavar="N",
                   help="run the methods' numerical checks on every N-th meta-step (default "
                        "1; 10 in --preset study: an inner loop that rises costs a power "
                        "iteration per checked step)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="compute the meta-gradient through metagrad.compile (default: off; "
                        "on in the presets)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


# --------------------------------------------------------------------------------------------
# resolving the flags: presets, defaults, and refusing flags that would do nothing


def _preset(name: str | None, meta_steps: int | None) -> dict[str, Any]:
    if name == "finn2017":
        from .study.finn2017 import PRESET
        return dict(PRESET)
    if name == "rates":
        from .study import rates
        return {"seeds": list(rates.SEEDS), "tune": True, "shots": list(rates.SHOTS),
                "check_every": 10}
    if name == "study":
        steps = meta_steps or TrainConfig().meta_steps
        return {"method": "all", "seeds": [0, 1, 2, 3, 4], "tune": True, "regime": "both",
                "matched_cost": True, "compile": True, "check_every": 10,
                "probe_at": sorted({0, steps // 4, steps // 2, steps})}
    return {}


def _given(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name) for name in (*CONFIG_FLAGS, "method", "seeds", "seed",
                                                    "tune", "regime", "matched_cost", "inner")
            if getattr(args, name, None) is not None}


def resolve(args: argparse.Namespace) -> dict[str, Any]:
    """The run's plan from the flags: ``kind`` (single, all, study), ``methods``, ``seeds``,
    ``base`` (a TrainConfig of the common settings), ``given`` (method settings given
    explicitly) and the study's options; refuses flags that would do nothing."""
    given = _given(args)
    if getattr(args, "checkpoint_every", None) is not None:
        print("metagrad train: --checkpoint-every is deprecated, use --snapshot-every (the "
              "same setting)", file=sys.stderr)
        if given.get("snapshot_every", args.checkpoint_every) != args.checkpoint_every:
            raise UsageError(f"--checkpoint-every {args.checkpoint_every} (the old spelling of "
                             f"--snapshot-every) disagrees with --snapshot-every "
                             f"{given['snapshot_every']}; give --snapshot-every only")
        given["snapshot_every"] = args.checkpoint_every
    preset = _preset(args.preset, given.get("meta_steps"))
    if args.preset == "finn2017" and given.get("method", preset["method"]) != preset["method"]:
        raise UsageError(f"--preset finn2017 is the protocol of {preset['method']}; --method "
                         f"{given['method']} would not be the protocol (use --method "
                         f"{preset['method']} or no --method)")
    if "seed" in given and "seeds" in preset:
        preset.pop("seeds")
    if args.preset == "rates":
        fixed = [f"--{k.replace('_', '-')}" for k in ("method", "inner", "steps", "regime",
                                                      "matched_cost", "probe_at")
                 if k in given]
        if fixed:
            raise UsageError(f"--preset rates defines its variants and evaluation; "
                             f"{fixed[0]} does not apply to it")
    opts = {**preset, **given}
    if args.resume and args.overwrite:
        raise UsageError("--resume continues the run in --out and --overwrite starts it "
                         "again; give one of them")
    shots_opt = opts.pop("shots", TrainConfig().shots)  # a preset may give one number
    shots = [int(k) for k in (shots_opt if isinstance(shots_opt, list) else [shots_opt])]
    if len(shots) != 1 and args.preset != "rates":
        raise UsageError(f"--shots takes one support size (several only with --preset "
                         f"rates), got {' '.join(map(str, shots))}")
    if len(set(shots)) != len(shots):
        raise UsageError(f"--shots lists a support size twice: {shots}")
    opts["shots"] = shots[0]
    method = opts.pop("method", TrainConfig().method)
    spelled: tuple[str, ...] = ()
    if method in SPELLINGS:
        method, spelled = SPELLINGS[method]
    try:
        inner = ordered_forms([*spelled, *opts.pop("inner", [])])
    except ValueError as err:
        raise UsageError(str(err)) from None
    methods = list(METHOD_NAMES) if method == "all" else [method]
    seeds = opts.pop("seeds", None)
    if seeds is not None and len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds lists a seed twice: {seeds}")
    tune = bool(opts.pop("tune", False))
    regimes = REGIME_CHOICES[opts.pop("regime", "k1")]
    matched = bool(opts.pop("matched_cost", False))
    seed = opts.pop("seed", 0)

    method_given = {k: opts[k] for k in (*METHOD_SETTINGS, "steps", "inner_lr", "meta_lr")
                    if k in given}
    implicit = [m for m in METHOD_NAMES if is_implicit(m)]
    if "solved" in regimes and not any(is_implicit(m) for m in methods):
        if "regime" in given:
            raise UsageError(f"--regime {args.regime}: the solved regime is for the implicit "
                             f"methods ({', '.join(implicit)}); {method} has no proximal "
                             "problem")
        # A preset's regime applies where it can: this method has the K = 1 regime only.
        regimes = tuple(r for r in regimes if r != "solved")
    k1_methods = methods if "k1" in regimes else []
    solved_derives = ("steps", "inner_lr", "cg_iters", "terms", "step")
    for name in METHOD_SETTINGS:  # a method setting no chosen method (in a regime) reads
        if name not in given:
            continue
        readers = [m for m in methods if name in method_class(m).setting_names()
                   and (m in k1_methods or name not in solved_derives or matched)]
        if not readers:
            why = " in the solved regime (derived from lam there)" \
                if "solved" in regimes and any(name in method_class(m).setting_names()
                                              for m in methods) else ""
            raise UsageError(f"--{name.replace('_', '-')} is not read by {method}{why}")
    if not k1_methods and not matched:
        for name in ("steps", "inner_lr"):
            if name in given:
                raise UsageError(f"--{name.replace('_', '-')} does nothing in the solved "
                                 "regime (derived from lam there)")
    if tune and args.preset != "rates":  # the rates preset's variants carry their grids
        from .study import variants
        chosen = variants(methods, regimes, True)
        tunable = {k for v in chosen for k in v.grid}
        if not tunable and "tune" in given:
            raise UsageError(f"--tune: {method} has nothing to tune (its protocol settings "
                             "are fixed); run without --tune")
        # A preset's --tune tunes what there is to tune, and a setting given explicitly
        # stays fixed (dropped from the grid); an explicit --tune with it is refused.
        tune = bool(tunable)
        clash = sorted(k for k in method_given if any(k in v.grid for v in chosen))
        if clash and "tune" in given:
            raise UsageError(f"--tune chooses {', '.join(clash)} for "
                             + ", ".join(v.name for v in chosen if set(v.grid) & set(clash))
                             + f"; do not also give --{clash[0].replace('_', '-')}")
    study = seeds is not None or tune or regimes != ("k1",) or matched
    kind = "rates" if args.preset == "rates" else \
        "study" if study else ("all" if method == "all" else "single")
    cfg_fields = {f.name for f in fields(TrainConfig)}
    common = {k: v for k, v in opts.items() if k in cfg_fields and k not in METHOD_SETTINGS}
    if "probe_at" in common:
        common["probe_at"] = tuple(common["probe_at"])
    for key in ("hidden", "eval_steps", "eval_shots", "baseline_eval_lrs"):
        if key in common:
            common[key] = tuple(common[key])
    base = TrainConfig(method=methods[0], seed=seed, **common)
    try:
        base.resolved()
        for name in methods:  # every chosen method must run the forms
            replace(base, method=name, inner=inner).resolved()
    except (ValueError, TypeError) as err:
        raise UsageError(str(err)) from None
    return {"kind": kind, "methods": methods, "seeds": seeds or [seed], "base": base,
            "given": method_given, "tune": tune, "regimes": regimes, "matched": matched,
            "preset": args.preset, "inner": inner, "shots": shots}


def _configs(plan: dict[str, Any]) -> list[TrainConfig]:
    """The run configurations of a one-seed run (one per chosen method)."""
    configs = []
    for name in plan["methods"]:
        reads = (*method_class(name).setting_names(), "meta_lr")
        own = {k: v for k, v in plan["given"].items() if k in reads}
        cfg = replace(plan["base"], method=name, inner=plan.get("inner", ()), **own)
        try:
            configs.append(cfg.resolved())
        except (ValueError, TypeError) as err:
            raise UsageError(f"{name}: {err}") from None
    return configs


# --------------------------------------------------------------------------------------------
# one seed: one method or all


def train_many(configs: Sequence[TrainConfig], out: Path, *, resume: bool = False,
               overwrite: bool = False, progress: bool = True,
               subfolders: bool = True) -> tuple[dict[str, TrainResult], dict[str, str]]:
    """Train each config (one subfolder per method, named by its variant name), sharing one
    joint-training baseline: every config differs only in the method, so the baseline is
    the same for all.

    Returns the finished runs and, for several methods, the ones that diverged (variant
    name -> message); a diverging single run raises :class:`TrainingDiverged`. Under
    torchrun every rank calls this alike (rank 0 looks at the folder, and tells the
    others)."""
    ranks = _ranks.current()
    baseline = None
    results: dict[str, TrainResult] = {}
    failed: dict[str, str] = {}
    for cfg in configs:
        folder = out / cfg.variant if subfolders else out
        has_snapshot = ranks.from_writer((folder / FILES["snapshot"]).exists)
        if resume and not has_snapshot and not subfolders:
            raise UsageError(f"--resume: no snapshot at {folder / FILES['snapshot']}; "
                             "run without --resume to start")
        if baseline is None:
            baseline = train_baseline(cfg, progress=progress)
        try:
            results[cfg.variant] = train(cfg, folder, resume=resume and has_snapshot,
                                        overwrite=overwrite, progress=progress,
                                        baseline=baseline)
        except TrainingDiverged as err:
            if not subfolders:
                raise
            if ranks.writer:
                print(f"metagrad train: {err}", file=sys.stderr)
            failed[cfg.variant] = f"diverged at meta-step {err.meta_step}"
    return results, failed


def comparison_frame(results: dict[str, TrainResult],
                     failed: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per method (held-out MSE before / after k steps, time) plus the baseline;
    diverged methods get a row with only their status. Rows in the registry's order of the
    methods, by variant name (a method with inner-loop forms after the methods)."""
    rows: list[dict[str, Any]] = []
    baseline = None
    failed = failed or {}
    names = [*results, *(n for n in failed if n not in results)]
    order = {m: i for i, m in enumerate(METHOD_NAMES)}
    for name in sorted(names, key=lambda n: order.get(n, len(order))):
        if name in failed:
            rows.append({"method": name, "status": failed[name]})
            continue
        s = results[name].summary
        assert s is not None
        baseline = s["baseline"]
        rows.append({"method": name, **_mse_columns(s["heldout"]),
                     "train_time_s": s["train_time_s"],
                     "step_ms": 1e3 * s["mean_step_time_s"],
                     "status": status(s)})
    if baseline is not None:
        rows.append({"method": "baseline (joint training)", **_mse_columns(baseline),
                     "train_time_s": baseline["train_time_s"],
                     "step_ms": 1e3 * baseline["train_time_s"] / max(1, _meta_steps(results)),
                     "status": status({"heldout": baseline})})
    return pd.DataFrame(rows)


def _meta_steps(results: dict[str, TrainResult]) -> int:
    return next(iter(results.values())).config.meta_steps


def _mse_columns(evaluation: dict) -> dict[str, float]:
    cols = {"pre_update_mse": evaluation["pre_update_mse"]}
    for k, v in evaluation["post_update_mse"].items():
        cols[f"post_update_mse_{k}"] = v
    return cols


def write_figures(results: dict[str, TrainResult], out: Path, prefix: str = "") -> dict[str, Path]:
    if not results:
        return {}
    logs = {n: r.log for n, r in results.items()}
    summaries = {n: r.summary for n, r in results.items() if r.summary is not None}
    preds = {n: r.predictions for n, r in results.items() if r.predictions is not None}
    first = next(iter(results.values()))
    if first.baseline is not None:
        preds[plots.BASELINE] = first.baseline.predictions
    return {
        "curves": plots.plot_learning_curves(logs, out / f"{prefix}{FIGURES['curves']}"),
        "heldout": plots.plot_heldout(summaries, out / f"{prefix}{FIGURES['heldout']}"),
        "predictions": plots.plot_predictions(
            preds, out / f"{prefix}{FIGURES['predictions']}"),
    }


def _one_seed(plan: dict[str, Any], out: Path, args: argparse.Namespace) -> int:
    ranks = _ranks.current()
    configs = _configs(plan)
    results, failed = train_many(configs, out, resume=args.resume, overwrite=args.overwrite,
                                 progress=not args.quiet and ranks.writer,
                                 subfolders=plan["kind"] == "all")
    frame = comparison_frame(results, failed)

    def write() -> None:  # rank 0's under torchrun: every rank holds the same results
        frame.to_csv(out / "comparison.csv", index=False)
        figures = write_figures(results, out)
        print(markdown_table(frame))
        if plan["preset"] == "finn2017" and results:
            from .study.finn2017_report import write_report
            figures["finn2017"] = write_report(out, [r.summary for r in results.values()
                                                     if r.summary is not None], [out])
        print("wrote " + ", ".join(str(p) for p in [out / "comparison.csv",
                                                    *figures.values()]))

    ranks.from_writer(write)
    not_finite = [str(m) for m, st in zip(frame["method"], frame["status"], strict=True)
                  if "not finite" in str(st)]
    if not_finite:
        print(f"metagrad train: error: held-out MSE not finite for {', '.join(not_finite)} "
              "(see the status column)", file=sys.stderr)
    return 1 if failed or not_finite else 0


# --------------------------------------------------------------------------------------------
# a study


def _study(plan: dict[str, Any], out: Path, args: argparse.Namespace) -> int:
    from . import study
    from .study import aggregate

    if (out / "study.json").is_file() and not (args.resume or args.overwrite):
        raise UsageError(f"--out {str(out)!r} already holds a study; pass --resume to continue "
                         "it, --overwrite to start again, or choose another --out")
    spec = study.Study(base=plan["base"], methods=tuple(plan["methods"]),
                       seeds=tuple(plan["seeds"]), regimes=tuple(
                           plan["regimes"]) + (("matched",) if plan["matched"] else ()),
                       tune=plan["tune"], given=plan["given"], inner=plan["inner"])
    record = study.run(spec, out, resume=args.resume, progress=not args.quiet)
    aggregate.write_tables(out, record)
    if plan["preset"] == "finn2017":
        from .study.finn2017_report import write_report
        runs = out / "runs" / plan["methods"][0]
        folders = [runs / f"seed{s}" for s in plan["seeds"]
                   if (runs / f"seed{s}" / FILES["summary"]).is_file()]
        write_report(out, [outdir.read_json(f / FILES["summary"]) for f in folders], folders,
                     [out / "baselines" / f.name for f in folders])
    print((out / "study.md").read_text())
    return 1 if record["diverged"] else 0


def _rates(plan: dict[str, Any], out: Path, args: argparse.Namespace) -> int:
    """``--preset rates``: one study per support size, then the report on top."""
    from .study import aggregate, rates, rates_report

    if (out / rates.FILE).is_file() and not (args.resume or args.overwrite):
        raise UsageError(f"--out {str(out)!r} already holds a rates study; pass --resume to "
                         "continue it, --overwrite to start again, or choose another --out")
    spec = rates.RatesStudy(base=plan["base"], shots=tuple(plan["shots"]),
                            seeds=tuple(plan["seeds"]), tune=plan["tune"])
    record = rates.run(spec, out, resume=args.resume, progress=not args.quiet)
    for shots, sub in record["studies"].items():
        aggregate.write_tables(out / rates.folder(int(shots)), sub)
    from .. import _provenance
    rates_report.write_report(out, record, _provenance.command_line(
        "metagrad", getattr(args, "argv", None)))
    print((out / "rates.md").read_text())
    return 1 if any(sub["diverged"] for sub in record["studies"].values()) else 0


def write_study_tables(out: Path, record: dict[str, Any]) -> dict[str, Path]:
    """Deprecated: :func:`metagrad.train.study.aggregate.write_tables`."""
    import warnings

    from .study import aggregate
    warnings.warn("metagrad.train.command.write_study_tables moved to "
                  "metagrad.train.study.aggregate.write_tables", DeprecationWarning,
                  stacklevel=2)
    return aggregate.write_tables(out, record)


# --------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    if args.device is not None:
        check_device(args.device)
    plan = resolve(args)
    world = _ranks.world_size()
    if world > 1:
        check_distributed(plan, world)
    started = time.perf_counter()
    from .. import _provenance
    source = _provenance.git_state()  # the code the run starts with, recorded at its end
    with _ranks.launched(plan["base"].device) as ranks, ExitStack() as stack:
        what = {"single": f"this {plan['methods'][0]} run", "all": "this --method all run",
                "study": "this study", "rates": "this rates study"}[plan["kind"]]

        def claim() -> Path:
            # Rank 0's alone under torchrun; its refusal ends every rank with its message.
            out = outdir.prepare(args.out)
            stack.enter_context(outdir.hold(out))
            if args.overwrite:
                clear(out)
            outdir.check_kind(out, plan["kind"], overwrite=args.overwrite, what=what)
            return out

        out = ranks.from_writer(claim)
        try:
            code = {"study": _study, "rates": _rates}.get(plan["kind"], _one_seed)(
                plan, out, args)
            if ranks.writer:
                code = max(code, write_provenance(plan, out, world,
                                                  getattr(args, "argv", None), source))
        except OSError as err:
            print(f"metagrad train: error: writing the results failed: "
                  f"{outdir.describe_os_error(err)}; the snapshots written before are intact: "
                  "free the space (or fix the folder) and rerun with --resume",
                  file=sys.stderr)
            return 1
        except _ranks.RanksDiverged as err:
            print(f"metagrad train: error: {err}", file=sys.stderr)
            return 1
        except RuntimeError as err:
            if "torch.compile" not in str(err):
                raise
            print(f"metagrad train: error: {str(err).splitlines()[0]} (run without --compile)",
                  file=sys.stderr)
            return 1
    if ranks.writer:
        print(f"total {time.perf_counter() - started:.1f} s")
    return code


def write_provenance(plan: dict[str, Any], out: Path, world: int,
                     argv: list[str] | None = None,
                     source: dict[str, Any] | None = None) -> int:
    """``trace.json`` (the first meta-steps of one seed of each run, replayed: see
    :mod:`metagrad.train.study.trace`) and ``provenance.json`` (commit, command ``metagrad``
    + ``argv``, packages, machine, eager or compiled) in ``out``; 1 when the replay could
    not reproduce an eager run (the trace would check nothing), else 0."""
    from .. import _provenance
    from .study import trace

    if plan["kind"] == "rates":
        from .study import rates
        runs = rates.traced_runs(out, rates.read(out))
    else:
        record = outdir.read_json(out / "study.json") if plan["kind"] == "study" else None
        configs = {c.variant: c for c in _configs(plan)} if plan["kind"] != "study" else {}
        runs = [r for r in trace.traced_runs(out, plan["kind"], configs, record)
                if plan["kind"] == "study" or (r[1] / FILES["summary"]).is_file()]
    modes: dict[str, list[str]] = {}
    for label, _, cfg in runs:
        modes.setdefault("compiled" if cfg.compile else "eager", []).append(label)
    mode = "; ".join(f"{m}: {', '.join(names)}" for m, names in sorted(modes.items())) \
        if len(modes) > 1 else next(iter(modes), "eager")
    extra: dict[str, Any] = {"processes": world, "threads": plan["base"].threads}
    code = 0
    if world > 1:
        extra["trace"] = None
        extra["trace_note"] = ("no trace: a run on several processes reduces in another order "
                               "than the one-process replay (equal up to rounding)")
    elif runs:
        try:
            trace.record(out, runs)
            extra["trace"] = trace.FILE
        except RuntimeError as err:
            print(f"metagrad train: error: {err}", file=sys.stderr)
            extra["trace"] = None
            extra["trace_note"] = str(err)
            code = 1
    _provenance.write(out, command=_provenance.command_line("metagrad", argv), mode=mode,
                      kind="train", what=outdir.KINDS[plan["kind"]],
                      device=plan["base"].device, extra=extra, git=source)
    return code


def check_distributed(plan: dict[str, Any], world: int) -> None:
    """What a run under torchrun (``world`` processes) cannot do, refused by every process
    alike before the process group starts."""
    if plan["kind"] in ("study", "rates"):
        raise UsageError("a study (--seeds, --tune, --regime, --matched-cost, --preset study "
                         "or rates) is many short runs one after another and is not spread "
                         "over processes: run it without torchrun, or one torchrun per --seed")
    for cfg in _configs(plan):
        try:
            check_world(cfg, world)
        except ValueError as err:
            raise UsageError(str(err)) from None


def clear(out: Path) -> None:
    """Remove what ``metagrad train`` wrote into ``out`` (its own file names only, at the
    top and in its own subfolders), so that ``--overwrite`` starts from a clean folder."""
    ours = {*FILES.values(), *TABLES, *FIGURES.values(), *STUDY_FIGURES.values(),
            outdir.MARKER}
    for name in ours:
        path = out / name
        if path.is_file():
            path.unlink()
    variants = [p.name for p in out.iterdir() if p.is_dir() and (
        "+" in p.name or p.name in SPELLINGS or re.fullmatch(r"shots\d+", p.name))]
    for sub in (*METHOD_NAMES, "runs", "baselines", "tuning", *variants):
        folder = out / sub
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if path.is_file() and (path.name in ours or path.name == outdir.LOCK):
                path.unlink()
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        if not any(folder.iterdir()):
            folder.rmdir()
