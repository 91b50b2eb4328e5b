"""``metagrad report``: the main job. Writes ``report.md`` and figures into ``--out``.

The report is a list of sections; each is a function ``section(ctx) -> str``
returning markdown (it may write figures into ``ctx.out``), kept in the application
it reports on and named here by ``"module:function"``, imported only when it runs.

The terminal shows one line per section. What a section prints while it runs (the
training runs' first numerical finding of each kind, Python warnings) goes to
``OUT/logs/<section>.log``: the report deliberately shows some regimes that the numerical
checks flag, and ``report.md`` lists and explains every such finding; :data:`NOTES` says
why in one calm line. If a section fails, its log is printed before the error.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import platform
import sys
import time
import warnings
from collections.abc import Callable
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
NOTES = {
    "training": "it runs Finn et al.'s regime (one inner step at inner_lr 0.01) on purpose, "
                "where the checks flag the implicit methods' single proximal step and, as "
                "training sharpens the net, inner steps that overshoot on some tasks; "
                "report.md lists each finding and why",
}
"""Why a section's run prints findings, said once on the terminal (by section name)."""


def _section_name(spec: str) -> str:
    """The name ``--sections`` takes: the function's, without a ``_section`` suffix."""
    return spec.split(":")[1].removesuffix("_section")


def section_names() -> list[str]:
    """The sections' names, in the report's order.

    Returns
    -------
    list[str]
        What ``--sections`` accepts.
    """
    return [_section_name(spec) for spec in SECTIONS]


@dataclass
class ReportContext:
    """What every section is given.

    Parameters
    ----------
    out : Path
        The report's folder: sections write their figures and CSVs there.
    device : str
        ``"cpu"`` or ``"cuda"``.
    seed : int
        Seed of the sampled tasks and of the training runs.
    quick : bool
        The short runs (True unless ``--full``).
    """

    out: Path
    device: str
    seed: int
    quick: bool


def run_quietly(section: Callable[[ReportContext], str], ctx: ReportContext, log: Path
                ) -> tuple[str, int]:
    """Run one section with what it prints and warns going to ``log`` instead of the
    terminal.

    Parameters
    ----------
    section : Callable[[ReportContext], str]
        The section function.
    ctx : ReportContext
        What it is given.
    log : Path
        The file for its output; written only when there is some.

    Returns
    -------
    tuple[str, int]
        The section's markdown, and the number of lines it printed or warned.
    """
    captured = io.StringIO()
    # The warning filters stay as they are: what would have been shown is recorded.
    with warnings.catch_warnings(record=True) as caught:
        try:
            with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
                markdown = section(ctx)
        except BaseException:
            sys.stderr.write(captured.getvalue())
            for w in caught:
                sys.stderr.write(warnings.formatwarning(w.message, w.category, w.filename,
                                                        w.lineno))
            raise
    text = captured.getvalue() + "".join(
        f"{w.category.__name__}: {w.message}\n" for w in caught)
    if text:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(text)
    else:
        log.unlink(missing_ok=True)  # an earlier report's, in the same folder
    return markdown, len(text.splitlines())


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``metagrad report`` on the command line.

    Parameters
    ----------
    sub : argparse._SubParsersAction
        The ``metagrad`` command's subparsers.
    """
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
    """Write the report.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed ``metagrad report`` flags.

    Returns
    -------
    int
        The exit status, 0.
    """
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
        log = out / "logs" / f"{name}.log"
        markdown, lines = run_quietly(getattr(importlib.import_module(module), func), ctx, log)
        parts.append(markdown)
        said = (f"; {lines} line(s) of its output are in {log}"
                + (f": {NOTES[name]}" if name in NOTES else "") if lines else "")
        print(f"[report] {name} done in {time.time() - t0:.1f} s{said}", flush=True)
    parts.append(f"\n_Report written in {time.time() - started:.1f} s._\n")
    path = out / "report.md"
    path.write_text("\n".join(parts))
    print(f"wrote {path}")
    return 0
