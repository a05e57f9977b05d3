"""``ssetally stream``: a live streaming call that prints text as it arrives, then the report."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import httpx

from .._client import APIStatusError, UsageStream, connect_usage
from .._core import ServerSentEvent
from .._metering import redact
from ._args import add_json, subcommand
from ._commands import DEFAULT_BASE_URL
from ._text import OUTPUT_TITLE, print_report, title


def _request(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    if args.api == "chat":
        body: dict[str, Any] = {
            "model": args.model,
            "stream": True,
            "messages": [{"role": "user", "content": args.prompt}],
        }
        if args.max_output_tokens is not None:
            body["max_completion_tokens"] = args.max_output_tokens
        return "/chat/completions", body
    body = {"model": args.model, "stream": True, "input": args.prompt, "store": True}
    if args.max_output_tokens is not None:
        body["max_output_tokens"] = args.max_output_tokens
    return "/responses", body


def delta_text(event: ServerSentEvent) -> str:
    """The output text an event carries (Chat or Responses), for printing as it arrives."""
    if '"delta"' not in event.data:
        return ""
    try:
        obj = event.json()
    except ValueError:
        return ""
    if not isinstance(obj, dict):
        return ""
    if obj.get("type") == "response.output_text.delta":
        return str(obj.get("delta") or "")
    for choice in obj.get("choices") or []:
        if isinstance(choice, dict) and choice.get("index", 0) == 0:
            delta = choice.get("delta") or {}
            return str(delta.get("content") or "") if isinstance(delta, dict) else ""
    return ""


def run_stream(args: argparse.Namespace) -> int:
    """Run the ``stream`` command."""

    key = os.environ.get("OPENAI_API_KEY")
    if not key:
        print(
            "ssetally: set OPENAI_API_KEY (and OPENAI_BASE_URL for another server)", file=sys.stderr
        )
        return 2
    base = os.environ.get("OPENAI_BASE_URL", DEFAULT_BASE_URL).rstrip("/")
    path, body = _request(args)
    url = base + path
    headers = {"Authorization": f"Bearer {key}"}
    stream: UsageStream | None = None
    timeout = httpx.Timeout(60.0, connect=10.0)
    # With --json, stdout holds the JSON report alone: the text goes to stderr as it arrives.
    text_out = sys.stderr if args.json else sys.stdout
    try:
        with (
            httpx.Client(timeout=timeout) as client,
            connect_usage(client, "POST", url, json=body, headers=headers) as stream,
        ):
            print(title(OUTPUT_TITLE), file=text_out, flush=True)
            for event in stream:
                text = delta_text(event)
                if text:
                    print(text, end="", file=text_out, flush=True)
            print(file=text_out)
    except APIStatusError as exc:
        print(f"ssetally: POST {url}: {exc}", file=sys.stderr)
        return 1
    except httpx.HTTPError as exc:
        where = redact(f"POST {url}: {type(exc).__name__}: {exc}", (key,))
        print(f"ssetally: {where}", file=sys.stderr)
        if stream is not None and stream.report is not None:
            # The text was already printed as it arrived.
            print(file=text_out)
            print_report(stream.report, url, sys.stderr, responses=stream.responses, text=False)
        return 1
    report = stream.report
    assert report is not None
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        print_report(report, url, sys.stdout, responses=stream.responses, text=False)
    return 0


def add_parser(sub: Any) -> None:
    """The ``stream`` subcommand."""
    stream = subcommand(sub, "stream", run_stream)
    stream.add_argument("prompt", help="the user message")
    stream.add_argument(
        "--api",
        choices=("responses", "chat"),
        default="responses",
        help="POST /responses or /chat/completions",
    )
    stream.add_argument(
        "--model",
        default=os.environ.get("OPENAI_MODEL", "gpt-4o-mini"),
        help="the model (OPENAI_MODEL when set)",
    )
    stream.add_argument(
        "--max-output-tokens",
        type=int,
        help="cap on output tokens (max_output_tokens, or max_completion_tokens for chat; default: the server's)",
    )
    add_json(stream, "on stdout (the streamed text then goes to stderr)")
