"""What the numerical checks cost a healthy call: ``diagnose="warn"`` against ``"off"``,
side by side, interleaved round-robin, medians.

    python -m metagrad_bench.check_cost [--threads 1] [--repeats 41]

The workload is the Finn et al. 2017 sinusoid (MLP 1-40-40-1 ReLU, 25 tasks, 10 + 10
shots, float32). A healthy call with the checks on pays for one forward pass of the train
loss at the adapted parameters (so that the last inner iterate is checked) and for reading
the per-task diagnostics; the power iteration that explains a problem runs only when one
is found, so each setting here is first confirmed to have no findings.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import replace

import torch

import metagrad as mg
from metagrad._app import markdown_table
from metagrad.problems import make_problem


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m metagrad_bench.check_cost",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=41)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    p = make_problem("sinusoid")
    methods = [mg.MAML(steps=1, inner_lr=0.01), mg.MAML(steps=5, inner_lr=0.01),
               mg.FOMAML(steps=1, inner_lr=0.01), mg.FOMAML(steps=5, inner_lr=0.01),
               mg.Reptile(steps=5, inner_lr=0.01),
               mg.IMAML(steps=5, inner_lr=0.005, lam=100.0, cg_iters=5),
               mg.Neumann(steps=5, inner_lr=0.005, lam=100.0, terms=5),
               mg.Penalty(steps=5, inner_lr=0.01, lam=0.001)]
    rows = []
    for method in methods:
        checked = replace(method, diagnose="record")
        findings = checked(p.loss, p.params, p.tasks).findings
        if findings:
            raise SystemExit(f"{method}: not a healthy call here ({findings[0].message})")
        off = replace(method, diagnose="off")
        times: dict[str, list[float]] = {"record": [], "off": []}
        for fn in (checked, off):  # warm-up
            fn(p.loss, p.params, p.tasks)
        for _ in range(args.repeats):
            for key, fn in (("record", checked), ("off", off)):
                t0 = time.perf_counter()
                fn(p.loss, p.params, p.tasks)
                times[key].append(time.perf_counter() - t0)
        on, no = statistics.median(times["record"]), statistics.median(times["off"])
        label = f"{method.name} K={method.steps}"
        rows.append({"method": label, "checks_on_ms": 1e3 * on, "checks_off_ms": 1e3 * no,
                     "on_over_off": on / no})
        print(rows[-1], flush=True)
    import pandas as pd

    frame = pd.DataFrame(rows)
    print(markdown_table(frame, floatfmt=".3g"))
    print(f"torch {torch.__version__}, {args.threads} thread(s), load average "
          f"{os.getloadavg()[0]:.1f}, medians of {args.repeats} interleaved calls")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
