"""Tables of a study (:mod:`metagrad.train.study.design`): read every run back from its
folder, and summarise across seeds and test tasks with the intervals of
:mod:`metagrad.train.stats`.

* ``comparison.csv``: one row per variant (and the baseline): held-out test MSE before
  and after k adaptation steps, mean over seeds with the 95 % interval for both sources
  of uncertainty (seeds and test tasks) and the seed part alone, the typical interval
  over test tasks of one run (Finn et al.'s), predicted cost and measured time per step
  (eager or compiled), status;
* ``differences.csv``: every pair of rows, paired by seed, per k: mean difference, its
  95 % interval (seeds and tasks), p-value, Holm-adjusted p-value over the pairs of that
  k, and whether it is resolved (Holm-adjusted p < 0.05);
* ``own_differences.csv``: the same for the test MSE after each variant's own adaptation
  (its K steps, update rule and step sizes: the evaluation that defines Meta-SGD);
* ``per_task_means.csv``: the per-task test MSE averaged over seeds, per variant and k
  (the test-set part of the intervals; written where the per-task tables are on disk);
* ``probes.csv``: the accuracy probes of every run;
* ``study.md``: the tables in markdown with how to read them.
"""

from __future__ import annotations

import math
from itertools import combinations
from pathlib import Path
from typing import Any

import pandas as pd

from .. import outdir, plots
from ..loop import FILES, read_log
from ..stats import (
    combined_interval,
    holm,
    paired_difference,
    seed_interval,
    task_sd_from_interval,
)
from ..status import status

BASELINE = "baseline"
KS = ("1", "10")
"""Numbers of adaptation steps whose test MSE the tables compare."""
TASK_MEANS = "per_task_means.csv"
OWN = "own"
"""The key of the own-adaptation test MSE in the per-task means and the differences."""
ALPHA = 0.05
"""Family-wise error rate of each k's table of differences (Holm)."""


def _settings_text(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in sorted(settings.items()))


def load_runs(out: Path, record: dict[str, Any]) -> pd.DataFrame:
    """One row per finished (variant, seed) run and per seed's baseline."""
    spec = record["spec"]
    rows = []
    previous = pd.read_csv(out / "runs.csv") if (out / "runs.csv").is_file() else None
    for name, settings in record["settings"].items():
        for seed in spec["seeds"]:
            path = out / "runs" / name / f"seed{seed}" / FILES["summary"]
            if not path.is_file():
                continue
            s = outdir.read_json(path)
            held = s["heldout"]
            row = {"variant": name, "method": s["method"], "seed": seed,
                   "settings": _settings_text(settings), "n_tasks": held["tasks"],
                   "compiled": bool(s["config"].get("compile", False)),
                   "gradient_equivalents": s["gradient_equivalents"],
                   "median_step_ms": 1e3 * s["median_step_time_s"],
                   "train_time_s": s["train_time_s"],
                   "train_s_after_first_step": _after_first_step(s, path.parent),
                   "status": status(s), "warning_steps": s["warning_steps"],
                   "checked_steps": s.get("checked_steps", s["meta_steps"]),
                   "finding_kinds": "+".join(sorted(s["finding_steps"])),
                   "not_finite": "" if status(s).startswith("ok") else status(s),
                   "proximal_rate_steps": s["finding_steps"].get("proximal_rate", 0),
                   "own_post_update": s["final_post_update_loss"],
                   "inner": "+".join(s.get("inner", []))}
            row.update(_mse_columns(held))
            row.update(_own_columns(s.get("heldout_own")))
            row.update(_robust(held, path.parent / FILES["per_task"], s["config"]["shots"],
                               _earlier(previous, name, seed, row)))
            rows.append(row)
        for seed in spec["seeds"]:
            path = out / "baselines" / f"seed{seed}" / "summary.json"
            if not path.is_file() or any(r["variant"] == BASELINE and r["seed"] == seed
                                         for r in rows):
                continue
            ev = outdir.read_json(path)["evaluation"]
            row = {"variant": BASELINE, "method": "joint training", "seed": seed,
                   "settings": "eval_lr per k from " + ", ".join(map(str, ev["eval_lr_grid"])),
                   "n_tasks": ev["tasks"], "compiled": False,
                   "gradient_equivalents": 1.0, "train_time_s": ev["train_time_s"],
                   "status": "ok", **_mse_columns(ev)}
            rows.append(row)
    return pd.DataFrame(rows)


