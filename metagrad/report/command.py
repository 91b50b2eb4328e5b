"""``metagrad report``: the main job. Writes ``report.md`` and figures into ``--out``.

The report is a list of sections; each is a function ``section(ctx) -> str``
returning markdown (it may write figures into ``ctx.out``), kept in the application
it reports on and named here by ``"module:function"``, imported only when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .._app import UsageError, check_device, prepare_out

SECTIONS = [
    "metagrad.report.core:meta_gradients",
    "metagrad.verify.section:verify_section",
    "metagrad.train.section:training_section",
    "metagrad_bench.sweep:sweep_section",
]


def _section_name(spec: str) -> str:
    """The name ``--sections`` takes: the function's, without a ``_section`` suffix."""
    return spec.split(":")[1].removesuffix("_section")


def section_names() -> list[str]:
    return [_section_name(spec) for spec in SECTIONS]


@dataclass
class ReportContext:
    out: Path
    device: str
    seed: int
    quick: bool


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="compute, verify and time all methods; write a markdown report",
        description="The main job: every method's meta-gradient on the sinusoid problem, "
        "their check against the float64 oracle, a short meta-training run of each, and a "
        "sweep of time, memory and error; written as OUT/report.md with its figures.")
    p.add_argument("--out", default="report", help="output folder (default: report/)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the sampled tasks and of the training runs (default: 0)")
    p.add_argument("--full", action="store_true", help="longer runs in every section")
    p.add_argument("--sections", nargs="+", default=None, metavar="SECTION",
                   help=f"only these sections, of {', '.join(section_names())}")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    device = check_device(args.device)
    unknown = sorted(set(args.sections or []) - set(section_names()))
    if unknown:
        raise UsageError(f"--sections: unknown {', '.join(unknown)}; choose from "
                         f"{', '.join(section_names())}")
    out = prepare_out(args.out)
    ctx = ReportContext(out=out, device=device, seed=args.seed, quick=not args.full)
    started = time.time()
    parts = [
        "# metagrad report\n",
        f"- torch {torch.__version__}, Python {platform.python_version()}, "
        f"device `{device}`"
        + (f" ({torch.cuda.get_device_name(device)})" if device.startswith("cuda") else "")
        + f", {torch.get_num_threads()} CPU thread(s), seed {args.seed}\n",
    ]
    for spec in SECTIONS:
        module, func = spec.split(":")
        name = _section_name(spec)
        if args.sections and name not in args.sections:
            continue
        print(f"[report] {name} ...", flush=True)
        t0 = time.time()
        parts.append(getattr(importlib.import_module(module), func)(ctx))
        print(f"[report] {name} done in {time.time() - t0:.1f} s", flush=True)
    parts.append(f"\n_Report written in {time.time() - started:.1f} s._\n")
    path = out / "report.md"
    path.write_text("\n".join(parts))
    print(f"wrote {path}")
    return 0
