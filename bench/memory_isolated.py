"""Peak memory vs K with every point in a fresh process .

In one long-lived process the CPU peak (sampled RSS, :mod:`metagrad_bench.measure`) carries an
offset from allocator state left by earlier calls; a fresh Python process per
(method, K) point removes it. CUDA numbers (max_memory_allocated) need no isolation but
get it too. Usage::

    python -m metagrad_bench.memory_isolated --problem convnet --steps 1 10 50 100 \\
        --methods maml maml-trajectory imaml neumann penalty --out bench/results/memory_cpu

Writes ``memory.csv`` (method, problem, meta_batch, steps, device, peak_mem_mb,
param_copies_mb = (K+1)·d·T·bytes, the trajectory's stored parameters) and
``memory_vs_steps.png``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from metagrad import _provenance as provenance

_CHILD = """
import json, sys, warnings
warnings.simplefilter("ignore")
from metagrad.problems import make_problem
from metagrad_bench.measure import peak_memory_mb
from metagrad_bench import variants
a = json.loads(sys.argv[1])
p = make_problem(a["problem"], meta_batch=a["meta_batch"], device=a["device"])
_, fn = variants.make(a["method"], steps=a["steps"], inner_lr=0.01, lam=1.0, cg_iters=5, terms=5)
fn(p.loss, p.params, p.tasks)  # warm-up: first-call allocations are not the method's
peak = peak_memory_mb(lambda: fn(p.loss, p.params, p.tasks), a["device"])
print(json.dumps({"peak_mem_mb": peak, "dim": p.dim, "meta_batch": p.tasks.num_tasks}))
"""


def measure(method: str, problem: str, steps: int, device: str, meta_batch: int | None) -> dict:
    arg = json.dumps({"method": method, "problem": problem, "steps": steps, "device": device,
                      "meta_batch": meta_batch})
    out = subprocess.run([sys.executable, "-c", _CHILD, arg], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m metagrad_bench.memory_isolated",
                                 description=__doc__)
    ap.add_argument("--problem", default="convnet")
    ap.add_argument("--methods", nargs="+",
                    default=["maml", "maml-trajectory", "imaml", "neumann", "penalty"])
    ap.add_argument("--steps", nargs="+", type=int, default=[1, 2, 5, 10, 20, 50, 100])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--meta-batch", type=int, default=None)
    ap.add_argument("--out", default="bench/results/memory_cpu")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    points = [(m, k) for m in args.methods for k in args.steps]
    for method, k in tqdm(points, desc="memory", unit="process"):
        r = measure(method, args.problem, k, args.device, args.meta_batch)
        itemsize = 4  # float32 workloads
        rows.append({"method": method, "problem": args.problem, "meta_batch": r["meta_batch"],
                     "steps": k, "device": args.device, "peak_mem_mb": r["peak_mem_mb"],
                     "param_copies_mb": (k + 1) * r["dim"] * r["meta_batch"] * itemsize / 2**20})
    df = pd.DataFrame(rows)
    df.to_csv(out / "memory.csv", index=False)

    from metagrad import plotting

    plotting.setup()
    fig, ax = plotting.plt.subplots(figsize=(6.5, 4.2))
    colors = plotting.palette()
    for method, d in df.groupby("method", sort=False):
        fam = method.split("-")[0]
        ax.plot(d["steps"], d["peak_mem_mb"], marker="o", label=method,
                color=colors.get(fam), ls="--" if "-" in method else "-")
    d = df.drop_duplicates("steps")
    ax.plot(d["steps"], d["param_copies_mb"], color="grey", lw=1, ls=":",
            label="(K+1)·d·T floats")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("K (inner steps)")
    ax.set_ylabel("peak MiB above baseline")
    ax.set_title(f"{args.problem}, {args.device}, meta-batch {int(df['meta_batch'].iloc[0])}, "
                 "one process per point")
    ax.legend(fontsize=8)
    plotting.save(fig, out / "memory_vs_steps.png")
    provenance.write(out, command=provenance.command_line(
        "python -m metagrad_bench.memory_isolated"), kind="bench", mode="eager",
        what="peak memory vs K, one fresh process per point", device=args.device)
    print(df.pivot_table(index="steps", columns="method", values="peak_mem_mb").round(1)
          .to_markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
