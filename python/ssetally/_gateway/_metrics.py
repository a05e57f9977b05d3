"""The metering proxy's metrics: Prometheus text format on ``/metrics`` (prometheus-client).

Each ``ProxyMetrics`` has a registry of its own, so several proxies can live in one process.
(The OpenTelemetry GenAI span and metrics of each stream are recorded by the metering
pipeline itself, ``StreamMeter.complete``.)
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from .._core import Tally
from ..sinks import Sink, SinkCollector

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge, Histogram

__all__ = ["ProxyMetrics"]

logger = logging.getLogger("ssetally.proxy")

#: Stream durations (seconds): LLM streams run from well under a second to minutes.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


#: An ISO 4217 currency code (label values stay bounded).
_CURRENCY = re.compile(r"[A-Z]{3}")
#: Counts at most (a finished request's, a record handed to the sink) held until a scrape;
#: then they are applied at once.
MAX_HELD = 1024
#: Seconds between two log messages about one kind of metering fault.
FAULT_LOG_EVERY = 30.0


def _import_prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:
        raise ImportError(
            "the metering proxy needs prometheus-client: pip install 'ssetally[proxy]'"
        ) from exc
    return prometheus_client


#: Distinct model names the metrics keep as label values; later ones are counted as
#: ``other`` (model names come from clients and upstreams: unbounded label values would grow
#: the number of series, and the proxy's memory, without limit).
MAX_MODEL_LABELS = 256
#: Longer model names are counted as ``other`` too.
MAX_MODEL_LABEL_LENGTH = 128


class _FaultLog:
    """Logs each kind of fault at most every ``FAULT_LOG_EVERY`` seconds, with the count since
    the last message: a fault that hits every request logs a line now and then, not per request."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def note(self, stage: str, count: int) -> None:
        now = time.monotonic()
        with self._lock:
            total = self._counts.get(stage, 0) + count
            if now - self._last.get(stage, -math.inf) < FAULT_LOG_EVERY:
                self._counts[stage] = total
                return
            self._last[stage] = now
            self._counts[stage] = 0
        logger.warning(
            "ssetally proxy: %d metering fault(s) at stage %s since the last message "
            "(streams are passed on; see ssetally_proxy_metering_failures_total)",
            total,
            stage,
        )


#: The sink outcomes counted (``SinkCollector``'s).
_SINK_OUTCOMES = ("written", "failed", "dropped", "spooled")
#: Set in the workers of ``ssetally proxy --workers`` (prometheus-client's multiprocess mode).
_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class _SinkMirror:
    """A sink's counters as metrics of this process, for the multiprocess mode of ``--workers``
    (where ``/metrics`` sums the workers' metric files and a collector would be invisible):
    brought up to date after each batch the sink settles, and at each record and scrape."""

    def __init__(self, prom: Any, registry: Any, sink: Sink) -> None:
        self.sink = sink
        self.records = prom.Counter(
            "ssetally_sink_records",
            "Usage records by what became of them in the sink",
            ["sink", "outcome"],
            registry=registry,
        )
        self.pending, self.spool_depth = (
            prom.Gauge(name, text, ["sink"], registry=registry, multiprocess_mode="livesum")
            for name, text in (
                ("ssetally_sink_pending", "Usage records queued and not yet settled"),
                ("ssetally_sink_spool_depth", "Usage records waiting in the sink's on-disk spool"),
            )
        )
        self._seen = dict.fromkeys(_SINK_OUTCOMES, 0)
        self._lock = threading.Lock()
        for outcome in _SINK_OUTCOMES:  # every series present from the start
            self.records.labels(sink.kind, outcome)
        sink.on_settled(self.sync)
        self.sync()  # what it settled before (a worker's replay of its predecessor's records)

    def sync(self) -> None:
        stats = self.sink.stats()
        kind = self.sink.kind
        with self._lock:
            for outcome in _SINK_OUTCOMES:
                new = stats[outcome] - self._seen[outcome]
                if new > 0:
                    self.records.labels(kind, outcome).inc(new)
                    self._seen[outcome] = stats[outcome]
            self.pending.labels(kind).set(stats["pending"])
            self.spool_depth.labels(kind).set(stats["spool_depth"])


