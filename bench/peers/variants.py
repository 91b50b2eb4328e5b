"""``python -m metagrad_bench.peers.variants --out DIR``: the inner-loop variants, each peer
library's implementation timed against metagrad's same variant on the same workload, side by
side in one run. Writes ``variants.csv``, ``variants.md`` and ``provenance.json``.

Workload (Finn et al. 2017 sinusoid): MLP 1-40-40-1 ReLU, meta-batch 25, 10 + 10 shots,
inner_lr 0.01, float32; K = 1 and 5 inner steps. Variants and who runs them:

===========  ==================================================================================
per_entry    Meta-SGD (Li et al. 2017), one learned step size per entry, MAML's exact gradient
             in θ and in the rates: metagrad ``MAML(inner_lr=mg.inner_rates(params, 0.01,
             per="entry"))``; learn2learn ``MetaSGD(module, lr=0.01)``
momentum     heavy-ball momentum β = 0.9: metagrad ``MAML(inner=mg.Momentum(0.9))``; torchopt
             ``MetaSGD(module, lr, momentum=0.9)``; higher ``torch.optim.SGD(lr,
             momentum=0.9)`` in ``innerloop_ctx``
adam         Adam (β₁, β₂, ε = 0.9, 0.999, 1e-8): metagrad ``MAML(inner=mg.Adam())``; torchopt
             ``MetaAdam(module, lr)``; higher ``torch.optim.Adam(lr)``
===========  ==================================================================================

What is timed is one mean meta-gradient of the meta-batch (metagrad with ``diagnose="off"``,
as in ``python -m metagrad_bench.peers``; Meta-SGD's call computes the rate-gradients too,
in every library). Each implementation is prepared and called once (warm-up), then called
``--repeats`` times, interleaved round-robin with the order rotating each round, so that
load drifts hit all alike; the table gives the median and interquartile range of each,
``time_over_metagrad`` (median / metagrad's median, same case) and ``diff_vs_metagrad``
(‖g − g_metagrad‖/‖g_metagrad‖ of the θ-gradient; float32, so about 1e-7 when they agree).
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .jax_timing import one_core  # stdlib only: nothing heavy before the pinning

PEERS = ("learn2learn_", "torchopt_", "higher_")


@dataclass(frozen=True)
class VariantCase:
    name: str
    form: str
    """``per_entry``, ``momentum`` or ``adam``: a key of the adapters' ``VARIANT_CASES``."""
    steps: int
    inner_lr: float = 0.01


CASES = [VariantCase(f"{form} K={k}", form, k) for form in ("per_entry", "momentum", "adam")
         for k in (1, 5)]


def metagrad_fn(case: VariantCase) -> Callable:
    """``fn(problem) -> list[Tensor]``: metagrad's MAML at the case's variant."""
    import metagrad as mg

    def fn(problem):
        kwargs: dict = {}
        if case.form == "per_entry":
            kwargs["inner_lr"] = _rates(problem, case.inner_lr)
        else:
            kwargs["inner_lr"] = case.inner_lr
            kwargs["inner"] = mg.Momentum(0.9) if case.form == "momentum" else mg.Adam()
        method = mg.MAML(steps=case.steps, diagnose="off", **kwargs)
        return list(method(problem.loss, problem.params, problem.tasks).grad.values())

    return fn


_RATES: dict[int, dict] = {}


def _rates(problem, lr: float) -> dict:
    """One set of Meta-SGD rates per problem object (built outside the timed call)."""
    import metagrad as mg

    key = id(problem)
    if key not in _RATES:
        _RATES[key] = mg.inner_rates(problem.params, lr, per="entry")
    return _RATES[key]


