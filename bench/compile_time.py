"""``python -m metagrad_bench.compile_time --threads 1``: what ``mg.compile`` costs before its
first meta-gradient, cold and with a warm cache, in new processes, and what it costs per call.

Workload: the sinusoid MLP 1-40-40-1 ReLU of Finn et al. 2017, 25 tasks, 10 + 10 shots,
inner_lr 0.01, float32; cases MAML K = 1, 5, 10, FOMAML K = 5 and iMAML (5 proximal
steps, λ = 1, 5 CG iterations), each compiled with ``loop="unrolled"`` (K copies of the
inner step traced into one graph) and ``loop="scan"`` (the K inner steps as one torch
``scan`` loop whose body is compiled once; see ``metagrad.compiled``).

Each (case, loop) runs in new Python processes, pinned to one CPU (``--pin``), with
``TORCHINDUCTOR_CACHE_DIR`` pointing at a folder of its own:

* ``cold s``: the first call in a process whose cache folder holds no compiled graph
  (tracing, AOTAutograd, inductor code generation and the C++ build, plus one run).
  Before it, a separate process compiles a one-line function in the same folder, so the
  one-off probes of the CPU's vector instruction set (a few C++ builds inductor runs once
  per folder, whatever is compiled) are not charged to the case; they are reported
  separately as ``probe s``.
* ``warm s``: the first call in a second new process, same folder: tracing again, then
  the FX-graph and AOTAutograd caches instead of code generation and C++ builds.
  ``import s`` is the time to import torch and metagrad in that process, and
  ``warm total s`` = import + warm first call, from the process's start to its first
  meta-gradient.
* ``call ms``: median of ``--repeats`` calls after the first (steady state), and the
  eager method's median in the same process for reference.

The machine is shared: each value is one measurement; the load average is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

CASES = {
    "maml K=1": ("maml", 1), "maml K=5": ("maml", 5), "maml K=10": ("maml", 10),
    "fomaml K=5": ("fomaml", 5), "imaml K=5 λ=1 cg=5": ("imaml", 5),
}
LOOPS = ("unrolled", "scan", "stepwise")


def _child(args) -> None:
    start = time.perf_counter()
    import statistics
    import warnings

    import torch
    import torch.nn.functional as F

    import metagrad as mg
    from metagrad.models import mlp

    imported = time.perf_counter() - start
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    if args.probe:
        torch.compile(lambda x: x + 1)(torch.ones(3))
        print(json.dumps({"probe_s": time.perf_counter() - start - imported}))
        return
    family, steps = CASES[args.case]
    model = mlp((1, 40, 40, 1), seed=0)
    loss = mg.module_loss(model, F.mse_loss)
    params = mg.params_of(model)
    tasks = mg.Sinusoid().sample(25, seed=0)
    if family == "maml":
        method = mg.MAML(steps=steps, inner_lr=0.01, diagnose="off")
    elif family == "fomaml":
        method = mg.FOMAML(steps=steps, inner_lr=0.01, diagnose="off")
    else:
        method = mg.IMAML(steps=steps, inner_lr=0.01, lam=1.0, cg_iters=5, diagnose="off")
    compiled = mg.compile(method, loop=args.loop)
    t0 = time.perf_counter()
    out = compiled(loss, params, tasks)
    first = time.perf_counter() - t0
    result = {"import_s": imported, "first_s": first}
    if args.repeats:
        def median_ms(fn, n):
            times = []
            for _ in range(n):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
            return 1e3 * statistics.median(times)

        ref = method(loss, params, tasks)
        a = torch.cat([g.reshape(-1) for g in out.grad.values()]).double()
        b = torch.cat([g.reshape(-1) for g in ref.grad.values()]).double()
        result["rel_diff"] = float((a - b).norm() / b.norm())
        calls, eager = [], []
        for _ in range(3):  # interleaved: load drifts hit both
            calls.append(median_ms(lambda: compiled(loss, params, tasks), args.repeats))
            eager.append(median_ms(lambda: method(loss, params, tasks), max(3, args.repeats // 10)))
        result["call_ms"] = statistics.median(calls)
        result["eager_ms"] = statistics.median(eager)
    print(json.dumps(result))


def _run_child(folder: str, argv: list[str], pin: int | None) -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": folder}
    cmd = [sys.executable, "-m", "metagrad_bench.compile_time", "--child", *argv]
    if pin is not None:
        cmd = ["taskset", "-c", str(pin), *cmd]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m metagrad_bench.compile_time",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--pin", type=int, default=None,
                    help="CPU to pin every process to (default: the first allowed one)")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--cases", nargs="*", default=None, choices=list(CASES))
    ap.add_argument("--loops", nargs="*", default=list(LOOPS), choices=LOOPS)
    ap.add_argument("--out", default=None, help="write compile_time.md and .json here")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--loop", default="auto", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args)
        return 0
    pin = args.pin if args.pin is not None else min(os.sched_getaffinity(0))
    load_start = os.getloadavg()
    rows = []
    for case in args.cases or list(CASES):
        for loop in args.loops:
            if loop == "scan" and CASES[case][1] < 2:
                continue  # nothing to scan (mg.compile refuses loop="scan" below K = 2)
            folder = tempfile.mkdtemp(prefix="mg_compile_time_")
            try:
                base = ["--threads", str(args.threads), "--case", case, "--loop", loop]
                probe = _run_child(folder, [*base, "--probe"], pin)
                cold = _run_child(folder, [*base, "--repeats", str(args.repeats)], pin)
                warm = _run_child(folder, [*base, "--repeats", "0"], pin)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            row = {"case": case, "loop": loop, "probe_s": probe["probe_s"],
                   "cold_s": cold["first_s"], "warm_s": warm["first_s"],
                   "import_s": warm["import_s"], "warm_total_s": warm["import_s"] + warm["first_s"],
                   "call_ms": cold["call_ms"], "eager_ms": cold["eager_ms"],
                   "rel_diff": cold["rel_diff"], "load": os.getloadavg()[0]}
            rows.append(row)
            print(f"[compile_time] {case} {loop}: cold {row['cold_s']:.1f} s, warm "
                  f"{row['warm_s']:.1f} s (+ import {row['import_s']:.1f} s), call "
                  f"{row['call_ms']:.3g} ms (eager {row['eager_ms']:.3g} ms), load "
                  f"{row['load']:.2f}", flush=True)
    load_end = os.getloadavg()
    header = ["case", "loop", "cold s", "warm s", "import s", "warm total s", "call ms",
              "eager ms", "probe s", "‖g_c − g_eager‖/‖g_eager‖", "load (1 min)"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['loop']} | {r['cold_s']:.1f} | {r['warm_s']:.2f} | "
            f"{r['import_s']:.2f} | {r['warm_total_s']:.2f} | {r['call_ms']:.3g} | "
            f"{r['eager_ms']:.3g} | {r['probe_s']:.1f} | {r['rel_diff']:.1e} | {r['load']:.2f} |")
    import torch

    md = (
        "# mg.compile: compile time (cold, warm cache) and call time\n\n"
        f"{platform.machine()}, {os.cpu_count()} cores, every process pinned to CPU {pin}, "
        f"{args.threads} torch thread(s); torch {torch.__version__}, Python "
        f"{platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M')}. Load average "
        f"(1/5/15 min) {'/'.join(f'{x:.2f}' for x in load_start)} at the start, "
        f"{'/'.join(f'{x:.2f}' for x in load_end)} at the end.\n\n"
        "Sinusoid MLP 1-40-40-1 ReLU, 25 tasks, 10+10 shots, inner_lr 0.01, float32. "
        "See the module docstring (`python -m metagrad_bench.compile_time --help`) for what "
        "each column measures.\n\n" + "\n".join(lines) + "\n\n"
        f"Command: `python -m metagrad_bench.compile_time --threads {args.threads} "
        f"--repeats {args.repeats}" + (f" --out {args.out}" if args.out else "") + "`\n")
    print(md)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "compile_time.md"), "w") as fh:
            fh.write(md)
        with open(os.path.join(args.out, "compile_time.json"), "w") as fh:
            json.dump(rows, fh, indent=1)
        from metagrad import _provenance as provenance
        provenance.write(args.out, command=provenance.command_line(
            "python -m metagrad_bench.compile_time"), kind="bench",
            what="mg.compile: compile time and call time", mode="compiled against eager")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
