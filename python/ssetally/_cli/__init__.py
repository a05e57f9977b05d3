"""The ``ssetally`` command, one module per subcommand: ``report`` on a captured stream,
``stream`` a live call, ``replay`` a local OpenAI-compatible server, ``proxy`` a metering
gateway."""

from __future__ import annotations

import argparse
import os
import sys

from . import _proxy, _replay, _report, _stream
from ._report import print_report, report_bytes

__all__ = ["build_parser", "main", "print_report", "report_bytes"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``ssetally`` command."""
    parser = argparse.ArgumentParser(
        prog="ssetally", description="Tally token usage of streaming LLM APIs."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    for command in (_report, _stream, _replay, _proxy):
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ssetally`` console script."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly, without a traceback at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return code
