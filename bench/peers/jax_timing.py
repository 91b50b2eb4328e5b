"""``python -m metagrad_bench.peers.jax_timing --threads 1``: JAX ``jit(vmap)`` against metagrad
(eager and ``mg.compile``) on the sinusoid workload, side by side in one process.

Workload (Finn et al. 2017 sinusoid): MLP 1-40-40-1 ReLU, 25 tasks, 10 + 10 shots,
inner_lr 0.01, float32; the cases of ``metagrad_bench.peers.CASES`` (MAML K = 1, 5, 10, FOMAML
K = 5, iMAML with 5 proximal steps, λ = 1, 5 CG iterations; Rajeswaran et al. 2019),
iMAML also through jaxopt's ``custom_root`` (Blondel et al. 2022) with ``tol=0``, and a
large net, MLP 1-512-512-1, for MAML K = 5 and iMAML, where arithmetic rather than
per-operation overhead decides.

Per case every implementation is called once cold (JAX: tracing + XLA compilation + one run;
``mg.compile``: dynamo + inductor C++ code generation + one run), once more to warm up, then
``--repeats`` times interleaved round-robin (the order rotating from round to round), so
load drifts on a shared machine hit all alike; the table gives medians. ``--threads 1`` sets
``torch.set_num_threads(1)`` and, before jax is imported,
``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1`` and pins the
process to one CPU (``--pin``, default the first allowed one; ``os.sched_setaffinity``, like
``taskset -c``). The pin is needed: with the flags alone jax 0.10.2 still ran the
1-512-512-1 meta-gradients on 1.7-1.8 cores of this 2-core machine (CPU time / wall time of
the calls; XLA sizes its thread pool from the CPUs the process may use;
``intra_op_parallelism_threads`` is not an XLA flag: written
``--intra_op_parallelism_threads=1`` XLA aborts with "Unknown flag", without the dashes it
is skipped, so it is kept only as the commonly quoted recipe). That ratio is printed for
every implementation to show each used one core. Agreement is ‖g_jax −
g_metagrad‖/‖g_metagrad‖ of the mean meta-gradient in float32 (the same numbers in float64
agree to 1e-10: ``tests/test_peer_jax.py``).

``mg.compile`` cold times are cold: inductor's on-disk caches would otherwise make a graph
compiled by an earlier run, case or test load in seconds, so each run points
``TORCHINDUCTOR_CACHE_DIR`` at a fresh temporary directory (removed at exit) and every
cold call runs inside ``torch._inductor.utils.fresh_cache()`` (an empty cache folder and
inductor's in-memory caches cleared). Before the first case, one one-line function is
compiled, so that the one-off costs of the first ``torch.compile`` in a process (importing
dynamo and inductor, probing the CPU's vector instructions: ~5 s here) are not charged to
whichever case comes first; ``python -m metagrad_bench.compile_time`` measures new
processes, with and without a warm cache. JAX keeps no persistent compilation cache
unless one is configured. ``--compile-loops unrolled scan`` times ``mg.compile`` with
each inner-loop form (see ``metagrad.compiled``) instead of its default (``auto``).

``--loops`` instead measures what the inner-loop form costs: JAX compile and run time of
MAML at K = 1, 5, 10, 25 with the inner loop as ``lax.scan`` versus an unrolled Python
loop, and of iMAML with forward-over-reverse versus reverse-over-reverse HVPs.
"""

from __future__ import annotations

import argparse
import atexit
import importlib.metadata
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

ONE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


@dataclass
class Impl:
    label: str
    call: Callable[[], object]
    grads: Callable[[], list]
    cold_s: float
    times: list[float]
    cpu: list[float]


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _problem(sizes, meta_batch: int = 25, seed: int = 0):
    import torch.nn.functional as F

    import metagrad as mg
    from metagrad.models import mlp

    model = mlp(sizes, seed=seed)
    return SimpleNamespace(module=model, loss=mg.module_loss(model, F.mse_loss),
                           params=mg.params_of(model),
                           tasks=mg.Sinusoid().sample(meta_batch, seed=seed))


