"""``python -m metagrad_bench.asv_history``: the asv history as a figure that needs no
browser: time, peak memory and accuracy per commit, so a regression shows as a step.

For every benchmark and parameter combination in ``bench/results/asv/results/<machine>/``
the measured value per commit, in commit-date order: ``time_`` benchmarks in ms,
``peakmem_`` (the process's peak resident memory) and CUDA ``track_peak_mib`` in MiB, the
``track_`` accuracy benchmarks as relative errors against the exact target, the compile
times in seconds. One panel per benchmark, one row per kind (time, memory, accuracy and
the rest). Writes ``history.png`` and ``history.csv`` (one row per benchmark, parameters
and commit) into ``--out``. asv's own HTML pages are built on demand (``asv publish``),
not kept.
"""

from __future__ import annotations

import argparse
import ast
import itertools
import json
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "asv" / "results"
KINDS = ("time", "memory", "accuracy", "other")
"""The figure's rows, in order."""


def _label(value: str) -> str:
    """asv stores parameter values as Python literals (``"'maml'"``)."""
    try:
        return str(ast.literal_eval(value))
    except (ValueError, SyntaxError):
        return value


def kind_of(name: str, unit: str) -> tuple[str, str, float]:
    """(row, axis label, factor to the axis unit) of a benchmark from its name and unit."""
    short = name.rsplit(".", 1)[-1]
    if short.startswith("time_"):
        return "time", "ms per call", 1e3
    if short.startswith("peakmem_"):
        return "memory", "peak resident MiB", 1 / 2**20
    if unit == "MiB":
        return "memory", "peak CUDA MiB", 1.0
    if "error" in unit or "error" in short:
        return "accuracy", "relative error vs exact", 1.0
    return "other", unit, 1.0


def read(machine_dir: Path, units: dict[str, str] | None = None):
    """One record per (benchmark, parameter combination, commit) with a measured value."""
    import pandas as pd

    units = units or {}
    rows = []
    for path in sorted(machine_dir.glob("*.json")):
        if path.name == "machine.json":
            continue
        data = json.loads(path.read_text())
        columns = data["result_columns"]
        when = datetime.fromtimestamp(data["date"] / 1000, tz=timezone.utc)
        for name, values in data["results"].items():
            record = dict(zip(columns, values))
            kind, axis, factor = kind_of(name, units.get(name, "seconds"))
            combos = itertools.product(*[[_label(v) for v in p] for p in record["params"]])
            for combo, value in zip(combos, record["result"] or []):
                if value is None:  # a failed or skipped run of that combination
                    continue
                rows.append({"benchmark": name.split(".", 1)[-1], "kind": kind,
                             "axis": axis, "params": " ".join(combo),
                             "commit": data["commit_hash"][:8], "date": when,
                             "value": factor * float(value)})
    return pd.DataFrame(rows)


def _units(results: Path) -> dict[str, str]:
    """Benchmark name → unit, from asv's ``benchmarks.json`` next to the machine folders."""
    path = results / "benchmarks.json"
    if not path.is_file():
        return {}
    return {k: v.get("unit", "") for k, v in json.loads(path.read_text()).items()
            if isinstance(v, dict)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m metagrad_bench.asv_history",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default=str(RESULTS),
                    help="asv's results_dir (default: the committed one)")
    ap.add_argument("--out", default=str(RESULTS.parent), help="folder for the figure")
    args = ap.parse_args(argv)
    results = Path(args.results)
    machines = sorted(p for p in results.iterdir() if p.is_dir()) if results.is_dir() else []
    if not machines:
        ap.error(f"--results {args.results}: no machine folder with asv results in it")

    from metagrad import plotting

    plotting.setup()
    colors = plotting.palette()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    units = _units(results)
    for machine in machines:
        frame = read(machine, units).sort_values("date")
        if frame.empty:
            continue
        order = list(dict.fromkeys(frame["commit"]))  # commit-date order
        rows = [k for k in KINDS if k in set(frame["kind"])]
        panels = {k: sorted(frame[frame["kind"] == k]["benchmark"].unique()) for k in rows}
        width = max(len(v) for v in panels.values())
        fig, axes = plotting.plt.subplots(len(rows), width, squeeze=False,
                                          figsize=(6.2 * width, 4.4 * len(rows)))
        for r, kind in enumerate(rows):
            for c in range(width):
                ax = axes[r][c]
                if c >= len(panels[kind]):
                    ax.set_visible(False)
                    continue
                bench = panels[kind][c]
                _panel(ax, frame[frame["benchmark"] == bench], order, colors, bench)
        fig.suptitle(f"asv history on {machine.name}: time, memory and accuracy per commit")
        suffix = "" if len(machines) == 1 else f"_{machine.name}"
        plotting.save(fig, out / f"history{suffix}.png")
        frame.assign(date=frame["date"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")).to_csv(
            out / f"history{suffix}.csv", index=False)
        print(f"wrote {out / f'history{suffix}.png'} ({len(order)} commits, "
              f"{frame.groupby(['benchmark', 'params']).ngroups} series)")
    return 0


def _panel(ax, part, order: list[str], colors: dict, bench: str) -> None:
    """One benchmark's series: colour by method, line style by the second parameter."""
    from metagrad import plotting

    styles = ["-", "--", ":", "-."]
    seconds = sorted({p.split()[1] for p in part["params"] if len(p.split()) > 1})
    for params, series in part.groupby("params", sort=True):
        method, *rest = params.split()
        ls = styles[seconds.index(rest[0]) % len(styles)] if rest else "-"
        x = [order.index(c) for c in series["commit"]]
        ax.plot(x, series["value"], marker="o", ms=3, lw=1.2, ls=ls, color=colors.get(method),
                label=params)
    values = part["value"]
    if (values > 0).all() and values.max() / max(values.min(), 1e-300) > 20:
        ax.set_yscale("log")
        plotting.plain_log_labels(ax, "y")
    ax.set_xticks(range(len(order)), order, rotation=45, ha="right", fontsize=8)
    ax.set_xlabel("commit (in date order)")
    ax.set_ylabel(part["axis"].iloc[0])
    ax.set_title(bench, fontsize=10)
    ax.legend(fontsize=6, ncol=2)


if __name__ == "__main__":
    raise SystemExit(main())
