"""Tables of a study (:mod:`metagrad.train.study`): read every run back from its folder,
and summarise across seeds with the intervals of :mod:`metagrad.train.stats`.

* ``comparison.csv``: one row per variant (and the baseline): held-out test MSE before
  and after k adaptation steps, mean over seeds with its t interval, the typical
  interval over test tasks of one run (Finn et al.'s), cost and status;
* ``differences.csv``: every pair of rows, paired by seed, per k: mean difference, its t
  interval and whether the interval excludes 0 ("resolved");
* ``probes.csv``: the accuracy probes of every run;
* ``study.md``: the tables in markdown with how to read them.
"""

from __future__ import annotations

import math
from itertools import combinations
from pathlib import Path
from typing import Any

import pandas as pd

from . import outdir
from .loop import FILES, read_log
from .stats import paired_difference, seed_interval
from .status import status

BASELINE = "baseline"
KS = ("1", "10")
"""Numbers of adaptation steps whose test MSE the tables compare."""


def _settings_text(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in sorted(settings.items()))


def load_runs(out: Path, record: dict[str, Any]) -> pd.DataFrame:
    """One row per finished (variant, seed) run and per seed's baseline."""
    spec = record["spec"]
    rows = []
    for name, settings in record["settings"].items():
        for seed in spec["seeds"]:
            path = out / "runs" / name / f"seed{seed}" / FILES["summary"]
            if not path.is_file():
                continue
            s = outdir.read_json(path)
            held = s["heldout"]
            row = {"variant": name, "method": s["method"], "seed": seed,
                   "settings": _settings_text(settings),
                   "gradient_equivalents": s["gradient_equivalents"],
                   "median_step_ms": 1e3 * s["median_step_time_s"],
                   "train_time_s": s["train_time_s"],
                   "train_s_after_first_step": _after_first_step(s, path.parent),
                   "status": status(s), "warning_steps": s["warning_steps"],
                   "checked_steps": s.get("checked_steps", s["meta_steps"]),
                   "finding_kinds": "+".join(sorted(s["finding_steps"])),
                   "not_finite": "" if status(s).startswith("ok") else status(s),
                   "proximal_rate_steps": s["finding_steps"].get("proximal_rate", 0),
                   "own_post_update": s["final_post_update_loss"]}
            for k, v in enumerate(held["mse_by_steps"]):
                row[f"mse_{k}"] = math.nan if v is None else v
                ci = held["ci95_by_steps"][k]
                row[f"task_ci_{k}"] = math.nan if ci is None else ci
            row.update(_robust(held, path.parent / FILES["per_task"], s["config"]["shots"]))
            rows.append(row)
        for seed in spec["seeds"]:
            path = out / "baselines" / f"seed{seed}" / "summary.json"
            if not path.is_file() or any(r["variant"] == BASELINE and r["seed"] == seed
                                         for r in rows):
                continue
            ev = outdir.read_json(path)["evaluation"]
            row = {"variant": BASELINE, "method": "joint training", "seed": seed,
                   "settings": "eval_lr per k from " + ", ".join(map(str, ev["eval_lr_grid"])),
                   "gradient_equivalents": 1.0, "train_time_s": ev["train_time_s"],
                   "status": "ok"}
            for k, v in enumerate(ev["mse_by_steps"]):
                row[f"mse_{k}"] = math.nan if v is None else v
                ci = ev["ci95_by_steps"][k]
                row[f"task_ci_{k}"] = math.nan if ci is None else ci
            rows.append(row)
    return pd.DataFrame(rows)


def _after_first_step(summary: dict[str, Any], folder: Path) -> float:
    """Training time without the first meta-step, which includes any compilation (read
    from the summary, or from the log for summaries written before it was recorded)."""
    first = summary.get("first_step_time_s")
    if first is None and (folder / FILES["log"]).is_file():
        first = float(read_log(folder / FILES["log"])["step_time_s"].iloc[0])
    return math.nan if first is None else summary["train_time_s"] - first


def _status(r: pd.DataFrame, diverged: dict[str, int]) -> str:
    """One status for a variant over its seeds: training divergences, non-finite test
    numbers (per seed), and the numerical findings as a range over seeds."""
    parts = [f"seed {s}: diverged in training at meta-step {m}" for s, m in diverged.items()]
    parts += [f"seed {s}: {t}" for s, t in zip(r["seed"], r["not_finite"], strict=True) if t]
    if "warning_steps" in r and r["warning_steps"].notna().any() and r["warning_steps"].max():
        lo, hi = int(r["warning_steps"].min()), int(r["warning_steps"].max())
        kinds = sorted({k for v in r["finding_kinds"] for k in str(v).split("+") if k})
        checked = int(r["checked_steps"].iloc[0])
        parts.append(f"numerical warnings at {lo if lo == hi else f'{lo}-{hi}'} of {checked} "
                     f"checked steps per seed ({', '.join(kinds)})")
    return "; ".join(parts) or "ok"