class _Children:
    """The children of a labelled metric by label values, each looked up in the metric once
    (its ``labels()`` checks the values and takes a lock at every call). The label values
    are bounded already (``MAX_MODEL_LABELS``); past ``limit`` tuples the metric is asked again."""

    def __init__(self, metric: Any, limit: int = 4096) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Any] = {}
        self._limit = limit

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._metric.labels(*values)
            if len(self._children) < self._limit:
                self._children[values] = child
        return child


def _amount(value: Any) -> float | None:
    """A cost amount of a record (a decimal string) as a float, None if it is not one."""
    try:
        amount = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return float(amount) if amount.is_finite() and amount >= 0 else None


#: The metrics of a ``ProxyMetrics``: its attribute, the prometheus-client class, the metric's
#: name and help text, its label names and further arguments of the class.
_METRICS: tuple[tuple[str, str, str, str, list[str], dict[str, Any]], ...] = (
    (
        "requests",
        "Counter",
        "ssetally_proxy_requests",
        "Proxied requests by outcome status and API.",
        ["status", "api"],
        {},
    ),
    (
        "tokens",
        "Counter",
        "ssetally_proxy_tokens",
        (
            "Tokens metered, by model, usage source and kind "
            "(input includes cached, output includes reasoning)."
        ),
        ["model", "source", "kind"],
        {},
    ),
    (
        "stream_duration",
        "Histogram",
        "ssetally_proxy_stream_duration_seconds",
        "Seconds from receiving a streamed request to the end of its stream.",
        ["api"],
        {"buckets": DURATION_BUCKETS},
    ),
    (
        "metering_failures",
        "Counter",
        "ssetally_proxy_metering_failures",
        "Metering faults; streams are passed on regardless (fail-open).",
        ["stage"],
        {},
    ),
    (
        "client_bytes",
        "Counter",
        "ssetally_proxy_response_bytes",
        "Response body bytes relayed to clients.",
        [],
        {},
    ),
    # summed over the live workers of --workers
    (
        "in_flight",
        "Gauge",
        "ssetally_proxy_requests_in_flight",
        "Requests being proxied now.",
        [],
        {"multiprocess_mode": "livesum"},
    ),
    (
        "records",
        "Counter",
        "ssetally_proxy_records",
        "Usage records handed to the sink, by result (queued, dropped).",
        ["result"],
        {},
    ),
    (
        "cost",
        "Counter",
        "ssetally_proxy_cost",
        (
            "What the metered requests cost, by model and currency (genai-prices; estimated "
            "usage gives an estimated cost)."
        ),
        ["model", "currency"],
        {},
    ),
)