def _metagrad_method(case):
    import metagrad as mg

    if case.family == "maml":
        method = mg.MAML(steps=case.steps, inner_lr=case.inner_lr)
    elif case.family == "fomaml":
        method = mg.FOMAML(steps=case.steps, inner_lr=case.inner_lr)
    else:
        method = mg.IMAML(steps=case.steps, inner_lr=case.inner_lr, lam=case.lam,
                          cg_iters=case.cg_iters)
    # What is timed is the computation; the Python-side numerical checks stay out.
    return replace(method, diagnose="off")


def _metagrad_impl(label: str, fn, problem, fresh: bool = False) -> Impl:
    import contextlib

    from torch._inductor.utils import fresh_cache

    last: list = []

    def call():
        last[:] = [fn(problem.loss, problem.params, problem.tasks)]

    start = time.perf_counter()
    with fresh_cache() if fresh else contextlib.nullcontext():
        call()
    cold = time.perf_counter() - start
    return Impl(label, call, lambda: [t.detach() for t in last[0].grad.values()], cold, [], [])


def _compile_label(loop: str) -> str:
    return "mg.compile" if loop == "auto" else f"mg.compile {loop}"


def _jax_impl(label: str, problem, case, **options) -> Impl:
    from . import jax_

    run = jax_.build(problem, case, **options)
    return Impl(label, run.call, run.grads, run.compile_seconds, [], [])


def _rel_error(g, ref) -> float:
    import torch

    a = torch.cat([t.reshape(-1) for t in g]).double()
    b = torch.cat([t.reshape(-1) for t in ref]).double()
    return float((a - b).norm() / b.norm())


def _time_round_robin(impls: list[Impl], repeats: int) -> None:
    """``repeats`` rounds, each calling every implementation once. The order rotates from
    round to round: a call runs slower right after another implementation's (its caches
    are cold; measured here: mg.compile's MAML K=1 call took 435 µs alone, 505 µs after a
    JAX call and 560 µs after an eager one), so each implementation follows each other
    one equally often."""
    for impl in impls:  # warm-up after the cold call
        impl.call()
    for round_ in range(repeats):
        shift = round_ % len(impls)
        for impl in impls[shift:] + impls[:shift]:
            c0, t0 = time.process_time(), time.perf_counter()
            impl.call()
            impl.times.append(time.perf_counter() - t0)
            impl.cpu.append(time.process_time() - c0)


def _groups(large: bool):
    """(row label, problem sizes, case, JAX variants): one round-robin group per entry."""
    from . import CASES

    out = []
    for case in CASES:
        variants = [("JAX", {})]
        if case.family == "imaml":
            variants.append(("JAX jaxopt tol=0", {"implicit": "jaxopt", "tol": 0.0}))
        out.append((case.name, (1, 40, 40, 1), case, variants))
    if large:
        for case in CASES:
            if case.name in ("maml K=5", "imaml K=5 λ=1 cg=5"):
                out.append((f"{case.name}, MLP 1-512-512-1", (1, 512, 512, 1), case,
                            [("JAX", {})]))
    return out