def _robust(evaluation: dict[str, Any], per_task: Path, shots: int) -> dict[str, float]:
    """Median over tasks and number of diverged tasks (see
    :func:`metagrad.train.evaluation.divergent_tasks`) per k of :data:`KS`, from the
    summary or, for summaries written before they were recorded, the per-task table."""
    if "median_by_steps" in evaluation:
        med, div = evaluation["median_by_steps"], evaluation["diverged_tasks_by_steps"]
    elif per_task.is_file():
        import torch

        from .evaluation import divergent_tasks, task_median

        f = pd.read_csv(per_task)
        f = f[f["shots"] == shots]
        x = torch.tensor(f[[c for c in f.columns if c.startswith("mse_")]].to_numpy())
        med, div = task_median(x), divergent_tasks(x).sum(0).tolist()
    else:
        return {}
    out: dict[str, float] = {}
    for k in KS:
        out[f"median_{k}"] = med[int(k)]
        out[f"diverged_{k}"] = div[int(k)]
    return out


def comparison(runs: pd.DataFrame, regimes: dict[str, str],
               diverged: dict[str, dict[str, int]] | None = None) -> pd.DataFrame:
    """Per variant: mean over seeds ± t interval of the test MSE before adaptation and
    after each k of :data:`KS`; Finn et al.'s interval over tasks (mean over seeds).
    ``diverged``: variant → seed → meta-step, for runs that diverged in training."""
    diverged = diverged or {}
    rows = []
    for name in dict.fromkeys(runs["variant"]):
        r = runs[runs["variant"] == name]
        row: dict[str, Any] = {"variant": name, "regime": regimes.get(name, ""),
                               "settings": r["settings"].iloc[0], "seeds": len(r)}
        for k in ("0", *KS):
            iv = seed_interval(r[f"mse_{k}"].tolist())
            row[f"mse_{k}"] = iv.mean
            row[f"mse_{k}_ci"] = iv.half_width
            row[f"task_ci_{k}"] = float(r[f"task_ci_{k}"].mean())
            if k != "0":
                have = f"median_{k}" in r and r[f"median_{k}"].notna().all()
                row[f"median_{k}"] = float(r[f"median_{k}"].mean()) if have else math.nan
                row[f"diverged_{k}"] = int(r[f"diverged_{k}"].sum()) if have else -1
        if "own_post_update" in r and r["own_post_update"].notna().all():
            iv = seed_interval(r["own_post_update"].tolist())
            row["own_post_update"], row["own_post_update_ci"] = iv.mean, iv.half_width
        else:
            row["own_post_update"] = row["own_post_update_ci"] = math.nan
        row["gradient_equivalents"] = float(r["gradient_equivalents"].iloc[0])
        after = r["train_s_after_first_step"] if "train_s_after_first_step" in r else None
        row["train_time_s"] = float(after.mean()) if after is not None and \
            after.notna().all() else float(r["train_time_s"].mean())
        row["proximal_rate_steps"] = int(r["proximal_rate_steps"].sum()) \
            if "proximal_rate_steps" in r and r["proximal_rate_steps"].notna().all() else 0
        row["median_step_ms"] = float(r["median_step_ms"].median()) \
            if "median_step_ms" in r and r["median_step_ms"].notna().any() else math.nan
        row["status"] = _status(r, diverged.get(name, {})) if "not_finite" in r and \
            r["not_finite"].notna().all() else "; ".join(sorted(set(r["status"])))
        rows.append(row)
    return pd.DataFrame(rows)


def differences(runs: pd.DataFrame) -> pd.DataFrame:
    """Every pair (a, b) of variants and every k of :data:`KS`: the per-seed differences
    a − b of the test MSE over the seeds both finished, with their t interval."""
    rows = []
    names = list(dict.fromkeys(runs["variant"]))
    for a, b in combinations(names, 2):
        ra = runs[runs["variant"] == a].set_index("seed")
        rb = runs[runs["variant"] == b].set_index("seed")
        seeds = sorted(set(ra.index) & set(rb.index))
        for k in KS:
            col = f"mse_{k}"
            xa, xb = ra.loc[seeds, col].tolist(), rb.loc[seeds, col].tolist()
            if not seeds or not all(map(math.isfinite, xa + xb)):
                continue
            iv = paired_difference(xa, xb)
            rows.append({"a": a, "b": b, "k": int(k), "seeds": len(seeds),
                         "mean_diff": iv.mean, "ci_low": iv.low, "ci_high": iv.high,
                         "resolved": iv.excludes_zero,
                         "better": (a if iv.mean < 0 else b) if iv.excludes_zero else ""})
    return pd.DataFrame(rows)


