"""``ssetally replay``: serve the local OpenAI-compatible replay server."""

from __future__ import annotations

import argparse
import errno
import sys
from typing import Any

from ._args import add_listen, subcommand

#: Exit status when the server cannot start (a file is missing, the port is taken).
EXIT_CANNOT_SERVE = 2


def _cmd_replay(args: argparse.Namespace) -> int:
    from .._replay import Faults, serve

    faults = Faults(
        cut_after_events=args.cut_after_events,
        error_event=args.error_event,
        malformed=args.malformed,
        trickle=args.trickle,
        status=args.status,
    )
    try:
        serve(
            host=args.host,
            port=args.port,
            files=args.files,
            delay=args.delay,
            faults=faults,
            cycle=args.cycle,
            poll_in_progress=args.poll_in_progress,
            require_auth=not args.no_auth,
            log=not args.quiet,
        )
    except FileNotFoundError as exc:
        print(f"ssetally: {exc}", file=sys.stderr)
        return EXIT_CANNOT_SERVE
    except OSError as exc:
        where = f"{args.host}:{args.port}"
        if exc.errno == errno.EADDRINUSE:
            why = f"port {args.port} is taken on {args.host}; choose another with --port"
        else:
            why = f"cannot listen on {where}: {exc.strerror or exc}"
        print(f"ssetally replay: {why}", file=sys.stderr)
        return EXIT_CANNOT_SERVE
    return 0


def add_parser(sub: Any) -> None:
    """The ``replay`` subcommand."""
    replay = subcommand(sub, "replay", _cmd_replay)
    replay.add_argument(
        "files", nargs="*", help="SSE captures to replay, one per request (none: generate)"
    )
    add_listen(replay, 8000)
    replay.add_argument("--delay", type=float, default=0.02, help="seconds between events")
    replay.add_argument("--cycle", action="store_true", help="replay the files round and round")
    replay.add_argument(
        "--no-auth", action="store_true", help="answer requests without credentials too"
    )
    replay.add_argument("--quiet", action="store_true", help="do not log requests")
    replay.add_argument(
        "--poll-in-progress",
        type=int,
        default=0,
        help="answer a retrieval GET with status in_progress N times first",
    )
    replay.add_argument("--cut-after-events", type=int, help="drop each connection after N events")
    replay.add_argument(
        "--error-event", type=int, help="send an error event after N events and end the stream"
    )
    replay.add_argument("--malformed", type=int, help="truncate the JSON of event N (from 0)")
    replay.add_argument("--trickle", action="store_true", help="write one byte at a time")
    replay.add_argument(
        "--status", type=int, help="answer every request with this HTTP status (an error body)"
    )
