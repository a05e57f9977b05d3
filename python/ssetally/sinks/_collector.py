"""Prometheus metrics of a sink: a custom collector reading its counters at scrape time
(prometheus-client is imported lazily, when the collector is first collected)."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any

from ._base import Sink

__all__ = ["SinkCollector"]

_OUTCOMES = ("written", "failed", "dropped", "spooled")


class SinkCollector:
    """``registry.register(SinkCollector(sink))`` exposes

    * ``ssetally_sink_records_total{sink, outcome}`` (counter; outcome ``written``, ``failed``,
      ``dropped``, ``spooled``; a spooled record is counted again when it is written),
    * ``ssetally_sink_pending{sink}``: records queued in memory, not yet settled,
    * ``ssetally_sink_spool_depth{sink}``: records waiting in the on-disk spool.

    ``sink`` is the sink's kind, or ``name`` when given (for several sinks in one registry).
    """

    def __init__(self, sink: Sink, name: str | None = None) -> None:
        self.sink = sink
        self.name = name or sink.kind

    def describe(self) -> list[Any]:
        return list(self._families({o: 0 for o in _OUTCOMES}, 0, 0))

    def collect(self) -> Iterator[Any]:
        stats = self.sink.stats()
        yield from self._families(stats, stats["pending"], stats["spool_depth"])

    def _families(self, counts: dict[str, int], pending: int, depth: int) -> Iterator[Any]:
        core = importlib.import_module("prometheus_client.core")
        records = core.CounterMetricFamily(
            "ssetally_sink_records",
            "Usage records by what became of them in the sink",
            labels=["sink", "outcome"],
        )
        for outcome in _OUTCOMES:
            records.add_metric([self.name, outcome], counts[outcome])
        yield records
        gauge = core.GaugeMetricFamily(
            "ssetally_sink_pending", "Usage records queued and not yet settled", labels=["sink"]
        )
        gauge.add_metric([self.name], pending)
        yield gauge
        gauge = core.GaugeMetricFamily(
            "ssetally_sink_spool_depth",
            "Usage records waiting in the sink's on-disk spool",
            labels=["sink"],
        )
        gauge.add_metric([self.name], depth)
        yield gauge