def load_probes(out: Path, record: dict[str, Any]) -> pd.DataFrame:
    frames = []
    for name in record["settings"]:
        for seed in record["spec"]["seeds"]:
            path = out / "runs" / name / f"seed{seed}" / FILES["probe"]
            if path.is_file():
                f = pd.read_csv(path, dtype={"findings": str}, keep_default_na=False,
                                na_values=["nan", "NaN", ""])
                f.insert(0, "seed", seed)
                f.insert(0, "variant", name)
                frames.append(f)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def load_logs(out: Path, record: dict[str, Any]) -> dict[str, dict[int, pd.DataFrame]]:
    logs: dict[str, dict[int, pd.DataFrame]] = {}
    for name in record["settings"]:
        for seed in record["spec"]["seeds"]:
            folder = out / "runs" / name / f"seed{seed}"
            if (folder / FILES["summary"]).is_file() and (folder / FILES["log"]).is_file():
                logs.setdefault(name, {})[seed] = read_log(folder / FILES["log"])
    return logs


def load_tuning(out: Path) -> pd.DataFrame:
    path = out / "tuning.csv"
    return pd.read_csv(path) if path.is_file() else pd.DataFrame()


def _pm(mean: float, half: float) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.3f}" if math.isnan(half) else f"{mean:.3f} ± {half:.3f}"


