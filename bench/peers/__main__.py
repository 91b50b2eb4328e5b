"""``python -m metagrad_bench.peers --out bench/results/peers_cpu``: time metagrad and the peers on
the same workload, interleaved (round-robin, so load drifts hit all alike), and compare
their meta-gradients with metagrad's. Writes ``peers.csv`` and ``peers.md``."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

import pandas as pd
import torch

from metagrad._app import markdown_table
from metagrad.problems import Problem, make_problem

from .. import variants
from ..measure import device_name
from . import ADAPTERS, CASES


def make(device: str, meta_batch: int = 25, seed: int = 0) -> Problem:
    """A fresh copy of the workload (peers may write into the module's parameters)."""
    return make_problem("sinusoid", meta_batch=meta_batch, seed=seed, device=device)


def metagrad_impls(case) -> list[tuple[str, object]]:
    names = [name for name, v in variants.VARIANTS.items() if v.family == case.family
             and not v.options.get("checkpoint")]
    out = []
    for name in names:
        _, fn = variants.make(name, steps=case.steps, inner_lr=case.inner_lr, lam=case.lam,
                              cg_iters=case.cg_iters, terms=None)
        label = "metagrad" if name == case.family else f"metagrad {name.split('-', 1)[1]}"
        out.append((label, lambda p, fn=fn: list(fn(p.loss, p.params, p.tasks).grad.values())))
    return out


def rel_error(g: list[torch.Tensor], ref: list[torch.Tensor]) -> float:
    a = torch.cat([t.reshape(-1) for t in g]).double()
    b = torch.cat([t.reshape(-1) for t in ref]).double()
    return float((a - b).norm() / b.norm())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m metagrad_bench.peers", description=__doc__)
    ap.add_argument("--out", default="bench/results/peers_cpu")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--cases", nargs="*", default=None, help="subset of case names")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads (default: torch's choice); 1 makes the "
                         "comparison robust to other load on a shared machine")
    args = ap.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    modules = [importlib.import_module(m) for m in ADAPTERS]
    status = {m.NAME: m.available() for m in modules}
    rows = []
    for case in CASES:
        if args.cases and case.name not in args.cases:
            continue
        impls = metagrad_impls(case)
        for m in modules:
            if status[m.NAME] is not None:
                continue
            for key, fn in m.CASES.items():
                if key.split(" ")[0] == case.family:
                    suffix = key[len(case.family):]
                    impls.append((m.NAME + suffix, lambda p, fn=fn, c=case: fn(p, c)))
        problems = {label: make(args.device) for label, _ in impls}
        grads, times = {}, {label: [] for label, _ in impls}
        failed = {}
        for label, fn in impls:  # warm-up (and compile) + the gradient to compare
            try:
                grads[label] = fn(problems[label])
            except Exception as err:  # noqa: BLE001 - a failing peer is a finding, not a crash
                failed[label] = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
                print(f"[peers] {case.name}: {label} FAILED: {failed[label]}", flush=True)
        for label in failed:
            rows.append({"case": case.name, "implementation": label, "error": failed[label]})
        impls = [(label, fn) for label, fn in impls if label not in failed]
        times = {label: [] for label, _ in impls}
        for _ in range(args.repeats):
            for label, fn in impls:
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                fn(problems[label])
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                times[label].append(time.perf_counter() - t0)
        ref_ms = 1e3 * statistics.median(times["metagrad"])
        loop_ms = 1e3 * statistics.median(times["autograd loop"])
        for label, _ in impls:
            q = statistics.quantiles(times[label], n=4)
            med = 1e3 * statistics.median(times[label])
            rows.append({"case": case.name, "implementation": label, "median_ms": med,
                         "iqr_ms": 1e3 * (q[2] - q[0]),
                         "time_over_metagrad": med / ref_ms,
                         "loop_time_over_this": loop_ms / med,
                         "diff_vs_metagrad": rel_error(grads[label], grads["metagrad"]),
                         "error": ""})
        print(f"[peers] {case.name}: " + ", ".join(
            f"{r['implementation']} {r['median_ms']:.1f} ms" for r in rows
            if r["case"] == case.name and not r["error"]),
            flush=True)
    df = pd.DataFrame(rows)
    env = (f"device `{args.device}` ({device_name(args.device)}), torch {torch.__version__}"
           + (f", CUDA {torch.version.cuda}" if args.device.startswith("cuda") else "")
           + f", Python {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M')}, "
           f"1/5-min load average at the end {os.getloadavg()[0]:.1f}/{os.getloadavg()[1]:.1f} "
           f"on {os.cpu_count()} cores")
    versions = []
    for mod in ("higher", "torchopt", "betty", "learn2learn"):
        try:
            v = importlib.metadata.version(mod if mod != "betty" else "betty-ml")
        except importlib.metadata.PackageNotFoundError:
            v = "not installed"
        versions.append(f"{mod} {v}")
    df.to_csv(out / "peers.csv", index=False)
    skipped = "\n".join(f"- {k}: not measured — {v}" for k, v in status.items() if v)
    md = (
        "# metagrad vs peer libraries (same workload, same run)\n\n"
        f"{env}; {', '.join(versions)}.\n\n"
        "Sinusoid MLP 1-40-40-1 ReLU, meta-batch 25, 10+10 shots, inner_lr 0.01, float32. "
        f"Median of {args.repeats} calls per implementation, interleaved round-robin after a "
        "warm-up. `time_over_metagrad` = this / metagrad eager (vmap); `loop_time_over_this` = "
        "per-task autograd loop / this (the speed-up over the plain loop); `diff_vs_metagrad` = "
        "‖g − g_metagrad‖/‖g_metagrad‖ of the mean meta-gradient. `(hand CG)`: the library "
        "has no implicit gradient, so its inner loop is followed by a hand-written CG loop.\n\n"
        f"{markdown_table(df, floatfmt='.3g')}\n\n{skipped}\n\n"
        f"Command: `python -m metagrad_bench.peers --out {args.out} --device {args.device} "
        f"--repeats {args.repeats}"
        + (f" --threads {args.threads}" if args.threads else "") + "`\n"
    )
    (out / "peers.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