def _mse_columns(evaluation: dict[str, Any]) -> dict[str, float]:
    """``mse_k``, Finn et al.'s ``task_ci_k`` and the std over tasks ``task_sd_k`` behind it,
    for every number of steps k of an evaluation dict."""
    out: dict[str, float] = {}
    n = int(evaluation["tasks"])
    for k, v in enumerate(evaluation["mse_by_steps"]):
        ci = evaluation["ci95_by_steps"][k]
        out[f"mse_{k}"] = math.nan if v is None else v
        out[f"task_ci_{k}"] = math.nan if ci is None else ci
        out[f"task_sd_{k}"] = task_sd_from_interval(ci, n)
    return out


def _own_columns(evaluation: dict[str, Any] | None) -> dict[str, float]:
    """``own_mse`` (the test MSE after the variant's own adaptation), its steps, Finn et
    al.'s interval over tasks and the std over tasks behind it (NaN for summaries written
    before the own adaptation was evaluated)."""
    if evaluation is None:
        return {"own_steps": math.nan, "own_mse": math.nan, "own_task_ci": math.nan,
                "own_task_sd": math.nan}
    v, ci = evaluation["mse_by_steps"][-1], evaluation["ci95_by_steps"][-1]
    return {"own_steps": len(evaluation["mse_by_steps"]) - 1,
            "own_mse": math.nan if v is None else v,
            "own_task_ci": math.nan if ci is None else ci,
            "own_task_sd": task_sd_from_interval(ci, int(evaluation["tasks"]))}


def load_task_means(out: Path, record: dict[str, Any]) -> pd.DataFrame | None:
    """The per-task test MSE averaged over seeds: one row per test task, a column
    ``<variant>@<k>`` per variant (and the baseline) and k in 0 and :data:`KS`, and
    ``<variant>@own`` after the variant's own adaptation where its own per-task tables are
    there. Read from the runs' per-task tables where they are on disk (and then written to
    :data:`TASK_MEANS`), else from :data:`TASK_MEANS`; None when neither is there."""
    columns: dict[str, list[float]] = {}
    ks = ("0", *KS)
    shots = record["spec"]["base"]["shots"]
    folders = {name: [out / "runs" / name / f"seed{s}" for s in record["spec"]["seeds"]]
               for name in record["settings"]}
    folders[BASELINE] = [out / "baselines" / f"seed{s}" for s in record["spec"]["seeds"]]
    complete = True
    for name, candidates in folders.items():
        finished = [f for f in candidates if (f / "summary.json").is_file()]
        tables = [f / FILES["per_task"] for f in finished]
        if not finished:
            continue
        if not all(t.is_file() for t in tables):
            complete = False
            break
        per_seed = [_per_task_mse(t, f / "summary.json", shots, ks)
                    for t, f in zip(tables, finished, strict=True)]
        for k in ks:
            columns[f"{name}@{k}"] = (sum(p[k] for p in per_seed) / len(per_seed)).tolist()
        own = [f / FILES["own_per_task"] for f in finished]
        if name != BASELINE and all(t.is_file() for t in own):
            per_seed_own = [_own_per_task(t, shots) for t in own]
            columns[f"{name}@{OWN}"] = (sum(per_seed_own) / len(per_seed_own)).tolist()
    if complete and columns:
        frame = pd.DataFrame(columns)
        frame.to_csv(out / TASK_MEANS, index_label="task")
        return frame
    path = out / TASK_MEANS
    return pd.read_csv(path, index_col="task") if path.is_file() else None


def _per_task_mse(table: Path, summary: Path, shots: int, ks: tuple[str, ...]):
    """One run's per-task MSE after each k of ``ks`` (a pandas Series per k), with the
    baseline's step size chosen for that k."""
    f = pd.read_csv(table)
    f = f[f["shots"] == shots]
    chosen = outdir.read_json(summary).get("evaluation", {}).get("eval_lr_by_steps")
    out = {}
    for k in ks:
        rows = f if chosen is None else f[f["eval_lr"] == chosen[k]]
        out[k] = rows.sort_values("task")[f"mse_{k}"].reset_index(drop=True)
    return out