def run_table(args) -> str:
    import metagrad as mg

    rows, cpu_ratio = [], {}
    load_start = os.getloadavg()
    for name, sizes, case, variants in _groups(not args.no_large):
        if args.cases and name not in args.cases:
            continue
        problem = _problem(sizes)
        method = _metagrad_method(case)
        impls = [_jax_impl(label, problem, case, **opts) for label, opts in variants]
        impls.append(_metagrad_impl("metagrad eager", method, problem))
        if not args.no_compile:
            for loop in args.compile_loops:
                impls.append(_metagrad_impl(_compile_label(loop), mg.compile(method, loop=loop),
                                            problem, fresh=True))
        _time_round_robin(impls, args.repeats)
        by = {i.label: i for i in impls}
        med = {i.label: 1e3 * statistics.median(i.times) for i in impls}
        for impl in impls:
            ratio = sum(impl.cpu) / sum(impl.times)
            cpu_ratio[impl.label] = max(cpu_ratio.get(impl.label, 0.0), ratio)
        ref = by["metagrad eager"].grads()
        for label, _ in variants:
            jx = med[label]
            row = {
                "case": name + ("" if label == "JAX" else f" ({label[4:]})"),
                "JAX jit ms": f"{jx:.3g}",
                "metagrad eager ms (× JAX)": f"{med['metagrad eager']:.3g} "
                                             f"({med['metagrad eager'] / jx:.2g}×)",
            }
            for loop in args.compile_loops:
                c = _compile_label(loop)
                row[f"{c} ms (× JAX)"] = (f"{med[c]:.3g} ({med[c] / jx:.2g}×)" if c in med
                                          else "–")
            row["JAX compile s"] = f"{by[label].cold_s:.2f}"
            for loop in args.compile_loops:
                c = _compile_label(loop)
                row[f"{c} cold s"] = f"{by[c].cold_s:.1f}" if c in by else "–"
            row["‖g_jax − g_mg‖/‖g_mg‖"] = f"{_rel_error(by[label].grads(), ref):.1e}"
            for loop in args.compile_loops:
                c = _compile_label(loop)
                if c in by:
                    row[f"‖g_{c} − g_eager‖/‖g_eager‖"] = f"{_rel_error(by[c].grads(), ref):.1e}"
            rows.append(row)
        print(f"[jax_timing] {name}: " + ", ".join(f"{k} {v:.3g} ms" for k, v in med.items()),
              flush=True)
    load_end = os.getloadavg()
    header = list(rows[0]) if rows else []
    table = "\n".join(["| " + " | ".join(header) + " |",
                       "| " + " | ".join("---" for _ in header) + " |"]
                      + ["| " + " | ".join(r[h] for h in header) + " |" for r in rows])
    threads = (f"{args.threads} thread(s) (torch.set_num_threads; XLA_FLAGS="
               f"\"{os.environ.get('XLA_FLAGS', '')}\")" if args.threads else "default threads")
    return (
        "# JAX jit(vmap) vs metagrad, sinusoid meta-gradients (same process, interleaved)\n\n"
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {threads}"
        + (f", pinned to CPU {args.pin}" if args.pin is not None else "") + "; "
        f"jax {_version('jax')}, jaxlib {_version('jaxlib')}, jaxopt {_version('jaxopt')}, "
        f"torch {_version('torch')}, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}. Load average (1/5/15 min) "
        f"{'/'.join(f'{x:.2f}' for x in load_start)} at the start, "
        f"{'/'.join(f'{x:.2f}' for x in load_end)} at the end.\n\n"
        f"Median of {args.repeats} interleaved calls after a warm-up; (× JAX) = that time / "
        "JAX's. Cold: first call (tracing + compilation + one run). Agreement in float32 "
        "against metagrad eager.\n\n" + table + "\n\n"
        "CPU time / wall time of the timed calls (≈ 1 means one core): "
        + ", ".join(f"{k} {v:.2f}" for k, v in cpu_ratio.items()) + "\n"
    )


def run_loops(args) -> str:
    from . import Case

    problem = _problem((1, 40, 40, 1))
    configs = []
    for k in (1, 5, 10, 25):
        for loop in ("scan", "python"):
            configs.append((f"maml K={k}", f"loop={loop}", Case("maml", "maml", k),
                            {"loop": loop}))
    for hvp in ("fwdrev", "revrev"):
        configs.append(("imaml K=5 λ=1 cg=5", f"hvp={hvp}", Case("imaml", "imaml", 5),
                        {"hvp": hvp}))
    configs.append(("imaml K=5 λ=1 cg=5", "jaxopt tol=0", Case("imaml", "imaml", 5),
                    {"implicit": "jaxopt", "tol": 0.0}))
    impls = [_jax_impl(f"{n} {o}", problem, c, **opts) for n, o, c, opts in configs]
    _time_round_robin(impls, args.repeats)
    lines = ["| case | form | compile s | run ms |", "| --- | --- | --- | --- |"]
    for (n, o, _, _), impl in zip(configs, impls):
        lines.append(f"| {n} | {o} | {impl.cold_s:.2f} | "
                     f"{1e3 * statistics.median(impl.times):.3g} |")
    return ("# JAX: inner-loop form and HVP mode (sinusoid 1-40-40-1, float32)\n\n"
            f"jax {_version('jax')}; load average {os.getloadavg()[0]:.2f}; median of "
            f"{args.repeats} interleaved calls.\n\n" + "\n".join(lines) + "\n")


