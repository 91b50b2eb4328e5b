"""``python -m metagrad_bench.asv_history``: the asv history as a figure that needs no
browser.

asv's own pages (``asv publish``, then ``asv preview``) load their JavaScript libraries
from the internet; this draws the same numbers offline: for every benchmark and parameter
combination in ``bench/results/asv/results/<machine>/``, the measured time per commit in
commit-date order, so a regression shows as a step. Writes ``history.png`` and
``history.csv`` (one row per benchmark, parameters and commit) into ``--out``.
"""

from __future__ import annotations

import argparse
import ast
import itertools
import json
from datetime import datetime, timezone
from pathlib import Path

from metagrad import _provenance as provenance

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "asv" / "results"


def _label(value: str) -> str:
    """asv stores parameter values as Python literals (``"'maml'"``)."""
    try:
        return str(ast.literal_eval(value))
    except (ValueError, SyntaxError):
        return value


def read(machine_dir: Path):
    """One record per (benchmark, parameter combination, commit) with a measured time."""
    import pandas as pd

    rows = []
    for path in sorted(machine_dir.glob("*.json")):
        if path.name == "machine.json":
            continue
        data = json.loads(path.read_text())
        columns = data["result_columns"]
        when = datetime.fromtimestamp(data["date"] / 1000, tz=timezone.utc)
        for name, values in data["results"].items():
            record = dict(zip(columns, values))
            combos = itertools.product(*[[_label(v) for v in p] for p in record["params"]])
            for combo, seconds in zip(combos, record["result"] or []):
                if seconds is None:  # a failed or skipped run of that combination
                    continue
                rows.append({"benchmark": name.split(".", 1)[-1], "params": " ".join(combo),
                             "commit": data["commit_hash"][:8], "date": when,
                             "ms": 1e3 * float(seconds)})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m metagrad_bench.asv_history",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default=str(RESULTS),
                    help="asv's results_dir (default: the committed one)")
    ap.add_argument("--out", default=str(RESULTS.parent), help="folder for the figure")
    args = ap.parse_args(argv)
    machines = sorted(p for p in Path(args.results).iterdir() if p.is_dir())
    if not machines:
        ap.error(f"--results {args.results}: no machine folder with asv results in it")

    from metagrad import plotting

    plotting.setup()
    colors = plotting.palette()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for machine in machines:
        frame = read(machine).sort_values("date")
        if frame.empty:
            continue
        order = list(dict.fromkeys(frame["commit"]))  # commit-date order
        benchmarks = sorted(frame["benchmark"].unique())
        fig, axes = plotting.plt.subplots(1, len(benchmarks), squeeze=False,
                                          figsize=(6.5 * len(benchmarks), 4.4))
        for ax, bench in zip(axes[0], benchmarks):
            part = frame[frame["benchmark"] == bench]
            styles = ["-", "--", ":", "-."]
            steps = sorted({p.split()[1] for p in part["params"] if len(p.split()) > 1},
                           key=float)
            for params, series in part.groupby("params", sort=True):
                # Colour: the method's, as in every figure; line style: the K.
                method, *rest = params.split()
                ls = styles[steps.index(rest[0]) % len(styles)] if rest else "-"
                x = [order.index(c) for c in series["commit"]]
                ax.plot(x, series["ms"], marker="o", ms=3, lw=1.2, ls=ls,
                        color=colors.get(method),
                        label=method + (f" K={rest[0]}" if rest else ""))
            ax.set_yscale("log")
            plotting.plain_log_labels(ax, "y")
            ax.set_xticks(range(len(order)), order, rotation=45, ha="right", fontsize=8)
            ax.set_xlabel("commit (in date order)")
            ax.set_ylabel("ms per meta-gradient")
            ax.set_title(bench, fontsize=10)
            ax.legend(fontsize=6, ncol=2)
        fig.suptitle(f"asv history on {machine.name}")
        suffix = "" if len(machines) == 1 else f"_{machine.name}"
        plotting.save(fig, out / f"history{suffix}.png")
        frame.assign(date=frame["date"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")).to_csv(
            out / f"history{suffix}.csv", index=False)
        provenance.write(out, file=f"provenance{suffix}.json", command=provenance.command_line(
            "python -m metagrad_bench.asv_history"), kind="bench", mode="eager",
            what="the asv history drawn from asv's results")
        print(f"wrote {out / f'history{suffix}.png'} ({len(order)} commits, "
              f"{frame.groupby(['benchmark', 'params']).ngroups} series)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