def _own_per_task(table: Path, shots: int):
    """One run's per-task MSE after its own adaptation (the last step), in task order."""
    f = pd.read_csv(table)
    f = f[f["shots"] == shots].sort_values("task")
    last = max((c for c in f.columns if c.startswith("mse_")), key=lambda c: int(c[4:]))
    return f[last].reset_index(drop=True)


def _sd_column(k: str) -> str:
    return "own_task_sd" if k == OWN else f"task_sd_{k}"


def _task_part(task_means: pd.DataFrame | None, names: tuple[str, ...], k: str,
               r: dict[str, pd.DataFrame]) -> tuple[float, bool]:
    """The std over tasks of the seed-averaged per-task MSE of ``names[0]`` (or of the
    difference ``names[0] − names[1]``) after k steps (or the own adaptation, k =
    :data:`OWN`), and whether it is only the bound from the runs' own stds over tasks (no
    per-task numbers at hand)."""
    cols = [f"{n}@{k}" for n in names]
    if task_means is not None and all(c in task_means for c in cols):
        x = task_means[cols[0]] - (task_means[cols[1]] if len(cols) > 1 else 0.0)
        return float(x.std(ddof=1)), False
    return float(sum(float(r[n][_sd_column(k)].mean()) for n in names)), True


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


def _earlier(previous: pd.DataFrame | None, name: str, seed: int,
             row: dict[str, Any]) -> dict[str, float]:
    """The robust columns an earlier aggregation of the same run wrote to ``runs.csv`` (the
    same variant and seed with the same test MSE, bit for bit), for summaries written before
    they were recorded whose per-task table is gone."""
    if previous is None or "median_1" not in previous:
        return {}
    match = previous[(previous["variant"] == name) & (previous["seed"] == seed)]
    if len(match) != 1 or any(match[f"mse_{k}"].iloc[0] != row[f"mse_{k}"]
                              for k in KS if row[f"mse_{k}"] == row[f"mse_{k}"]):
        return {}
    return {f"{c}_{k}": match[f"{c}_{k}"].iloc[0] for c in ("median", "diverged") for k in KS}


def _robust(evaluation: dict[str, Any], per_task: Path, shots: int,
            earlier: dict[str, float] | None = None) -> dict[str, float]:
    """Median over tasks and number of diverged tasks (see
    :func:`metagrad.train.evaluation.divergent_tasks`) per k of :data:`KS`, from the
    summary or, for summaries written before they were recorded, the per-task table, or
    what an earlier aggregation computed from it (``earlier``)."""
    if "median_by_steps" in evaluation:
        med, div = evaluation["median_by_steps"], evaluation["diverged_tasks_by_steps"]
    elif per_task.is_file():
        import torch

        from ..evaluation import divergent_tasks, task_median

        f = pd.read_csv(per_task)
        f = f[f["shots"] == shots]
        x = torch.tensor(f[[c for c in f.columns if c.startswith("mse_")]].to_numpy())
        med, div = task_median(x), divergent_tasks(x).sum(0).tolist()
    else:
        return dict(earlier or {})
    out: dict[str, float] = {}
    for k in KS:
        out[f"median_{k}"] = med[int(k)]
        out[f"diverged_{k}"] = div[int(k)]
    return out