def markdown(comp: pd.DataFrame, diffs: pd.DataFrame, tuning: pd.DataFrame,
             probes: pd.DataFrame, record: dict[str, Any], seeds: list[int]) -> str:
    """``study.md``: the comparison, what the intervals resolve, tuning and probes."""
    n = len(seeds)
    lines = ["# Method comparison on sinusoid regression", ""]
    spec = record["spec"]
    base = spec["base"]
    lines += [
        f"Seeds {', '.join(map(str, seeds))} (each: initialisation and task stream; every "
        f"variant of a seed shares them); {base['meta_steps']} meta-steps, meta-batch "
        f"{base['meta_batch']}, {base['shots']} + {base['query']} shots, MLP 1-"
        f"{'-'.join(map(str, base['hidden']))}-1 ReLU. Test: {base['heldout_tasks']} "
        f"held-out tasks (seed {base['heldout_seed']}), {base['heldout_query']} query points "
        f"each, adapted by plain GD with eval_lr = {base['eval_lr'] or base['inner_lr']} "
        "from the learned initialisation.", "",
        f"Intervals: **± across seeds** is the 95 % Student-t interval of the mean over the "
        f"{n} seeds (t₀.₉₇₅,{n - 1} = "
        + (f"{_t(n):.3f}" if n > 1 else "n/a") + ", sample std); **task CI** is Finn et "
        "al.'s 1.96·std/√n over the test tasks of one run (population std), averaged over "
        "seeds: the noise of the test set alone.", ""]
    table = pd.DataFrame({
        "variant": comp["variant"], "regime": comp["regime"], "settings": comp["settings"],
        "GE/step": comp["gradient_equivalents"],
        "step ms": comp["median_step_ms"].map(lambda v: f"{v:.2f}" if v == v else ""),
        "pre-update": [_pm(m, h) for m, h in zip(comp["mse_0"], comp["mse_0_ci"],
                                                 strict=True)],
        **{f"after {k} step{'s' if k != '1' else ''}": [
            _pm(m, h) for m, h in zip(comp[f"mse_{k}"], comp[f"mse_{k}_ci"], strict=True)]
            for k in KS},
        "task CI (1 step)": comp["task_ci_1"].map(lambda v: f"± {v:.3f}"),
        **{f"median, diverged ({k} step{'s' if k != '1' else ''})": [
            "" if d < 0 else f"{m:.3f}, {d}" for m, d in
            zip(comp[f"median_{k}"], comp[f"diverged_{k}"], strict=True)] for k in KS},
        "own adaptation": [_pm(m, h) for m, h in zip(comp["own_post_update"],
                                                     comp["own_post_update_ci"], strict=True)],
        "train s": comp["train_time_s"].map(lambda v: f"{v:.0f}"),
        "seeds": comp["seeds"], "status": comp["status"]})
    lines += ["## Test MSE (mean over seeds ± 95 % t interval)", "",
              "GE/step: gradient-equivalents per task per meta-step "
              "(`method.gradient_equivalents()`); step ms: median wall time of a meta-step "
              "(compiled where the runs were, shared machine: provisional); own adaptation: "
              "post-update loss on the training tasks after the variant's own inner loop "
              "(mean of the last 100 meta-steps; for the solved regime many small proximal "
              "steps, not the plain GD of the test columns); train s: training time per "
              "run without its first meta-step (which includes compiling); median, diverged: "
              "the median over test tasks (mean over seeds) and the number of test tasks, "
              "summed over seeds, whose "
              "MSE after k steps is above 10x their MSE before adaptation or not finite "
              "(plain GD blew up on them; a few of them decide the mean).", "",
              table.to_markdown(index=False), ""]
    if not diffs.empty:
        lines += ["## Which differences the intervals resolve", "",
                  "Paired by seed: the interval is the t interval of the per-seed differences "
                  "a − b (negative: a is better). *Resolved* means it excludes 0. Each is a "
                  "95 % interval on its own; no correction for the number of pairs.", ""]
        for k in KS:
            d = diffs[diffs["k"] == int(k)]
            ranked = comp.sort_values(f"mse_{k}")["variant"].tolist()
            lines += [f"### After {k} step{'s' if k != '1' else ''}", "",
                      "Ranking (best first): " + " < ".join(ranked) + ".", ""]
            adjacent = []
            for a, b in zip(ranked, ranked[1:], strict=False):
                row = _pair(d, a, b)
                if row is not None:
                    adjacent.append(row)
            if adjacent:
                lines += ["Neighbours in the ranking:", "",
                          pd.DataFrame(adjacent).to_markdown(index=False, floatfmt=".4f"), ""]
            ref = "maml" if "maml" in ranked else ranked[0]
            versus = [r for r in (_pair(d, v, ref) for v in ranked if v != ref) if r]
            if versus:
                lines += [f"Every variant against {ref}:", "",
                          pd.DataFrame(versus).to_markdown(index=False, floatfmt=".4f"), ""]
            res = d[d["resolved"]]
            lines += [f"{len(res)} of {len(d)} pairs resolved at k = {k} (all pairs: "
                      "`differences.csv`).", ""]
    if not tuning.empty:
        lines += ["## Tuning (validation tasks, seed "
                  f"{base['validation_seed']}; training seed {spec['tuning_seed']})", "",
                  "Chosen by the validation MSE after one adaptation step; grids in "
                  "`study.json`.", "",
                  tuning[[c for c in ("variant", "point", "validation_mse_1",
                                      "validation_mse_10", "status", "chosen")
                          if c in tuning]].to_markdown(index=False, floatfmt=".4g"), ""]
    if not probes.empty:
        cols = ["err_maml", "cos_maml", "err_implicit", "cos_implicit", "implicit_defined",
                "prox_residual", "curvature"]
        agg = probes.groupby(["variant", "meta_step"], sort=False)[cols].mean().reset_index()
        lines += ["## Meta-gradient accuracy along training (probe tasks, mean over seeds)",
                  "", "err: ‖g − g*‖/‖g*‖ per task, cos: cosine(g, g*), against exact MAML at "
                  "the variant's own K and inner_lr and (IMAML, Neumann) the exact implicit "
                  "gradient at its λ; implicit_defined: probe tasks where the implicit "
                  "gradient exists on this ReLU net; prox_residual: proximal stationarity "
                  "residual relative to ‖∇L_tr(θ)‖; curvature: λ_max(∇²L_tr(θ)).", "",
                  agg.to_markdown(index=False, floatfmt=".3g"), ""]
    return "\n".join(lines)


def _t(n: int) -> float:
    from .stats import t_quantile

    return t_quantile(0.975, n - 1)


def _pair(d: pd.DataFrame, a: str, b: str) -> dict[str, Any] | None:
    row = d[(d["a"] == a) & (d["b"] == b)]
    sign = 1.0
    if row.empty:
        row, sign = d[(d["a"] == b) & (d["b"] == a)], -1.0
    if row.empty:
        return None
    r = row.iloc[0]
    lo, hi = sorted((sign * r["ci_low"], sign * r["ci_high"]))
    return {"a": a, "b": b, "a − b": sign * r["mean_diff"], "95 % CI": f"[{lo:.4f}, {hi:.4f}]",
            "resolved": "yes" if r["resolved"] else "no"}


__all__ = ["BASELINE", "KS", "comparison", "differences", "load_logs", "load_probes",
           "load_runs", "load_tuning", "markdown"]
