"""``open_sink``: a sink from its command-line spec."""

from __future__ import annotations

from typing import Any

from ._base import Sink
from ._jsonl import JsonlSink
from ._sqlite import SqliteSink

__all__ = ["open_sink"]

_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")


def open_sink(spec: str, **options: Any) -> Sink:
    """A sink from its spec; ``options`` go to the sink's constructor.

    * ``jsonl:PATH`` or ``sqlite:PATH``; a bare path is SQLite when it ends in ``.db``,
      ``.sqlite`` or ``.sqlite3``, else JSONL;
    * ``postgresql://user@host:port/db[?table=name]`` (or ``postgres://``): ``PostgresSink``;
    * ``cloudevents+https://host/path`` (or ``cloudevents+http://``): ``CloudEventsSink``.
    """
    scheme = spec.partition("://")[0].lower() if "://" in spec else ""
    if scheme in ("postgresql", "postgres"):
        from ._postgres import PostgresSink

        return PostgresSink(spec, **options)
    if scheme in ("cloudevents+https", "cloudevents+http"):
        from ._cloudevents import CloudEventsSink

        return CloudEventsSink(spec, **options)
    if scheme:
        raise ValueError(
            f"unknown sink {scheme}://: use jsonl:PATH, sqlite:PATH, postgresql://... "
            "or cloudevents+https://..."
        )
    kind, sep, path = spec.partition(":")
    if not sep or kind not in ("jsonl", "sqlite") or not path:
        kind, path = "jsonl", spec
        if spec.endswith(_SQLITE_SUFFIXES):
            kind = "sqlite"
    if not path:
        raise ValueError("the sink needs a path: jsonl:PATH or sqlite:PATH")
    return SqliteSink(path, **options) if kind == "sqlite" else JsonlSink(path, **options)
