"""The ``ssetally`` command, one module per subcommand: ``report`` on a captured stream,
``stream`` a live call, ``replay`` a local OpenAI-compatible server, ``proxy`` a metering
gateway."""

from __future__ import annotations

import argparse
import os
import sys

from . import _proxy, _replay, _report, _stream
from ._report import report_bytes
from ._text import print_report

__all__ = ["build_parser", "main", "print_report", "report_bytes"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``ssetally`` command."""
    parser = argparse.ArgumentParser(
        prog="ssetally",
        description="Tally token usage of streaming LLM APIs. "
        "Run 'ssetally COMMAND --help' for a command's options and their defaults.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    for command in (_report, _stream, _replay, _proxy):
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ssetally`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        # No command: say what there is rather than a bare usage error.
        parser.print_help()
        return 2
    try:
        code: int = args.func(args)
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly, without a traceback at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return code