def comparison(runs: pd.DataFrame, regimes: dict[str, str],
               diverged: dict[str, dict[str, int]] | None = None,
               task_means: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per variant: mean over seeds of the test MSE before adaptation and after each k of
    :data:`KS`, with the 95 % interval for seeds and test tasks together (``mse_k_ci``;
    its task part exact from ``task_means`` where given, else bounded) and the seed part
    alone (``mse_k_seed_ci``); Finn et al.'s interval over tasks (mean over seeds).
    ``diverged``: variant → seed → meta-step, for runs that diverged in training."""
    diverged = diverged or {}
    rows = []
    by_name = {name: runs[runs["variant"] == name] for name in dict.fromkeys(runs["variant"])}
    for name, r in by_name.items():
        row: dict[str, Any] = {"variant": name, "regime": regimes.get(name, ""),
                               "settings": r["settings"].iloc[0], "seeds": len(r)}
        bounded = False
        for k in ("0", *KS):
            values = r[f"mse_{k}"].tolist()
            sd, bound = _task_part(task_means, (name,), k, by_name)
            iv = combined_interval(values, sd, int(r["n_tasks"].iloc[0]), bound=bound)
            bounded |= bound
            row[f"mse_{k}"] = iv.mean
            row[f"mse_{k}_ci"] = iv.half_width
            row[f"mse_{k}_seed_ci"] = seed_interval(values).half_width
            row[f"task_ci_{k}"] = float(r[f"task_ci_{k}"].mean())
            if k != "0":
                have = f"median_{k}" in r and r[f"median_{k}"].notna().all()
                row[f"median_{k}"] = float(r[f"median_{k}"].mean()) if have else math.nan
                row[f"diverged_{k}"] = int(r[f"diverged_{k}"].sum()) if have else -1
        row["task_part"] = "bound" if bounded else "per-task"
        row.update(_own_interval(r, name, task_means, by_name))
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
        row["mode"] = "compiled" if "compiled" in r and r["compiled"].fillna(False).any() \
            and name != BASELINE else "eager"
        row["status"] = _status(r, diverged.get(name, {})) if "not_finite" in r and \
            r["not_finite"].notna().all() else "; ".join(sorted(set(r["status"])))
        rows.append(row)
    return pd.DataFrame(rows)


def _own_interval(r: pd.DataFrame, name: str, task_means: pd.DataFrame | None,
                  by_name: dict[str, pd.DataFrame]) -> dict[str, Any]:
    """The test MSE after the variant's own adaptation: mean over seeds with the interval
    for seeds and test tasks (``own_mse_ci``) and for seeds alone (``own_mse_seed_ci``),
    and its number of steps (NaN where the runs predate it, and for the baseline)."""
    if "own_mse" not in r or not r["own_mse"].notna().all():
        return {"own_steps": math.nan, "own_mse": math.nan, "own_mse_ci": math.nan,
                "own_mse_seed_ci": math.nan, "own_task_part": ""}
    values = r["own_mse"].tolist()
    sd, bound = _task_part(task_means, (name,), OWN, by_name)
    iv = combined_interval(values, sd, int(r["n_tasks"].iloc[0]), bound=bound)
    return {"own_steps": int(r["own_steps"].iloc[0]), "own_mse": iv.mean,
            "own_mse_ci": iv.half_width, "own_mse_seed_ci": seed_interval(values).half_width,
            "own_task_part": "bound" if bound else "per-task"}


def differences(runs: pd.DataFrame, task_means: pd.DataFrame | None = None,
                alpha: float = ALPHA, own: bool = False) -> pd.DataFrame:
    """Every pair (a, b) of variants and every k of :data:`KS`: the per-seed differences
    a − b of the test MSE over the seeds both finished, with the 95 % interval for seeds
    and test tasks (the seed part alone where ``task_means`` lacks a variant: then
    ``task_part`` says "not included"), the p-value, and Holm's adjustment over the pairs
    of that k; *resolved* means the adjusted p-value is below ``alpha``. With ``own``: the
    same for the test MSE after each variant's own adaptation (``k`` is then
    :data:`OWN`; the baseline, which has none, is left out)."""
    rows = []
    if own:
        runs = runs[runs["own_mse"].notna()] if "own_mse" in runs else runs.iloc[:0]
    names = list(dict.fromkeys(runs["variant"]))
    by_name = {name: runs[runs["variant"] == name] for name in names}
    measures = [(OWN, "own_mse")] if own else [(k, f"mse_{k}") for k in KS]
    for a, b in combinations(names, 2):
        ra, rb = by_name[a].set_index("seed"), by_name[b].set_index("seed")
        seeds = sorted(set(ra.index) & set(rb.index))
        for k, col in measures:
            xa, xb = ra.loc[seeds, col].tolist(), rb.loc[seeds, col].tolist()
            if not seeds or not all(map(math.isfinite, xa + xb)):
                continue
            seed_part = paired_difference(xa, xb)
            common = {n: by_name[n][by_name[n]["seed"].isin(seeds)] for n in (a, b)}
            sd, bound = _task_part(task_means, (a, b), k, common)
            # Without per-task numbers the test-set part of a *paired* difference is left
            # out rather than bounded: the bound σ_a + σ_b ignores that the same tasks are
            # hard for every variant and is far too wide to say anything.
            iv = seed_part if bound else combined_interval(
                [x - y for x, y in zip(xa, xb, strict=True)], sd, int(ra["n_tasks"].iloc[0]))
            rows.append({"a": a, "b": b, "k": k if own else int(k), "seeds": len(seeds),
                         "mean_diff": iv.mean, "ci_low": iv.low, "ci_high": iv.high,
                         "seed_ci_low": seed_part.low, "seed_ci_high": seed_part.high,
                         "task_part": "not included" if bound else "per-task",
                         "p_value": iv.p_value})
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    # Two families per k, each with Holm's correction: every pair (exploratory), and the
    # comparisons of every variant with the first one (the protocol's method: the primary
    # question of the study).
    first = names[0]
    frame["p_holm"] = frame["p_holm_vs_first"] = math.nan
    for k, _ in measures:
        at = frame["k"] == (k if own else int(k))
        frame.loc[at, "p_holm"] = holm(frame.loc[at, "p_value"].tolist())
        primary = at & ((frame["a"] == first) | (frame["b"] == first))
        frame.loc[primary, "p_holm_vs_first"] = holm(frame.loc[primary, "p_value"].tolist())
    frame["resolved"] = frame["p_holm"] < alpha
    frame["resolved_vs_first"] = frame["p_holm_vs_first"] < alpha
    frame["better"] = [(a if d < 0 else b) if res else "" for a, b, d, res in zip(
        frame["a"], frame["b"], frame["mean_diff"], frame["resolved"], strict=True)]
    return frame


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


def _own_differences(d: pd.DataFrame | None, comp: pd.DataFrame) -> list[str]:
    """study.md's section on the own adaptation: every variant against the first one."""
    if d is None or d.empty:
        return []
    first = comp["variant"].iloc[0]
    versus = [r for r in (_pair(d, v, first, "vs_first") for v in comp["variant"]
                          if v != first) if r]
    if not versus:
        return []
    primary = d[d["p_holm_vs_first"].notna()]
    return ["## Own adaptation: every variant against " + first, "",
            "The test MSE after each variant's own adaptation (its K steps, update rule and "
            "step sizes), paired by seed as above, Holm over these "
            f"{len(primary)} comparisons; all pairs: `own_differences.csv`.", "",
            pd.DataFrame(versus).to_markdown(index=False, disable_numparse=True), "",
            f"{int(primary['resolved_vs_first'].sum())} of {len(primary)} resolved after "
            f"Holm's correction ({int((primary['p_value'] < ALPHA).sum())} with p < 0.05 "
            "uncorrected).", ""]


