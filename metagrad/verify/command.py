"""``metagrad verify``: run the embedded comparisons, print the table, write CSV + markdown."""

from __future__ import annotations

import argparse
import time

from .._app import UsageError, prepare_out
from ..methods import METHOD_NAMES
from .table import (
    ALL_PROBLEMS,
    QUICK_PROBLEMS,
    default_cases,
    markdown_table,
    run_cases,
    write_outputs,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify",
        help="check every method against the exact float64 oracle (reference/); exit 1 on failure",
        description="Run each public method on small float64 problems and compare it with the "
                    "dense reference, closed forms and finite differences (relative error "
                    "≤ 1e-9 and ≤ 1e-7), reporting the approximation error against the "
                    "bilevel-exact target too.",
    )
    p.add_argument("--out", default="verify", help="output folder for verify.csv and verify.md "
                                                   "(default: verify/)")
    p.add_argument("--methods", nargs="+", default=list(METHOD_NAMES), metavar="METHOD",
                   help=f"subset of {', '.join(METHOD_NAMES)}")
    p.add_argument("--problems", nargs="+", default=None, metavar="PROBLEM",
                   help=f"subset of {', '.join(ALL_PROBLEMS)} (default: all; --quick: "
                        f"{', '.join(QUICK_PROBLEMS)})")
    p.add_argument("--quick", action="store_true", help="the smaller problems only")
    p.add_argument("--no-fd", action="store_true",
                   help="skip the finite-difference checks (the slowest part)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    unknown = sorted(set(args.methods) - set(METHOD_NAMES))
    if unknown:
        raise UsageError(f"unknown method(s) {unknown}; choose from {list(METHOD_NAMES)}")
    problems = args.problems or list(QUICK_PROBLEMS if args.quick else ALL_PROBLEMS)
    unknown = sorted(set(problems) - set(ALL_PROBLEMS))
    if unknown:
        raise UsageError(f"unknown problem(s) {unknown}; choose from {list(ALL_PROBLEMS)}")
    out = prepare_out(args.out)  # before the work, not after it
    started = time.time()
    cases = default_cases(problems, args.methods)
    df = run_cases(cases, fd=not args.no_fd)
    print(markdown_table(df))
    csv, md = write_outputs(df, out)
    failed = int((~df["passed"].astype(bool)).sum())
    print(f"\n{len(df) - failed}/{len(df)} cases passed in {time.time() - started:.1f} s; "
          f"wrote {csv} and {md}")
    if failed:
        for _, row in df[~df["passed"].astype(bool)].iterrows():
            print(f"FAILED: {row['method']} on {row['problem']} ({row['setting']}, "
                  f"{row['variant']})" + (f": {row['error']}" if isinstance(row.get('error'), str)
                                          else ""))
        return 1
    return 0
