"""The table of the ``ssetally`` commands: each one's line in the list of commands, the text
atop its ``--help``, and the defaults and exit statuses those texts promise."""

from __future__ import annotations

from typing import NamedTuple

#: Exit statuses of ``report``: the input cannot be read; it is not an LLM event stream.
EXIT_UNREADABLE = 2
EXIT_NOT_A_STREAM = 3

#: The default of ``OPENAI_BASE_URL`` (``stream``).
DEFAULT_BASE_URL = "https://api.openai.com/v1"

_SINKS = """\
sinks (--sink):
  jsonl:PATH     one JSON record a line, appended (a bare PATH is JSONL, or SQLite when it
                 ends in .db, .sqlite or .sqlite3)
  sqlite:PATH    a SQLite database, table usage_records (created if absent)
  postgresql://USER@HOST:PORT/DB[?table=NAME]
                 one PostgreSQL table shared by many proxies, created if absent (default
                 table ssetally_usage; needs ssetally[postgres]); the password comes from the
                 URL or PGPASSWORD and is never logged; deduplicated on record_id
  cloudevents+https://HOST/PATH   (or cloudevents+http:// on a trusted network)
                 CloudEvents 1.0 batches POSTed to a metering collector (OpenMeter, any
                 webhook), deduplicated on the event id; see --cloudevents-type,
                 --cloudevents-source, --cloudevents-token-env and --subject-header
  The remote sinks (postgresql, cloudevents) keep records in a bounded on-disk spool
  (--spool-dir, --spool-max-bytes) while the destination is away, and write them when it
  is back: none lost, none twice.

OpenTelemetry: with opentelemetry-api installed every metered stream records a GenAI span
and metrics on the global providers; --otel sets up the SDK with OTLP/HTTP exporters from
the standard OTEL_* variables (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME...;
needs ssetally[otel]); OTEL_SEMCONV_STABILITY_OPT_IN picks the metric names.
"""


class Command(NamedTuple):
    """A command's texts: ``summary`` in the list of commands, ``description`` atop its
    ``--help``, ``epilog`` below the options (both re-wrapped unless ``as_written``)."""

    summary: str
    description: str
    epilog: str | None = None
    as_written: bool = False


COMMANDS = {
    "report": Command(
        "report on a captured SSE stream",
        "Report the usage, status and output of a captured LLM event stream (e.g. saved with "
        "curl -N). A capture of several responses is reported response by response, then their "
        f"sum. Exits {EXIT_UNREADABLE} when the file cannot be read and {EXIT_NOT_A_STREAM} "
        "when it is not an LLM event stream.",
    ),
    "stream": Command(
        "stream a live call (OPENAI_API_KEY, OPENAI_BASE_URL)",
        "Stream one live call to an OpenAI-compatible server, print the text as it arrives, "
        "then the report with its timings. The key is read from OPENAI_API_KEY, the server "
        f"from OPENAI_BASE_URL (default {DEFAULT_BASE_URL}). Exits 1 when the call fails.",
    ),
    "replay": Command(
        "serve a local OpenAI-compatible replay server",
        "Serve a local OpenAI-compatible server (Chat, Completions, Responses with "
        "GET /v1/responses/{id} retrieval, /v1/models) for testing clients offline: it replays "
        "the given captures one per request, or generates streams with usage. Its base URL is "
        "http://HOST:PORT/v1. Runs until Ctrl-C.",
    ),
    "proxy": Command(
        "run a metering reverse proxy in front of an LLM API (needs ssetally[proxy])",
        "Forward every request to --upstream, relay the answers byte for byte and\n"
        "write one usage record per request (tokens, cost, timings) to the sink;\n"
        "Prometheus metrics on /metrics. Needs the proxy extra: pip install 'ssetally[proxy]'\n"
        "(from a clone of the repository: pip install '.[proxy]').",
        epilog=_SINKS,
        as_written=True,
    ),
}