def markdown(comp: pd.DataFrame, diffs: pd.DataFrame, tuning: pd.DataFrame,
             probes: pd.DataFrame, record: dict[str, Any], seeds: list[int],
             own_diffs: pd.DataFrame | None = None) -> str:
    """``study.md``: the comparison, matched cost, what the intervals resolve, tuning and
    probes."""
    n = len(seeds)
    lines = ["# Method comparison on sinusoid regression", ""]
    spec = record["spec"]
    base = spec["base"]
    bounded = "task_part" in comp and (comp["task_part"] == "bound").any()
    lines += [
        f"Seeds {', '.join(map(str, seeds))} (each: initialisation and task stream; every "
        f"variant of a seed shares them); {base['meta_steps']} meta-steps, meta-batch "
        f"{base['meta_batch']}, {base['shots']} + {base['query']} shots, MLP 1-"
        f"{'-'.join(map(str, base['hidden']))}-1 ReLU. Test: {base['heldout_tasks']} "
        f"held-out tasks (seed {base['heldout_seed']}), {base['heldout_query']} query points "
        f"each, adapted by plain GD with eval_lr = {base['eval_lr'] or base['inner_lr']} "
        "from the learned initialisation.", "",
        "Intervals: **±** is the 95 % interval of the expected test MSE over both training "
        f"seeds and test tasks: variance s²/{n} + σ²/T, s the std of the {n} per-seed "
        "means (training variability), σ the std over the T test tasks of the per-task "
        "MSE averaged over seeds (test-set sampling; the tasks are shared by the seeds), "
        "Student t with Welch–Satterthwaite degrees of freedom"
        + (" (σ here is bounded by the runs' mean std over tasks, because the per-task "
           "tables of these runs were not kept: a conservative interval)" if bounded
           else "") + ". **seeds only** is the seed part alone, the 95 % t interval "
        f"across seeds (t₀.₉₇₅,{n - 1} = " + (f"{_t(n):.3f}" if n > 1 else "n/a")
        + "); **task CI** is Finn et al.'s 1.96·std/√n over the test tasks of one run "
        "(population std), averaged over seeds.", ""]
    table = pd.DataFrame({
        "variant": comp["variant"], "regime": comp["regime"], "settings": comp["settings"],
        "GE/step": comp["gradient_equivalents"],
        "step ms": comp["median_step_ms"].map(lambda v: f"{v:.2f}" if v == v else ""),
        "pre-update": [_pm(m, h) for m, h in zip(comp["mse_0"], comp["mse_0_ci"],
                                                 strict=True)],
        **{f"after {k} step{'s' if k != '1' else ''}": [
            _pm(m, h) for m, h in zip(comp[f"mse_{k}"], comp[f"mse_{k}_ci"], strict=True)]
            for k in KS},
        "seeds only (" + ", ".join(KS) + ")": [
            ", ".join("" if v != v else f"± {v:.3f}" for v in vs) for vs in
            zip(*(comp[f"mse_{k}_seed_ci"] for k in KS), strict=True)],
        "task CI (1 step)": comp["task_ci_1"].map(lambda v: f"± {v:.3f}"),
        **{f"median, diverged ({k} step{'s' if k != '1' else ''})": [
            "" if d < 0 else f"{m:.3f}, {d}" for m, d in
            zip(comp[f"median_{k}"], comp[f"diverged_{k}"], strict=True)] for k in KS},
        "own adaptation (training tasks)": [
            _pm(m, h) for m, h in zip(comp["own_post_update"], comp["own_post_update_ci"],
                                      strict=True)],
        **({"test MSE, own adaptation (K)": [
            "" if m != m else f"{_pm(m, h)} (K = {int(k)})" for m, h, k in
            zip(comp["own_mse"], comp["own_mse_ci"], comp["own_steps"], strict=True)]}
           if "own_mse" in comp and comp["own_mse"].notna().any() else {}),
        "train s": comp["train_time_s"].map(lambda v: f"{v:.0f}"),
        "seeds": comp["seeds"], "status": comp["status"]})
    lines += ["## Test MSE (mean over seeds ± 95 % interval, seeds and test tasks)", "",
              "GE/step: predicted gradient-equivalents per task per meta-step "
              "(`method.gradient_equivalents()`); step ms: measured median wall time of a "
              "meta-step (eager or compiled as run, see the matched-cost table); own "
              "adaptation (training tasks): post-update loss on the training tasks after the "
              "variant's own inner loop (mean of the last 100 meta-steps; for the solved "
              "regime many small proximal steps, not the plain GD of the test columns); test "
              "MSE, own adaptation: the test tasks adapted by the variant's own inner loop "
              "(its K steps, update rule and step sizes, learned ones included) instead of "
              "plain GD at eval_lr, with the same interval; train s: training time "
              "per run without its first meta-step (which includes compiling); median, "
              "diverged: the median over test tasks (mean over seeds) and the number of test "
              "tasks, summed over seeds, whose MSE after k steps is above 10x their MSE "
              "before adaptation or not finite (plain GD blew up on them; a few of them "
              "decide the mean).", "",
              table.to_markdown(index=False), ""]
    lines += _matched_cost(comp)
    if not diffs.empty:
        partial = (diffs["task_part"] != "per-task").any()
        lines += ["## Which differences the intervals resolve", "",
                  "Paired by seed: a − b (negative: a is better), its 95 % interval for seeds "
                  "and test tasks (as above"
                  + ("; for these runs the test-set part of a paired difference is not "
                     "included: it needs the per-task tables, which were not kept, and the "
                     "bound from the two runs' stds over tasks ignores that the same tasks "
                     "are hard for every variant, which makes it too wide to say anything. "
                     "These intervals are the seed part only" if partial else "")
                  + "), and the two-sided p-value of the t statistic. "
                  "*Resolved* means the p-value after Holm's step-down correction (Holm 1979) "
                  "is below 0.05, within one of two families per k: the comparisons of every "
                  f"variant with the first row ({comp['variant'].iloc[0]}, the study's "
                  "primary question), and all pairs (exploratory); so the chance of any false "
                  "\"resolved\" in a family stays below 5 %. The interval shown is each "
                  "pair's own 95 % interval, so it can exclude 0 for a pair that is not "
                  "resolved.", ""]
        first = comp["variant"].iloc[0]
        for k in KS:
            d = diffs[diffs["k"] == int(k)]
            ranked = comp.sort_values(f"mse_{k}")["variant"].tolist()
            lines += [f"### After {k} step{'s' if k != '1' else ''}", "",
                      "Ranking (best first): " + " < ".join(ranked) + ".", ""]
            versus = [r for r in (_pair(d, v, first, "vs_first") for v in comp["variant"]
                                  if v != first) if r]
            if versus:
                primary = d[d["p_holm_vs_first"].notna()]
                lines += [f"Every variant against {first} (the first row; Holm over these "
                          f"{len(primary)} comparisons):", "",
                          pd.DataFrame(versus).to_markdown(index=False, disable_numparse=True), "",
                          f"{int(primary['resolved_vs_first'].sum())} of {len(primary)} "
                          f"resolved after Holm's correction ("
                          f"{int((primary['p_value'] < ALPHA).sum())} with p < 0.05 "
                          "uncorrected).", ""]
            adjacent = []
            for a, b in zip(ranked, ranked[1:], strict=False):
                row = _pair(d, a, b)
                if row is not None:
                    adjacent.append(row)
            if adjacent:
                lines += [f"Neighbours in the ranking (Holm over all {len(d)} pairs):", "",
                          pd.DataFrame(adjacent).to_markdown(index=False,
                                                             disable_numparse=True), ""]
            res = d[d["resolved"]]
            lines += [f"{len(res)} of {len(d)} pairs resolved at k = {k} after Holm's "
                      f"correction over all pairs ({int((d['p_value'] < ALPHA).sum())} with "
                      "p < 0.05 uncorrected; all pairs: `differences.csv`).", ""]
    lines += _own_differences(own_diffs, comp)
    if not tuning.empty:
        by_own = "score" in tuning and (tuning["score"] == "own").any()
        lines += ["## Tuning (validation tasks, seed "
                  f"{base['validation_seed']}; training seed {spec['tuning_seed']})", "",
                  "Chosen by the validation MSE after one adaptation step"
                  + (" (score gd), or after the variant's own adaptation (score own: "
                     "validation_own_mse)" if by_own else "") + "; grids in `study.json`.", "",
                  tuning[[c for c in ("variant", "point", "validation_mse_1",
                                      "validation_mse_10",
                                      *(("validation_own_mse", "score") if by_own else ()),
                                      "status", "chosen")
                          if c in tuning]].to_markdown(index=False, floatfmt=".4g"), ""]
    if not probes.empty:
        cols = ["err_maml", "cos_maml", "err_implicit", "cos_implicit", "implicit_defined",
                "prox_residual", "curvature"]
        agg = probes.groupby(["variant", "meta_step"], sort=False)[cols].mean().reset_index()
        lines += ["## Meta-gradient accuracy along training (probe tasks, mean over seeds)",
                  "", "err: ‖g − g*‖/‖g*‖ per task, cos: cosine(g, g*), against exact MAML at "
                  "the variant's own K and inner_lr and (implicit methods) the exact implicit "
                  "gradient at its λ; implicit_defined: probe tasks where the implicit "
                  "gradient exists on this ReLU net; prox_residual: proximal stationarity "
                  "residual relative to ‖∇L_tr(θ)‖; curvature: λ_max(∇²L_tr(θ)).", "",
                  agg.to_markdown(index=False, floatfmt=".3g"), ""]
    return "\n".join(lines)


