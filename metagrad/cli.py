"""The ``metagrad`` command.

Each subcommand lives in its own application module, which provides
``add_parser(subparsers)`` registering itself with a ``func(args) -> int``.
Modules are imported only when their command runs (``metagrad train`` never
loads the sweep's dependencies, ``metagrad --help`` loads none of them).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ._app import UsageError

COMMANDS: dict[str, tuple[str, str]] = {
    "report": ("metagrad.report.command",
               "the main job: compute, verify, train and time all methods; a markdown report"),
    "verify": ("metagrad.verify.command",
               "check every method against the exact float64 oracle; exit 1 on failure"),
    "train": ("metagrad.train.command",
              "meta-train on sinusoid regression: curves, held-out evaluation, resume"),
    "sweep": ("metagrad_bench.sweep",
              "time, memory and accuracy of the methods across steps, lam, cg_iters, terms"),
    "audit": ("metagrad.testing.command", "check any meta-gradient code against the oracle"),
}
"""name → (module providing ``add_parser``, one-line help)."""


class Parser(argparse.ArgumentParser):
    """argparse with one line on stderr for a bad flag (not the whole usage block): the
    error, and where the usage is. Subcommand parsers are of this class too."""

    def error(self, message: str):  # noqa: D102  (argparse.ArgumentParser.error)
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(command: str | None = None) -> Parser:
    """The parser, with ``command``'s own arguments loaded (the others listed by name)."""
    parser = Parser(
        prog="metagrad",
        description="Fast, verified meta-gradients for MAML-family bilevel learning.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        if name == command:
            importlib.import_module(module).add_parser(sub)
        else:
            sub.add_parser(name, help=help_text)
    parser.set_defaults(_commands=sub.choices)
    return parser


def _command_in(argv: list[str]) -> str | None:
    return next((a for a in argv if a in COMMANDS), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command_in(argv))
    args, extra = parser.parse_known_args(argv)
    args.argv = argv  # as given: the command that results record in their provenance
    if extra:  # said by the subcommand, whose flags they were meant to be
        args._commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
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
