"""Strong scaling of :func:`metagrad.distributed.distributed`: one meta-batch, 1 … P processes.

    python -m metagrad_bench.scaling          # CPU: 1 and 2 gloo processes, 1 thread each
    python -m metagrad_bench.scaling --device cuda --procs 1 2 4 8   # NCCL, a process per GPU

Workload: the 4-block conv net of Finn et al. 2017 (``metagrad.problems`` "convnet",
d ≈ 28.7k) on synthetic 5-way 1-shot tasks, meta-batch 32, second-order MAML with K
inner steps (``--steps``, default 5), float32, ``diagnose="off"`` (the timed call is
the meta-gradient alone). With P processes, rank r computes the tasks of
``shard_tasks(tasks, r, P)`` and the call ends after the all-reduce, so the time on
rank 0 is the time of the whole distributed meta-gradient.

All configurations are measured side by side in ONE launch of max(P) processes:
``torch.distributed.new_group(range(P))`` gives each P its group, and every round times
each configuration once, in turn (ranks outside the configuration wait at a gloo barrier,
whose idle CPU use is recorded). Rows:

* ``plain``: the method on rank 0 without any process group: the baseline T1;
* ``distributed`` with P = 1: the same through ``mg.distributed`` (its overhead);
* ``distributed`` with P ≥ 2: T_P; ``speedup`` = T1 / T_P, ``efficiency`` = speedup / P;
* ``allreduce_ms``: the two collectives of one call alone (the int64 status vector and
  the d + 2 gradient buffer), median over ``--allreduce-repeats``.

Times are medians (and quartiles) over ``--rounds`` rounds after one warm-up call per
configuration. The CSV and markdown go to ``--out`` with the device, the torch version
and the 1-minute load average before and after (a shared machine inflates and blurs
times; the side-by-side ratios are the numbers to read).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import metagrad as mg
from metagrad import _provenance as provenance
from metagrad.distributed import distributed, shard_tasks
from metagrad.problems import make_problem

from .measure import device_name

COLUMNS = ["config", "procs", "tasks_per_proc", "median_ms", "q1_ms", "q3_ms", "speedup",
           "efficiency", "allreduce_ms", "idle_cpu_fraction"]


def _worker(rank: int, world: int, store: str, args: argparse.Namespace, out: str) -> None:
    torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.set_device(rank)
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"file://{store}",
                            rank=rank, world_size=world)
    control = dist.new_group(backend="gloo")  # barriers that cost no GPU work
    groups = {p: dist.new_group(list(range(p))) for p in args.procs}

    problem = make_problem("convnet", meta_batch=args.meta_batch, device=device)
    method = mg.MAML(steps=args.steps, inner_lr=args.inner_lr, diagnose="off")
    configs: list[tuple[str, int]] = [("plain", 1)] + [("distributed", p) for p in args.procs]

    def call(config: tuple[str, int]) -> None:
        kind, procs = config
        if kind == "plain":
            method(problem.loss, problem.params, problem.tasks)
        else:
            calls[config](problem.loss, problem.params,
                          shard_tasks(problem.tasks, rank, procs))

    calls = {(kind, p): distributed(method, groups[p]) for kind, p in configs
             if kind == "distributed"}
    times: dict[tuple[str, int], list[float]] = {c: [] for c in configs}
    idle_cpu = idle_wall = 0.0
    for round_ in range(args.rounds + 1):  # round 0 is the warm-up
        for config in configs:
            active = rank < config[1]
            dist.barrier(group=control)
            wall, cpu = time.perf_counter(), time.process_time()
            if active:
                call(config)
                if cuda:
                    torch.cuda.synchronize()
            elapsed = time.perf_counter() - wall
            if round_ > 0 and rank == 0:
                times[config].append(elapsed)
            dist.barrier(group=control)
            if not active and round_ > 0:  # a waiting rank must not steal the others' cores
                idle_cpu += time.process_time() - cpu
                idle_wall += time.perf_counter() - wall

    # the two collectives of one call, alone
    numel = sum(v.numel() for v in problem.params.values())
    allreduce: dict[int, float] = {}
    for p in args.procs:
        if p < 2:
            continue
        samples = []
        for _ in range(args.allreduce_repeats):
            dist.barrier(group=control)
            if rank < p:
                start = time.perf_counter()
                status = torch.zeros(2 + 3 * p, dtype=torch.int64,
                                     device=device if cuda else "cpu")
                dist.all_reduce(status, op=dist.ReduceOp.MAX, group=groups[p])
                status.tolist()
                buffer = torch.zeros(numel + 2, device=device)
                dist.all_reduce(buffer, group=groups[p])
                if cuda:
                    torch.cuda.synchronize()
                samples.append(time.perf_counter() - start)
        allreduce[p] = statistics.median(samples) if samples else float("nan")

    idle = torch.tensor([idle_cpu / idle_wall if idle_wall else 0.0], dtype=torch.float64)
    dist.all_reduce(idle, op=dist.ReduceOp.MAX, group=control)
    if rank == 0:
        Path(out).write_text(json.dumps({
            "times": {f"{k}:{p}": v for (k, p), v in times.items()},
            "allreduce": allreduce, "idle_cpu_fraction": float(idle),
            "dim": numel, "device_name": device_name(device)}))
    dist.barrier(group=control)
    dist.destroy_process_group()


def _quartiles(xs: list[float]) -> tuple[float, float, float]:
    if len(xs) < 2:
        return xs[0], xs[0], xs[0]
    q = statistics.quantiles(xs, n=4)
    return q[0], statistics.median(xs), q[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m metagrad_bench.scaling", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2],
                        help="process counts to compare (CUDA: at most one per GPU)")
    parser.add_argument("--steps", type=int, default=5, help="MAML inner steps K")
    parser.add_argument("--meta-batch", type=int, default=32)
    parser.add_argument("--inner-lr", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--rounds", type=int, default=7, help="timed calls per configuration")
    parser.add_argument("--allreduce-repeats", type=int, default=50)
    parser.add_argument("--out", default="bench/results/scaling_cpu")
    args = parser.parse_args(argv)
    if any(p < 1 for p in args.procs) or args.rounds < 1 or args.meta_batch < 1:
        parser.error("--procs, --rounds and --meta-batch must be positive")
    args.procs = sorted(set(args.procs))
    world = max(args.procs)
    if args.device == "cuda":
        if not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA device is visible")
        if world > torch.cuda.device_count():
            parser.error(f"--procs {world} needs {world} GPUs (one process per GPU); "
                         f"{torch.cuda.device_count()} visible")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        result_file = os.path.join(tmp, "result.json")
        mp.spawn(_worker, args=(world, os.path.join(tmp, "store"), args, result_file),
                 nprocs=world, join=True)
        result = json.loads(Path(result_file).read_text())
    load_after = os.getloadavg()[0]

    times = {tuple(k.split(":")): v for k, v in result["times"].items()}
    baseline = statistics.median(times["plain", "1"])
    rows = []
    for (kind, procs), samples in times.items():
        q1, med, q3 = _quartiles(samples)
        p = int(procs)
        speedup = baseline / med
        rows.append({
            "config": kind, "procs": p,
            "tasks_per_proc": -(-args.meta_batch // p),
            "median_ms": 1e3 * med, "q1_ms": 1e3 * q1, "q3_ms": 1e3 * q3,
            "speedup": speedup, "efficiency": speedup / p,
            "allreduce_ms": 1e3 * result["allreduce"].get(procs, float("nan")),
            "idle_cpu_fraction": result["idle_cpu_fraction"]})
    env = {"device": args.device, "device_name": result["device_name"],
           "backend": "nccl" if args.device == "cuda" else "gloo",
           "threads_per_proc": args.threads, "problem": "convnet", "dim": result["dim"],
           "method": "maml", "steps": args.steps, "meta_batch": args.meta_batch,
           "rounds": args.rounds, "torch": torch.__version__, "python": platform.python_version(),
           "cpu_count": os.cpu_count(), "load_avg_before": load_before,
           "load_avg_after": load_after, "timestamp": time.strftime("%Y-%m-%d %H:%M")}
    df = pd.DataFrame(rows, columns=COLUMNS)
    for key, value in env.items():
        df[key] = value
    df.to_csv(out / "scaling.csv", index=False)
    provenance.write(out, command=provenance.command_line("python -m metagrad_bench.scaling"),
                     kind="bench", what="mg.distributed strong scaling", mode="eager",
                     device=args.device)
    command = "python -m metagrad_bench.scaling " + " ".join(sys.argv[1:] if argv is None else argv)
    md = (
        "# Distributed meta-gradient: strong scaling\n\n"
        f"Device `{args.device}` ({result['device_name']}), backend {env['backend']}, "
        f"{args.threads} torch thread(s) per process, torch {torch.__version__}, Python "
        f"{env['python']}, {env['timestamp']}, {os.cpu_count()} cores, 1-minute load "
        f"average {load_before:.2f} before / {load_after:.2f} after.\n\n"
        f"Second-order MAML, K = {args.steps}, on the conv net (d = {result['dim']}), "
        f"synthetic 5-way 1-shot tasks, meta-batch {args.meta_batch}, float32. Median and "
        f"quartiles of {args.rounds} calls per configuration, interleaved round-robin in one "
        "launch; `plain` is the method without a process group (T1); `speedup` = T1 / T_P, "
        "`efficiency` = speedup / P; `allreduce_ms`: the status and gradient all-reduces of "
        "one call alone; `idle_cpu_fraction`: the largest CPU share a rank used while it "
        "waited out the other configurations (0 means it did not compete for cores).\n\n"
        f"{df[COLUMNS].to_markdown(index=False, floatfmt='.3g')}\n\n"
        f"Command: `{command}`\n")
    (out / "scaling.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