def _matched_cost(comp: pd.DataFrame) -> list[str]:
    """The matched-cost variants' predicted cost next to their measured time per step."""
    matched = comp[comp["regime"] == "matched"]
    if matched.empty:
        return []
    first = comp.iloc[0]
    ref_ms = float(first["median_step_ms"])
    frame = pd.DataFrame({
        "variant": matched["variant"], "settings": matched["settings"],
        "GE/step (predicted)": matched["gradient_equivalents"],
        "step ms (measured)": matched["median_step_ms"].map(
            lambda v: f"{v:.2f}" if v == v else ""),
        "mode": matched["mode"],
        f"time / {first['variant']}'s": matched["median_step_ms"].map(
            lambda v: f"{v / ref_ms:.2f}" if v == v and ref_ms == ref_ms else ""),
        "after 1 step": [_pm(m, h) for m, h in zip(matched["mse_1"], matched["mse_1_ci"],
                                                   strict=True)]})
    return ["## Matched cost: predicted and measured", "",
            "The matched variants spend the same predicted number of gradient-equivalents "
            "per task per meta-step as the first row "
            f"({first['variant']}, {first['gradient_equivalents']:g} GE, "
            f"{ref_ms:.2f} ms {first['mode']}). Measured times differ: a Hessian-vector "
            "product costs more or less than two gradients, per-step overheads do not scale "
            "with the count, and some variants ran compiled (mode). Median wall time per "
            "meta-step over each run, median over seeds; machine load affects absolute "
            "times.", "", frame.to_markdown(index=False), ""]


