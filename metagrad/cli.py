"""The ``metagrad`` command. Each subcommand lives in its own module, which
provides ``add_parser(subparsers)`` registering itself with a ``func(args) -> int``."""

from __future__ import annotations

import argparse
import importlib
import sys

# One line per subcommand module.
COMMANDS = [
    "metagrad.report",
    "metagrad.verify",
    "metagrad.train_cli",
    "bench.sweep",
]


class UsageError(Exception):
    """Bad input from the command line: printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metagrad",
        description="Fast, verified meta-gradients for MAML-family bilevel learning.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UsageError, ValueError) as err:
        # Bad settings reach the user as one line, not a traceback.
        print(f"metagrad {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"metagrad {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
