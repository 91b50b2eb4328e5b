"""``python -m metagrad_bench.shard_work``: does one process's share of a distributed
meta-gradient shrink with the number of processes?

With P processes each computes the meta-gradient of T/P tasks, so the speed-up of
``mg.distributed`` is bounded by T(T tasks) / T(T/P tasks) measured in ONE process: what
is left of the per-call cost when the shard shrinks (Python, validation, vmap set-up). If
that bound is close to P while the measured speed-up is not, the processes slow each other
down (shared caches, memory bandwidth, clock) or wait for the slowest rank.

Workload: that of ``metagrad_bench.scaling`` (second-order MAML, K = 5, on the conv net,
synthetic 5-way 1-shot tasks, float32, ``diagnose="off"``), one torch thread, medians of
interleaved calls.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import metagrad as mg
from metagrad.problems import make_problem


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m metagrad_bench.shard_work",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--meta-batch", type=int, default=32)
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    if any(p < 1 or args.meta_batch % p for p in args.procs):
        ap.error(f"--procs must divide --meta-batch {args.meta_batch}: {args.procs}")
    torch.set_num_threads(1)
    problem = make_problem("convnet", meta_batch=args.meta_batch)
    method = mg.MAML(steps=args.steps, inner_lr=0.01, diagnose="off")
    shards = {p: mg.shard_tasks(problem.tasks, 0, p) for p in args.procs}
    times: dict[int, list[float]] = {p: [] for p in args.procs}
    for round_ in range(args.repeats + 1):  # round 0 warms up
        for p in args.procs:
            start = time.perf_counter()
            method(problem.loss, problem.params, shards[p])
            if round_:
                times[p].append(time.perf_counter() - start)
    whole = statistics.median(times[min(args.procs)]) * min(args.procs)
    print("| processes | tasks per process | one process's share ms | bound on speed-up |\n"
          "| --- | --- | --- | --- |")
    for p in args.procs:
        share = statistics.median(times[p])
        print(f"| {p} | {args.meta_batch // p} | {share * 1e3:.1f} | {whole / share:.2f}× |")
    print(f"\ntorch {torch.__version__}, 1 thread, medians of {args.repeats} interleaved calls")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