def _t(n: int) -> float:
    from ..stats import t_quantile

    return t_quantile(0.975, n - 1)


def _pair(d: pd.DataFrame, a: str, b: str, family: str = "") -> dict[str, Any] | None:
    """Row a − b of a markdown table, with Holm's p-value in ``family`` (``""``: all pairs,
    ``"vs_first"``: the comparisons with the first row)."""
    row = d[(d["a"] == a) & (d["b"] == b)]
    sign = 1.0
    if row.empty:
        row, sign = d[(d["a"] == b) & (d["b"] == a)], -1.0
    if row.empty:
        return None
    r = row.iloc[0]
    lo, hi = sorted((sign * r["ci_low"] + 0.0, sign * r["ci_high"] + 0.0))
    suffix = f"_{family}" if family else ""
    return {"a": a, "b": b, "a − b": f"{sign * r['mean_diff'] + 0.0:.4f}",
            "95 % CI": f"[{lo:.4f}, {hi:.4f}]", "p": f"{r['p_value']:.2g}",
            "p (Holm)": f"{r['p_holm' + suffix]:.2g}",
            "resolved": "yes" if r["resolved" + suffix] else "no"}


def write_tables(out: Path, record: dict[str, Any]) -> dict[str, Path]:
    """Tables (``comparison.csv``, ``differences.csv``, ``runs.csv``, ``probes.csv``,
    ``per_task_means.csv``, ``study.md``) and figures of the study in ``out``, from the
    runs on disk; returns the figures."""
    from .design import spec_variants

    seeds = record["spec"]["seeds"]
    runs = load_runs(out, record)
    regimes = {v.name: v.regime for v in spec_variants(record["spec"])}
    regimes[BASELINE] = "joint training"
    task_means = load_task_means(out, record)
    comp = comparison(runs, regimes, record.get("diverged"), task_means)
    diffs = differences(runs, task_means)
    own_diffs = differences(runs, task_means, own=True)
    probes = load_probes(out, record)
    tuning = load_tuning(out)
    logs = load_logs(out, record)
    runs.to_csv(out / "runs.csv", index=False)
    comp.to_csv(out / "comparison.csv", index=False)
    diffs.to_csv(out / "differences.csv", index=False)
    if not own_diffs.empty:
        own_diffs.to_csv(out / "own_differences.csv", index=False)
    if not probes.empty:
        probes.to_csv(out / "probes.csv", index=False)
    (out / "study.md").write_text(markdown(comp, diffs, tuning, probes, record, seeds,
                                           own_diffs))
    figures = {"comparison": plots.plot_study_comparison(
        comp, out / plots.STUDY_FIGURES["comparison"], KS),
        "heldout": plots.plot_study_heldout(runs, out / plots.STUDY_FIGURES["heldout"])}
    if logs:
        figures["curves"] = plots.plot_study_curves(logs, out / plots.STUDY_FIGURES["curves"])
    if not probes.empty:
        figures["accuracy"] = plots.plot_accuracy(probes, logs,
                                                  out / plots.STUDY_FIGURES["accuracy"])
    if not tuning.empty:
        figures["tuning"] = plots.plot_tuning(tuning, out / plots.STUDY_FIGURES["tuning"])
    return figures


__all__ = ["ALPHA", "BASELINE", "KS", "OWN", "TASK_MEANS", "comparison", "differences",
           "load_logs", "load_probes", "load_runs", "load_task_means", "load_tuning",
           "markdown", "write_tables"]