class ProxyMetrics:
    """The counters and histograms of one proxy. A finished request's counts are held, added
    up per series, until the next scrape (``render`` applies them first, so a scrape sees
    every request; at most ``MAX_HELD`` requests wait): one update of a series per scrape,
    not several locked updates per request. The workers of ``--workers`` apply them at once."""

    requests: Counter
    tokens: Counter
    stream_duration: Histogram
    metering_failures: Counter
    client_bytes: Counter
    in_flight: Gauge
    records: Counter
    cost: Counter

    def __init__(self) -> None:
        prom = _import_prometheus()
        self._prom = prom
        self.registry = prom.CollectorRegistry(auto_describe=True)
        for attribute, kind, name, text, labels, extra in _METRICS:
            metric = getattr(prom, kind)(name, text, labels, registry=self.registry, **extra)
            setattr(self, attribute, metric)
        self._requests = _Children(self.requests)
        self._tokens = _Children(self.tokens)
        self._stream_duration = _Children(self.stream_duration)
        self._cost = _Children(self.cost)
        self._records = _Children(self.records)
        self._fault_log = _FaultLog()
        self._sink: Sink | None = None
        self._mirror: _SinkMirror | None = None
        self._sink_failed = 0
        self._sink_lock = threading.Lock()
        self._lock = threading.Lock()  # the held counts
        self._tally = Tally(MAX_MODEL_LABELS, MAX_MODEL_LABEL_LENGTH)
        self._cost_held: dict[tuple[str, str], float] = {}
        self._hold = not os.environ.get(_MULTIPROC_ENV)

    def watch(self, sink: Sink) -> None:
        """Expose ``sink``'s counters, and count the records it fails to write (a full disk,
        a refusing database) as metering failures at stage ``sink``."""
        if os.environ.get(_MULTIPROC_ENV):
            self._mirror = _SinkMirror(self._prom, self.registry, sink)
        else:
            self.registry.register(SinkCollector(sink))
        self._sink = sink
        self._sink_failed = sink.failed

    def record_queued(self, queued: bool) -> None:
        """Count one record handed to the sink: ``queued``, or ``dropped`` when it was not."""
        with self._lock:
            self._held(self._tally.record(queued))

    def failure(self, stage: str, count: int = 1) -> None:
        """Count ``count`` metering faults at ``stage`` (logged, at most every 30 s a stage)."""
        self.metering_failures.labels(stage).inc(count)
        self._fault_log.note(stage, count)

    def _sync_sink(self) -> None:
        """Count the records the sink failed to write since the last look (it writes from a
        thread of its own, after the record was counted as queued)."""
        sink = self._sink
        if sink is None:
            return
        if self._mirror is not None:
            self._mirror.sync()
        with self._sink_lock:
            failed = sink.failed
            new, self._sink_failed = failed - self._sink_failed, failed
        if new > 0:
            self.failure("sink", new)

    def observe(self, record: Mapping[str, Any], queued: bool | None = None) -> None:
        """Account one finished request's record (its counts natively, ``Tally``); with
        ``queued``, as ``record_queued`` does too."""
        if type(record) is not dict:
            record = dict(record)
        cost = record.get("cost")
        with self._lock:
            if cost is not None and isinstance(cost, Mapping):
                self._hold_cost(record, cost)
            self._held(self._tally.observe(record, queued))
        if not self._hold:
            self._sync_sink()

    def _hold_cost(self, record: Mapping[str, Any], cost: Mapping[str, Any]) -> None:
        amount = _amount(cost.get("total"))
        if amount:
            currency = str(cost.get("currency"))
            currency = currency if _CURRENCY.fullmatch(currency) else "other"
            model = str(record.get("model") or record.get("requested_model") or "unknown")
            key = (self._tally.model_label(model), currency)
            self._cost_held[key] = self._cost_held.get(key, 0.0) + amount

    def _held(self, count: int) -> None:
        """``count`` requests held now (the lock is held). A worker of ``--workers`` applies
        them at once: its metric files are what outlive it, should it be killed."""
        if not self._hold or count >= MAX_HELD:
            self._flush_held()

    def flush(self) -> None:
        """Apply the held counts to the metrics now (each scrape does first), with the sink's
        failures since the last look."""
        with self._lock:
            self._flush_held()
        self._sync_sink()

    def _flush_held(self) -> None:
        requests, tokens, durations, client_bytes, (queued, dropped) = self._tally.take()
        cost, self._cost_held = self._cost_held, {}
        for labels, n in requests:
            self._requests(*labels).inc(n)
        if client_bytes:
            self.client_bytes.inc(client_bytes)
        for series, n in tokens:
            self._tokens(*series).inc(n)
        for api, duration in durations:
            self._stream_duration(api).observe(duration)
        for key, amount in cost.items():
            self._cost(*key).inc(amount)
        for result, n in (("queued", queued), ("dropped", dropped)):
            if n:
                self._records(result).inc(n)

    def render(self) -> tuple[bytes, str]:
        """The Prometheus exposition and its content type."""
        self.flush()
        return self._prom.generate_latest(self.registry), self._prom.CONTENT_TYPE_LATEST
