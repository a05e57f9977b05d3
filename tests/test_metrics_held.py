"""The proxy's metrics hold a finished request's counts until the next scrape, added up per
series: a scrape sees exactly what updating the metrics per request would show."""

from __future__ import annotations

import random
from typing import Any

import pytest
from prometheus_client import parser as prometheus_parser
from ssetally._gateway._metrics import MAX_HELD, ProxyMetrics


def scrape(metrics: ProxyMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.render()[0].decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in prometheus_parser.text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")
    }


def record(rng: random.Random) -> dict[str, Any]:
    cost = None
    if rng.random() < 0.5:
        cost = {"total": f"{rng.randint(0, 10**6) / 10**6:.6f}", "currency": "USD"}
    return {
        "api": rng.choice(["chat.completions", "responses", None]),
        "status": rng.choice(["completed", "truncated"]),
        "model": rng.choice(["m1", "m2", None]),
        "requested_model": "asked",
        "stream": rng.random() < 0.8,
        "usage": {
            "input_tokens": rng.randint(0, 500),
            "output_tokens": rng.randint(0, 500),
            "cached_input_tokens": rng.choice([None, 3]),
            "reasoning_tokens": None,
            "source": rng.choice(["stream", "estimate"]),
        }
        if rng.random() < 0.9
        else None,
        "timings": {"duration": rng.random() * 20},
        "bytes": {"client": rng.randint(0, 5000)},
        "cost": cost,
    }


def per_request(records: list[dict[str, Any]]) -> ProxyMetrics:
    """The same records, each applied to the metrics as it comes (the multiprocess way)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PROMETHEUS_MULTIPROC_DIR", "unused")  # only read for the holding choice
        metrics = ProxyMetrics()
    for r in records:
        metrics.record_queued(True)
        metrics.observe(r)
    return metrics


@pytest.mark.parametrize("count", [1, 7, MAX_HELD - 1, MAX_HELD, 2 * MAX_HELD + 5])
def test_a_scrape_sees_every_held_request(count: int) -> None:
    rng = random.Random(count)
    records = [record(rng) for _ in range(count)]
    held = ProxyMetrics()
    for r in records:
        held.record_queued(True)
        held.observe(r)
    got, want = scrape(held), scrape(per_request(records))
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-9), key
    assert got[("ssetally_proxy_records_total", (("result", "queued"),))] == count
    # A second scrape adds nothing: the held counts were applied once.
    assert scrape(held) == got


def test_held_counts_are_bounded_and_applied_past_the_bound() -> None:
    metrics = ProxyMetrics()
    rng = random.Random(1)
    for _ in range(MAX_HELD):
        metrics.observe(record(rng))
    # At the bound the counts went to the registry without a scrape.
    total = sum(
        metrics.registry.get_sample_value("ssetally_proxy_requests_total", {"status": s, "api": a})
        or 0
        for s in ("completed", "truncated")
        for a in ("chat.completions", "responses", "unknown")
    )
    assert total == MAX_HELD


def test_a_worker_applies_each_request_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker of --workers: its metric files outlive a killed worker, held counts would not."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "unused")
    metrics = ProxyMetrics()
    metrics.observe({"api": "responses", "status": "completed", "usage": None})
    labels = {"status": "completed", "api": "responses"}
    assert metrics.registry.get_sample_value("ssetally_proxy_requests_total", labels) == 1


def _reference(records: list[dict[str, Any]]) -> dict[tuple[str, tuple[str, ...]], float]:
    """What the metrics count of ``records``, by the rules written out in Python."""
    seen: set[str] = set()

    def model_label(model: str) -> str:
        if not model or model in seen:
            return model
        if len(model) > 128 or len(seen) >= 256:
            return "other"
        seen.add(model)
        return model

    out: dict[tuple[str, tuple[str, ...]], float] = {}

    def add(name: str, labels: tuple[str, ...], n: float) -> None:
        out[(name, labels)] = out.get((name, labels), 0) + n

    for r in records:
        api = str(r.get("api") or "unknown")
        add("requests", (str(r.get("status")), api), 1)
        client = (r.get("bytes") or {}).get("client")
        if isinstance(client, int) and 0 < client < 2**64:
            add("client_bytes", (), client)
        model = model_label(str(r.get("model") or r.get("requested_model") or "unknown"))
        usage = r.get("usage")
        if usage:
            source = str(usage.get("source") or "stream")
            for kind, key in (
                ("input", "input_tokens"),
                ("output", "output_tokens"),
                ("cached_input", "cached_input_tokens"),
                ("reasoning", "reasoning_tokens"),
            ):
                value = usage.get(key)
                if isinstance(value, int) and 0 < value < 2**64:
                    add("tokens", (model, source, kind), value)
        duration = (r.get("timings") or {}).get("duration")
        if r.get("stream") and isinstance(duration, (int, float)):
            add("durations", (api,), 1)
    return out


_ODD = [
    {},
    {"status": None, "api": "", "model": "", "requested_model": None},
    {"status": 3, "api": 0, "model": 12, "usage": {"input_tokens": True, "source": ""}},
    {"status": "completed", "api": "chat.completions", "model": "é" * 129, "usage": {}},
    {"usage": {"input_tokens": -5, "output_tokens": 2**64, "reasoning_tokens": 7.0}},
    {"usage": {"input_tokens": 2**63, "cached_input_tokens": 1}, "requested_model": "asked"},
    {"bytes": {"client": True}, "stream": 1, "timings": {"duration": True}},
    {"bytes": {"client": -1}, "stream": "yes", "timings": {"duration": "1.5"}},
    {"bytes": None, "stream": True, "timings": None, "model": "\ud800"},
    {"stream": True, "timings": {"duration": 2**70}, "api": "responses"},
]


@pytest.mark.parametrize("extra", [0, 300])
def test_odd_records_are_counted_by_the_written_rules(extra: int) -> None:
    """The native count reads any field value as the rules written in Python read it (str()
    of a label, int counts above zero within 64 bits, bools as ints, Python's truthiness),
    and past 256 model names counts the rest as ``other``."""
    rng = random.Random(extra)
    records = list(_ODD) + [{**record(rng), "model": f"m-{i}"} for i in range(extra)]
    metrics = ProxyMetrics()
    for r in records:
        metrics.observe(r)
    got = scrape(metrics)
    want = _reference(records)
    names = {
        "requests": ("ssetally_proxy_requests_total", ("status", "api")),
        "tokens": ("ssetally_proxy_tokens_total", ("model", "source", "kind")),
    }
    for (kind, labels), n in want.items():
        if kind in names:
            name, keys = names[kind]
            assert got[(name, tuple(sorted(zip(keys, labels))))] == n, (kind, labels)
        elif kind == "client_bytes":
            assert got[("ssetally_proxy_response_bytes_total", ())] == n
        else:
            key = ("ssetally_proxy_stream_duration_seconds_count", (("api", labels[0]),))
            assert got[key] == n
    counted = {
        k for k in got if k[0] in ("ssetally_proxy_requests_total", "ssetally_proxy_tokens_total")
    }
    assert len(counted) == sum(1 for kind, _ in want if kind in names)
