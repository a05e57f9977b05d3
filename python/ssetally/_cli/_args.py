"""What the parsers of the ``ssetally`` commands share: the help formatter that shows each
option's default, the making of a subcommand from its entry in ``COMMANDS``, and the options
several commands take."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from ._commands import COMMANDS


class DefaultsFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to an option's help when X says something (not for a flag
    that is off, nor for an option unset by default, whose help says what happens then)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "%(default)" in text or not action.option_strings:
            return text
        if default is None or default is False or default == "" or default is argparse.SUPPRESS:
            return text
        return f"{text} (default: %(default)s)"


class RawDefaultsFormatter(DefaultsFormatter, argparse.RawDescriptionHelpFormatter):
    """``DefaultsFormatter`` keeping the description and the epilog as written."""


def subcommand(
    sub: Any, name: str, func: Callable[[argparse.Namespace], int]
) -> argparse.ArgumentParser:
    """The parser of subcommand ``name``, run by ``func``, with its texts from ``COMMANDS``."""
    command = COMMANDS[name]
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=command.summary,
        description=command.description,
        epilog=command.epilog,
        formatter_class=RawDefaultsFormatter if command.as_written else DefaultsFormatter,
    )
    parser.set_defaults(func=func)
    return parser


def add_listen(parser: argparse.ArgumentParser, port: int) -> None:
    """``--host`` and ``--port``, where a server command listens."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=port, help="port to listen on")


def add_json(parser: argparse.ArgumentParser, what: str) -> None:
    """``--json``: print the report as JSON (``what`` says what else goes with it)."""
    parser.add_argument("--json", action="store_true", help=f"print the report as JSON {what}")