def implementations(case: VariantCase, modules: list) -> list[tuple[str, Callable]]:
    """(label, fn(problem) -> list[Tensor]) for metagrad and every peer that runs the case."""
    out = [("metagrad", metagrad_fn(case))]
    for module in modules:
        fn = getattr(module, "VARIANT_CASES", {}).get(case.form)
        if fn is not None and module.available() is None:
            out.append((module.NAME, lambda p, fn=fn, c=case: fn(p, c)))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m metagrad_bench.peers.variants",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench/results/peers_variants_cpu")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--cases", nargs="*", default=None, help="subset of case names")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads (default: torch's choice); 1 also pins the "
                         "process to one CPU")
    ap.add_argument("--pin", type=int, default=None, metavar="CPU",
                    help="pin the process to this CPU (default with --threads 1: the first "
                         "allowed one)")
    args = ap.parse_args(argv)
    if args.repeats < 2:
        ap.error(f"--repeats must be at least 2, got {args.repeats}")
    unknown = sorted(set(args.cases or []) - {c.name for c in CASES})
    if unknown:
        ap.error(f"unknown case(s) {unknown}; the cases are {[c.name for c in CASES]}")
    one_core(ap, args)

    import pandas as pd
    import torch

    from metagrad._app import markdown_table

    from ..measure import device_name
    from .__main__ import Timed, _torch_timed, _version, interleaved_times, make, rel_error

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    load_start = os.getloadavg()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    modules = [importlib.import_module(f"metagrad_bench.peers.{m}") for m in PEERS]
    rows = []
    for case in CASES:
        if args.cases and case.name not in args.cases:
            continue
        timed: dict[str, Timed] = {}
        grads, failed = {}, {}
        for label, fn in implementations(case, modules):
            try:
                timed[label] = _torch_timed(fn, make(args.device))
                timed[label].call()  # warm-up
                grads[label] = timed[label].grads()
            except Exception as err:  # noqa: BLE001 - a failing peer is a finding, not a crash
                failed[label] = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
                timed.pop(label, None)
                print(f"[variants] {case.name}: {label} FAILED: {failed[label]}", flush=True)
        for label, why in failed.items():
            rows.append({"case": case.name, "implementation": label, "error": why})
        if "metagrad" not in timed:
            continue
        times = interleaved_times(timed, args.repeats, args.device)
        ref_ms = 1e3 * statistics.median(times["metagrad"])
        for label in timed:
            q = statistics.quantiles(times[label], n=4)
            med = 1e3 * statistics.median(times[label])
            diff = rel_error(grads[label], grads["metagrad"])
            # A non-finite gradient (torchopt's MetaAdam where an entry's inner gradient is
            # exactly zero, a dead ReLU unit here) is said, not left as an empty cell.
            bad = "" if math.isfinite(diff) else "θ-gradient not finite (NaN or inf entries)"
            rows.append({"case": case.name, "implementation": label, "median_ms": med,
                         "iqr_ms": 1e3 * (q[2] - q[0]), "time_over_metagrad": med / ref_ms,
                         "diff_vs_metagrad": diff, "error": bad})
        print(f"[variants] {case.name}: " + ", ".join(
            f"{r['implementation']} {r['median_ms']:.1f} ms" for r in rows
            if r["case"] == case.name and "median_ms" in r), flush=True)
    load_end = os.getloadavg()
    df = pd.DataFrame(rows)
    df.to_csv(out / "variants.csv", index=False)
    threads = (f"{args.threads} thread(s)" if args.threads else "torch's default threads") + (
        f", pinned to CPU {args.pin}" if args.pin is not None else "")
    versions = ", ".join(f"{name} {_version(name)}" for name in
                         ("higher", "torchopt", "learn2learn"))
    command = (f"python -m metagrad_bench.peers.variants --out {args.out} --device "
               f"{args.device} --repeats {args.repeats}"
               + (f" --threads {args.threads}" if args.threads else "")
               + (f" --cases {' '.join(args.cases)}" if args.cases else ""))
    md = (
        "# Inner-loop variants: metagrad vs peer libraries (same workload, same run)\n\n"
        f"device `{args.device}` ({device_name(args.device)}), {threads}, torch "
        f"{torch.__version__}, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}; load average (1/5/15 min) "
        f"{'/'.join(f'{x:.2f}' for x in load_start)} at the start, "
        f"{'/'.join(f'{x:.2f}' for x in load_end)} at the end, on {os.cpu_count()} cores; "
        f"{versions}.\n\n"
        "Sinusoid MLP 1-40-40-1 ReLU, meta-batch 25, 10+10 shots, inner_lr 0.01, float32, "
        "MAML's exact meta-gradient through K inner steps of the variant. `per_entry`: "
        "Meta-SGD's learned per-entry rates (the call computes their gradient too); "
        "`momentum`: heavy ball, β = 0.9; `adam`: Adam with its defaults. Median and "
        f"interquartile range of {args.repeats} calls per implementation, interleaved "
        "round-robin (the order rotating each round) after a warm-up. "
        "`time_over_metagrad` = this / metagrad (eager, vmap over tasks); "
        "`diff_vs_metagrad` = ‖g − g_metagrad‖/‖g_metagrad‖ of the θ-gradient.\n\n"
        f"{markdown_table(df, floatfmt='.3g')}\n\nCommand: `{command}`\n")
    (out / "variants.md").write_text(md)
    from metagrad import _provenance as provenance

    provenance.write(out, command=command, kind="bench",
                     what="inner-loop variants: metagrad vs peer libraries, same run",
                     mode="eager", device=args.device)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
