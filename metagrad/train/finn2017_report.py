"""The result of ``metagrad train --preset finn2017`` next to the published numbers:
``finn2017.md``, ``finn2017.csv`` and ``finn2017.png``.

For each test support size K and number of adaptation steps k: the test MSE of MAML and
of the joint-training baseline on the reference's 600 test tasks with Finn et al.'s
interval over tasks (1.96·std/√600, ddof = 0) and, with several seeds, the mean over
seeds with its 95 % t interval; and the value of Finn et al. 2017, Table 2 where there
is one (K = 5; no interval was published).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .. import plotting
from . import plots
from .finn2017 import PUBLISHED
from .stats import seed_interval

REPORTED_STEPS = ("1", "5", "10")


def table(summaries: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per (model, K, k): mean over seeds, t interval across seeds, mean of the
    per-run task intervals, and the published value."""
    rows = []
    shots = sorted(summaries[0]["heldout_shots"], key=int)
    for model in ("maml", "baseline"):
        for K in shots:
            evals = [(s["heldout_shots"] if model == "maml" else
                      s["baseline"]["heldout_shots"])[K] for s in summaries]
            for k in ("0", *REPORTED_STEPS):
                values = [e["mse_by_steps"][int(k)] for e in evals]
                cis = [e["ci95_by_steps"][int(k)] for e in evals]
                iv = seed_interval(values)
                published = PUBLISHED[model]["post_update_mse"].get(k) \
                    if int(K) == PUBLISHED[model]["shots"] else None
                rows.append({
                    "model": model, "shots": int(K), "steps": int(k), "mse": iv.mean,
                    "seed_ci95": iv.half_width, "task_ci95": sum(cis) / len(cis),
                    "seeds": len(values),
                    "eval_lr": evals[0]["inner_lr"] if model == "maml" else
                    evals[0]["eval_lr_by_steps"][k],
                    "published": published})
    return pd.DataFrame(rows)


def write_report(out: Path, summaries: Sequence[dict[str, Any]]) -> Path:
    """Write ``finn2017.md``, ``finn2017.csv`` and ``finn2017.png`` into ``out``; returns
    the figure's path."""
    frame = table(summaries)
    frame.to_csv(out / "finn2017.csv", index=False)
    first = summaries[0]
    cfg = first["config"]
    n = len(summaries)
    steps_ms = sorted(1e3 * s["median_step_time_s"] for s in summaries)
    lines = [
        "# Finn et al. 2017 sinusoid protocol (`metagrad train --preset finn2017`)", "",
        f"MAML, K = {cfg['shots']} support + {cfg['query']} query points, {cfg['steps']} "
        f"inner step with inner_lr = {cfg['inner_lr']}, Adam meta_lr = {cfg['meta_lr']}, "
        f"meta-batch {cfg['meta_batch']}, {cfg['meta_steps']} meta-steps, MLP 1-"
        f"{'-'.join(map(str, cfg['hidden']))}-1 ReLU, initialisation `{cfg['init']}`; "
        f"{n} seed(s) ({', '.join(str(s['config']['seed']) for s in summaries)}). "
        f"Test: the reference code's {cfg['heldout_tasks']} test tasks "
        f"(`numpy.random.seed({cfg['heldout_seed']})`), K query points each, plain GD with "
        f"the training inner_lr; the baseline (Adam on the support points, "
        f"{first['baseline'].get('adam_steps')} steps) fine-tunes with the step size chosen "
        f"per k on validation tasks from {first['baseline'].get('eval_lr_grid')}.", "",
        f"Median time per meta-step {steps_ms[len(steps_ms) // 2]:.2f} ms "
        f"({'compiled' if cfg['compile'] else 'eager'}, {cfg['threads']} thread(s)); "
        f"training {sum(s['train_time_s'] for s in summaries) / n:.0f} s per seed.", "",
        "Intervals: *task CI* is Finn et al.'s 1.96·std/√600 over the test tasks of one run "
        "(population std), averaged over seeds; *seed CI* the 95 % t interval of the mean "
        "over seeds (none for one seed). Finn et al. published no interval.", "",
    ]
    show = frame[frame["steps"] > 0].copy()
    show["ours"] = [f"{m:.3f} ± {t:.3f}" for m, t in zip(show["mse"], show["task_ci95"],
                                                        strict=True)]
    show["seed CI"] = show["seed_ci95"].map(lambda v: "" if v != v else f"± {v:.3f}")
    show["published"] = show["published"].map(lambda v: "" if v is None or v != v
                                              else f"{v:.2f}")
    lines += [show[["model", "shots", "steps", "ours", "seed CI", "eval_lr", "published"]]
              .rename(columns={"ours": "test MSE ± task CI"}).to_markdown(index=False), ""]
    (out / "finn2017.md").write_text("\n".join(lines) + "\n")
    return _figure(frame, summaries, out / "finn2017.png")


def _figure(frame: pd.DataFrame, summaries: Sequence[dict[str, Any]], path: Path) -> Path:
    plotting.setup()
    shots = sorted(summaries[0]["heldout_shots"], key=int)
    fig, axes = plotting.plt.subplots(1, len(shots), figsize=(4.6 * len(shots), 4.0),
                                      sharey=True, squeeze=False)
    for ax, K in zip(axes[0], shots, strict=True):
        for model in ("maml", plots.BASELINE):
            curves = [(s["heldout_shots"] if model == "maml" else
                       s["baseline"]["heldout_shots"])[K] for s in summaries]
            ks = list(range(len(curves[0]["mse_by_steps"])))
            mean = [sum(c["mse_by_steps"][k] for c in curves) / len(curves) for k in ks]
            ci = [sum(c["ci95_by_steps"][k] for c in curves) / len(curves) for k in ks]
            color = plotting.palette()["maml"] if model == "maml" else plots.BASELINE_COLOR
            label = "MAML" if model == "maml" else "joint-training baseline"
            ax.plot(ks, mean, color=color, marker="o", ms=3, label=f"{label} (ours)")
            ax.fill_between(ks, [m - c for m, c in zip(mean, ci, strict=True)],
                            [m + c for m, c in zip(mean, ci, strict=True)], color=color,
                            alpha=0.2, lw=0)
            pub = PUBLISHED["maml" if model == "maml" else "baseline"]
            if int(K) == pub["shots"]:
                xs = [int(k) for k in pub["post_update_mse"]]
                ax.scatter(xs, list(pub["post_update_mse"].values()), color=color, marker="x",
                           s=70, zorder=4, label=f"{label}, Finn et al. Table 2")
        ax.set_yscale("log")
        ax.set_title(f"K = {K} test shots (600 tasks, ± 1.96·std/√n)")
        ax.set_xlabel("adaptation steps")
    axes[0][0].set_ylabel("test MSE")
    axes[0][0].legend(fontsize="x-small")
    return plotting.save(fig, path)


__all__ = ["table", "write_report"]
