"""``python -m metagrad_bench.peers --out bench/results/peers_cpu``: time metagrad and the peers on
the same workload, interleaved (round-robin, so load drifts hit all alike), and compare
their meta-gradients with metagrad's. Writes ``peers.csv`` and ``peers.md``.

What is timed per implementation is one meta-gradient from prepared inputs:

* torch libraries (metagrad, the per-task autograd loop, higher, learn2learn, torchopt):
  the adapter's ``CASES`` function on the problem.
* JAX: an adapter with ``build(problem, case, **options)`` (``jax_.py``) is built once per
  case (inputs converted to JAX arrays and the function compiled outside the timing) and
  its prepared ``call()`` is timed, as in ``metagrad_bench.peers.jax_timing``; the gradient
  is converted back to torch once, for the agreement column. Options per case key come
  from the adapter's ``BUILD_OPTIONS``.
* betty: it has no call that returns one meta-gradient, so its ``AUDIT_TARGETS`` entry
  (one outer step of its ``Engine`` over the meta-batch, see ``betty_.py``) is timed for
  the cases of a family it has a target for and no ``CASES`` entry (iMAML).

``--threads 1`` sets ``torch.set_num_threads(1)``, XLA's one-thread flags and pins the
process to one CPU (``--pin``; see ``jax_timing``), so every library runs on one core.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .jax_timing import one_core  # stdlib only: nothing heavy before the pinning


@dataclass
class Timed:
    """An implementation ready to time: ``call()`` is what is timed; ``grads()`` gives the
    mean meta-gradient of the last call, in ``problem.params`` order."""

    call: Callable[[], object]
    grads: Callable[[], list]


def make(device: str, meta_batch: int = 25, seed: int = 0):
    """A fresh copy of the workload (peers may write into the module's parameters)."""
    from metagrad.problems import make_problem

    return make_problem("sinusoid", meta_batch=meta_batch, seed=seed, device=device)


def _torch_timed(fn: Callable, problem) -> Timed:
    last: list = []

    def call():
        last[:] = [fn(problem)]

    return Timed(call, lambda: [t.detach() for t in last[0]])


def metagrad_impls(case) -> list[tuple[str, Callable]]:
    from .. import variants

    names = [name for name, v in variants.VARIANTS.items() if v.family == case.family
             and not v.options.get("checkpoint")]
    out = []
    for name in names:
        _, fn = variants.make(name, steps=case.steps, inner_lr=case.inner_lr, lam=case.lam,
                              cg_iters=case.cg_iters, terms=None)
        label = "metagrad" if name == case.family else f"metagrad {name.split('-', 1)[1]}"
        out.append((label, lambda p, fn=fn: _torch_timed(
            lambda q: list(fn(q.loss, q.params, q.tasks).grad.values()), p)))
    return out


def peer_impls(module, case, status: str | None) -> list[tuple[str, Callable]]:
    """(label, problem ↦ Timed) for one adapter module and case."""
    out = []
    keys = [key for key in module.CASES if key.split(" ")[0] == case.family]
    if status is None:
        for key in keys:
            label = module.NAME + key[len(case.family):]
            if hasattr(module, "build"):
                options = getattr(module, "BUILD_OPTIONS", {}).get(key, {})

                def prepared(p, c=case, o=options):
                    run = module.build(p, c, **o)
                    return Timed(run.call, run.grads)

                out.append((label, prepared))
            else:
                fn = module.CASES[key]
                out.append((label, lambda p, fn=fn, c=case: _torch_timed(
                    lambda q: fn(q, c), p)))
    targets = getattr(module, "AUDIT_TARGETS", {})
    if not keys and case.family in targets:
        try:
            importlib.import_module(module.NAME)
        except Exception:  # noqa: BLE001 - not installed: no column
            return out
        settings = {"steps": case.steps, "inner_lr": case.inner_lr, "lam": case.lam,
                    "cg_iters": case.cg_iters}
        target = targets[case.family](**settings)
        out.append((f"{module.NAME} (Engine, {case.family})", lambda p, t=target: _torch_timed(
            lambda q: list(t(q.loss, q.params, q.tasks).values()), p)))
    return out


def interleaved_times(timed: dict, repeats: int, device: str) -> dict[str, list[float]]:
    """Seconds per call of each prepared implementation, ``repeats`` rounds of one call
    each, round-robin with the order rotated every round: a call right after another
    library's runs on cold caches, and load drifts hit all alike (CUDA synchronised)."""
    import torch

    times: dict[str, list[float]] = {label: [] for label in timed}
    order = list(timed.items())
    for round_ in range(repeats):
        shift = round_ % len(order)
        for label, t in order[shift:] + order[:shift]:
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            t.call()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times[label].append(time.perf_counter() - t0)
    return times


def rel_error(g: list, ref: list) -> float:
    import torch

    a = torch.cat([t.reshape(-1) for t in g]).double()
    b = torch.cat([t.reshape(-1) for t in ref]).double()
    return float((a.to(b.device, b.dtype) - b).norm() / b.norm())  # jax returns host arrays


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m metagrad_bench.peers", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench/results/peers_cpu")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--cases", nargs="*", default=None, help="subset of case names")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads (default: torch's choice); 1 also sets XLA's "
                         "one-thread flags and pins the process to one CPU")
    ap.add_argument("--pin", type=int, default=None, metavar="CPU",
                    help="pin the process to this CPU (default with --threads 1: the first "
                         "allowed one)")
    args = ap.parse_args(argv)
    if args.repeats < 2:  # a median and an interquartile range need two calls at least
        ap.error(f"--repeats must be at least 2, got {args.repeats}")
    one_core(ap, args)

    import pandas as pd
    import torch

    from metagrad._app import markdown_table

    from ..measure import device_name
    from . import ADAPTERS, CASES

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    load_start = os.getloadavg()
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
            impls.extend(peer_impls(m, case, status[m.NAME]))
        timed: dict[str, Timed] = {}
        grads, failed = {}, {}
        for label, prepare in impls:  # prepare, warm up (and compile), keep the gradient
            try:
                timed[label] = prepare(make(args.device))
                timed[label].call()
                grads[label] = timed[label].grads()
            except Exception as err:  # noqa: BLE001 - a failing peer is a finding, not a crash
                failed[label] = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
                timed.pop(label, None)
                print(f"[peers] {case.name}: {label} FAILED: {failed[label]}", flush=True)
        for label in failed:
            rows.append({"case": case.name, "implementation": label, "error": failed[label]})
        times = interleaved_times(timed, args.repeats, args.device)
        ref_ms = 1e3 * statistics.median(times["metagrad"])
        loop_ms = 1e3 * statistics.median(times["autograd loop"])
        for label in timed:
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
            if r["case"] == case.name and not r["error"]), flush=True)
    load_end = os.getloadavg()
    df = pd.DataFrame(rows)
    threads = (f"{args.threads} thread(s)" if args.threads else "torch's default threads") + (
        f", pinned to CPU {args.pin}" if args.pin is not None else "")
    env = (f"device `{args.device}` ({device_name(args.device)}), {threads}, torch "
           f"{torch.__version__}"
           + (f", CUDA {torch.version.cuda}" if args.device.startswith("cuda") else "")
           + f", Python {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M')}; "
           f"load average (1/5/15 min) {'/'.join(f'{x:.2f}' for x in load_start)} at the "
           f"start, {'/'.join(f'{x:.2f}' for x in load_end)} at the end, on "
           f"{os.cpu_count()} cores")
    versions = [f"{name} {_version(dist)}" for name, dist in (
        ("higher", "higher"), ("torchopt", "torchopt"), ("betty", "betty-ml"),
        ("learn2learn", "learn2learn"), ("jax", "jax"), ("jaxlib", "jaxlib"),
        ("jaxopt", "jaxopt"))]
    df.to_csv(out / "peers.csv", index=False)
    measured = {r["implementation"].split(" ")[0] for r in rows}
    skipped = "\n".join(f"- {k}: not measured — {v}" for k, v in status.items()
                        if v and k not in measured)
    command = (f"python -m metagrad_bench.peers --out {args.out} --device {args.device} "
               f"--repeats {args.repeats}" + (f" --threads {args.threads}" if args.threads
                                              else ""))
    md = (
        "# metagrad vs peer libraries (same workload, same run)\n\n"
        f"{env}; {', '.join(versions)}.\n\n"
        "Sinusoid MLP 1-40-40-1 ReLU, meta-batch 25, 10+10 shots, inner_lr 0.01, float32. "
        f"Median of {args.repeats} calls per implementation, interleaved round-robin (the "
        "order rotating each round) after a warm-up (which includes compilation: "
        "`metagrad compiled` and `jax` are timed steady-state; "
        "`python -m metagrad_bench.compile_time` and "
        "`python -m metagrad_bench.peers.jax_timing` measure their compile times). "
        "`time_over_metagrad` = this / metagrad eager (vmap); `loop_time_over_this` = "
        "per-task autograd loop / this (the speed-up over the plain loop); "
        "`diff_vs_metagrad` = ‖g − g_metagrad‖/‖g_metagrad‖ of the mean meta-gradient. "
        "`(hand CG)`: the library has no implicit gradient, so its inner loop is followed by "
        "a hand-written CG loop. `jax`: `jax.jit(jax.vmap(...))` written in plain JAX "
        "(`bench/peers/jax_.py`), its prepared call timed (inputs converted to JAX arrays "
        "once, outside the timing); `jax (jaxopt)`: jaxopt's implicit differentiation with "
        "its CG. `betty (Engine, imaml)`: one outer step of betty's `Engine` over the "
        "meta-batch (`bench/peers/betty_.py`); its \"cg\" reuses the old residual in the "
        "search-direction update (betty 0.2.1, hypergradient/cg.py line 53: p = r + βp "
        "instead of r′ + βp), so from the second CG iteration on it is not conjugate "
        "gradient and its `diff_vs_metagrad` is large: a bug in betty, not a disagreement "
        "about the method.\n\n"
        f"{markdown_table(df, floatfmt='.3g')}\n\n{skipped}\n\n"
        f"Command: `{command}`\n"
    )
    (out / "peers.md").write_text(md)
    from metagrad import _provenance as provenance  # (imports torch: after the pinning)
    provenance.write(out, command=provenance.command_line("python -m metagrad_bench.peers"),
                     kind="bench", what="metagrad vs peer libraries, same workload, same run",
                     mode="eager, and compiled for the 'compiled' rows", device=args.device)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
