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
from ._report import print_report


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
    base = os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1").rstrip("/")
    path, body = _request(args)
    headers = {"Authorization": f"Bearer {key}"}
    stream: UsageStream | None = None
    timeout = httpx.Timeout(60.0, connect=10.0)
    try:
        with (
            httpx.Client(timeout=timeout) as client,
            connect_usage(client, "POST", base + path, json=body, headers=headers) as stream,
        ):
            for event in stream:
                text = delta_text(event)
                if text:
                    print(text, end="", flush=True)
            print()
    except APIStatusError as exc:
        print(f"ssetally: {exc}", file=sys.stderr)
        return 1
    except httpx.HTTPError as exc:
        print(f"ssetally: {type(exc).__name__}: {exc}", file=sys.stderr)
        if stream is not None and stream.report is not None:
            # The text was already printed as it arrived.
            print_report(stream.report.replace(output=None), base + path, sys.stderr)
        return 1
    report = stream.report
    assert report is not None
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        print_report(report.replace(output=None), base + path, sys.stdout)
    return 0


def add_parser(sub: Any) -> None:
    """The ``stream`` subcommand."""
    stream = sub.add_parser("stream", help="stream a live call (OPENAI_API_KEY, OPENAI_BASE_URL)")
    stream.add_argument("prompt")
    stream.add_argument("--api", choices=("responses", "chat"), default="responses")
    stream.add_argument("--model", default=os.environ.get("OPENAI_MODEL", "gpt-4o-mini"))
    stream.add_argument("--max-output-tokens", type=int)
    stream.add_argument("--json", action="store_true", help="print the report as JSON")
    stream.set_defaults(func=run_stream)