def one_core(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--threads 1``: XLA's one-thread flags and, unless ``--pin`` says otherwise, the
    first allowed CPU; ``--pin``: this process on that CPU alone. Before jax and torch
    start their thread pools (the peer runner uses it too)."""
    if args.threads == 1:
        if "jax" in sys.modules:
            ap.error("jax was imported before XLA_FLAGS and the CPU pin could be set")
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + ONE_THREAD_XLA).strip()
        if args.pin is None:
            args.pin = min(os.sched_getaffinity(0))
    if args.pin is not None:
        if args.pin not in os.sched_getaffinity(0):
            ap.error(f"--pin {args.pin}: not one of the CPUs this process may use "
                     f"{sorted(os.sched_getaffinity(0))}")
        os.sched_setaffinity(0, {args.pin})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m metagrad_bench.peers.jax_timing",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads; 1 also sets XLA's one-thread flags and pins the "
                         "process to one CPU (before jax is imported)")
    ap.add_argument("--pin", type=int, default=None, metavar="CPU",
                    help="pin the process to this CPU (os.sched_setaffinity); --threads 1 "
                         "pins to the first allowed CPU unless told")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--cases", nargs="*", default=None, help="subset of row names")
    ap.add_argument("--no-large", action="store_true", help="skip the 1-512-512-1 rows")
    ap.add_argument("--no-compile", action="store_true", help="skip mg.compile")
    ap.add_argument("--compile-loops", nargs="+", default=["auto"],
                    choices=["auto", "unrolled", "scan"],
                    help="mg.compile's loop= forms to time (default: auto)")
    ap.add_argument("--loops", action="store_true",
                    help="measure lax.scan vs Python loop and the HVP modes instead")
    ap.add_argument("--out", default=None, help="also write the markdown to this file (or, "
                    "for a folder, to jax_timing.md in it)")
    args = ap.parse_args(argv)
    if args.repeats < 3:
        ap.error(f"--repeats must be at least 3, got {args.repeats}")
    if args.threads is not None and args.threads < 1:
        ap.error(f"--threads must be a positive integer, got {args.threads}")
    if args.out is not None:
        # Checked before the minutes of timing, not after.
        out = Path(args.out)
        if out.is_dir():
            out = out / "jax_timing.md"
        if not out.parent.is_dir():
            ap.error(f"--out {args.out}: the folder {out.parent} does not exist")
        args.out = str(out)
    one_core(ap, args)
    cache = tempfile.mkdtemp(prefix="jax_timing_inductor_")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache  # before torch is imported
    atexit.register(shutil.rmtree, cache, ignore_errors=True)

    import torch

    from . import jax_

    reason = jax_.available()
    if reason is not None:
        print(f"jax is not usable here ({reason}); install jax, jaxlib and jaxopt")
        return 1
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    if not args.no_compile and not args.loops:
        # The first torch.compile of a process imports dynamo and inductor and probes the
        # CPU (a few C++ builds): one-off costs, not any case's (see the module docstring).
        torch.compile(lambda x: x + 1)(torch.ones(3))
    md = run_loops(args) if args.loops else run_table(args)
    print(md)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(md)
        from metagrad import _provenance as provenance
        provenance.write(Path(args.out).parent, file=f"provenance_{Path(args.out).stem}.json",
                         command=provenance.command_line(
                             "python -m metagrad_bench.peers.jax_timing"), kind="bench",
                         what="JAX jit(vmap) vs metagrad eager and compiled",
                         mode="eager and compiled (per column)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
