"""Cost of a stream (genai-prices) and per-choice shares of ``n > 1`` streams.

Prices change, so every expected amount is worked out here from genai-prices' own price of
the model (its ``ModelPrice``), never written down as dollars.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from ssetally import StreamReport, Usage, UsageTap
from ssetally._cost import (
    apportion,
    apportion_counts,
    choice_usages,
    cost_of,
    infer_provider,
    price_report,
    split_amount,
)
from ssetally._report import ChoiceUsage, Cost

genai_prices = pytest.importorskip("genai_prices")

MTOK = Decimal(1_000_000)


def _rate(price: Any) -> Decimal:
    """A flat rate, or the base rate of tiered prices (the counts here stay below any tier)."""
    return Decimal(0) if price is None else getattr(price, "base", price)


def _model_price(model: str, provider: str | None) -> Any:
    calc = genai_prices.calc_price(genai_prices.Usage(input_tokens=1), model, provider_id=provider)
    return calc, calc.model_price


def _expected(model: str, provider: str | None, usage: Usage) -> dict[str, Decimal]:
    """The amounts worked out by hand from the model's genai-prices rates: subsets at their
    own rate where the model has one, at the base rate where it does not."""
    _, price = _model_price(model, provider)
    inp = _rate(price.input_mtok)
    out = _rate(price.output_mtok)
    read = _rate(price.cache_read_mtok) if price.cache_read_mtok is not None else inp
    write = _rate(price.cache_write_mtok) if price.cache_write_mtok is not None else inp
    reasoning = (
        _rate(price.output_reasoning_mtok) if price.output_reasoning_mtok is not None else out
    )
    cached = usage.cached_input_tokens or 0
    writes = usage.cache_write_tokens or 0
    thought = usage.reasoning_tokens or 0
    assert usage.input_tokens is not None and usage.output_tokens is not None
    plain_in = usage.input_tokens - cached - writes
    plain_out = usage.output_tokens - thought
    return {
        "input": (plain_in * inp + cached * read + writes * write) / MTOK,
        "output": (plain_out * out + thought * reasoning) / MTOK,
        "cached_input": cached * read / MTOK,
        "cache_write": writes * write / MTOK,
    }


CASES = [
    # (model, api, provider given, provider expected, usage)
    ("gpt-4o", "chat.completions", None, "openai", Usage(1200, 300, 1500, 1024, None, None)),
    ("gpt-4o-mini", "responses", "openai", "openai", Usage(5000, 700, 5700, 0, None, None)),
    (
        "claude-3-5-sonnet-latest",
        "anthropic.messages",
        None,
        "anthropic",
        Usage(3000, 400, 3400, 1500, 1000, None),
    ),
    ("gemini-2.0-flash", "gemini", None, "google", Usage(900, 250, 1150, 512, None, 40)),
    ("o3-mini", "chat.completions", None, "openai", Usage(100, 900, 1000, 0, None, 600)),
    # The OpenAI-shaped API serves other providers' models: the model decides.
    ("claude-3-5-haiku-latest", "chat.completions", None, "anthropic", Usage(100, 10, 110)),
    ("deepseek-chat", "chat.completions", None, "deepseek", Usage(2000, 100, 2100, 1000)),
]


@pytest.mark.parametrize(("model", "api", "provider", "expected_provider", "usage"), CASES)
def test_cost_matches_genai_prices_rates(
    model: str, api: str, provider: str | None, expected_provider: str, usage: Usage
) -> None:
    cost, reason = cost_of(usage, model=model, provider=provider, api=api)
    assert reason is None, reason
    assert cost is not None
    calc, _ = _model_price(model, expected_provider)
    expected = _expected(model, expected_provider, usage)
    assert cost.currency == "USD"
    assert cost.input == expected["input"]
    assert cost.output == expected["output"]
    assert cost.cached_input == expected["cached_input"]
    assert cost.cache_write == expected["cache_write"]
    assert cost.total >= cost.input + cost.output
    assert cost.source == (
        f"genai-prices {genai_prices.__version__}: {expected_provider}/{calc.model.id}"
    )
    assert cost.estimated is False


def test_cost_equals_calc_price_itself() -> None:
    """Our counts go to genai-prices unchanged (input includes cache, output reasoning)."""
    usage = Usage(10_000, 2_000, 12_000, 4_000, 1_000, 500)
    cost, _ = cost_of(usage, model="claude-3-7-sonnet-latest", api="anthropic.messages")
    direct = genai_prices.calc_price(
        genai_prices.Usage(
            input_tokens=10_000,
            output_tokens=2_000,
            cache_read_tokens=4_000,
            cache_write_tokens=1_000,
            output_reasoning_tokens=500,
        ),
        "claude-3-7-sonnet-latest",
        provider_id="anthropic",
    )
    assert cost is not None
    assert (cost.input, cost.output, cost.total) == (
        direct.input_price,
        direct.output_price,
        direct.total_price,
    )


def test_one_hour_cache_writes_are_priced_at_their_rate() -> None:
    raw = {"cache_creation": {"ephemeral_5m_input_tokens": 600, "ephemeral_1h_input_tokens": 400}}
    usage = Usage(2000, 10, 2010, 0, 1000, raw=raw)
    model = "claude-3-5-sonnet-latest"
    cost, _ = cost_of(usage, model=model, api="anthropic.messages")
    _, price = _model_price(model, "anthropic")
    assert price.cache_write_1h_mtok is not None
    assert cost is not None
    expected = (600 * _rate(price.cache_write_mtok) + 400 * _rate(price.cache_write_1h_mtok)) / MTOK
    assert cost.cache_write == expected


def test_gateway_prefix_names_the_provider() -> None:
    assert infer_provider("chat.completions", "anthropic/claude-3-5-haiku-latest") == (
        "anthropic",
        "claude-3-5-haiku-latest",
    )
    assert infer_provider("gemini", "gemini-2.0-flash") == ("google", "gemini-2.0-flash")
    assert infer_provider("chat.completions", "gpt-4o") == (None, "gpt-4o")
    cost, _ = cost_of(Usage(100, 10), model="anthropic/claude-3-5-haiku-latest", api="chat")
    assert cost is not None and "anthropic/" in cost.source


def test_opentelemetry_provider_names_are_understood() -> None:
    cost, reason = cost_of(Usage(100, 10), model="gemini-2.0-flash", provider="gcp.gemini")
    assert reason is None and cost is not None and cost.source.endswith("google/gemini-2.0-flash")


def test_request_time_selects_the_price() -> None:
    usage = Usage(1000, 1000)
    when = datetime(2025, 6, 1, tzinfo=timezone.utc)
    direct = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=1000, output_tokens=1000),
        "gpt-4o",
        provider_id="openai",
        genai_request_timestamp=when,
    )
    for stamp in (when, when.timestamp(), when.replace(tzinfo=None)):
        cost, _ = cost_of(usage, model="gpt-4o", api="chat.completions", when=stamp)
        assert cost is not None and cost.total == direct.total_price


def test_estimated_usage_gives_an_estimated_cost() -> None:
    cost, _ = cost_of(Usage(100, 10, source="estimate"), model="gpt-4o-mini", api="responses")
    assert cost is not None and cost.estimated
    assert "estimated" in cost.source


@pytest.mark.parametrize(
    ("usage", "model", "needle"),
    [
        (Usage(100, 10), "no-such-model-xyz", "no-such-model-xyz"),
        (Usage(100, 10), "", "no model"),
        (None, "gpt-4o", "no usage"),
        (Usage(100, None), "gpt-4o", "output_tokens"),
        (Usage(None, None), "gpt-4o", "input_tokens or output_tokens"),
        (Usage(-5, 10), "gpt-4o", "input_tokens"),
        (Usage(True, 10), "gpt-4o", "input_tokens"),  # type: ignore[arg-type]
        # More cached than input: genai-prices refuses, and we say why instead of raising.
        (Usage(10, 10, None, 50), "gpt-4o", "could not price"),
        (Usage(100, 10), "x" * 10_000, "..."),
    ],
)
def test_unpriceable_gives_a_reason(usage: Usage | None, model: str, needle: str) -> None:
    cost, reason = cost_of(usage, model=model, api="chat.completions")
    assert cost is None
    assert reason is not None and needle in reason
    assert len(reason) <= 300


def test_unknown_provider_gives_a_reason() -> None:
    cost, reason = cost_of(Usage(1, 1), model="gpt-4o", provider="nobody-sells-this")
    assert cost is None and reason is not None and "nobody-sells-this" in reason


def test_without_genai_prices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "genai_prices", None)
    cost, reason = cost_of(Usage(100, 10), model="gpt-4o")
    assert cost is None and reason is not None and "ssetally[cost]" in reason


def test_cost_to_dict_is_exact_json() -> None:
    cost, _ = cost_of(Usage(1234, 567, None, 200), model="gpt-4o", api="chat.completions")
    assert cost is not None
    loaded = json.loads(json.dumps(cost.to_dict()))
    assert Decimal(loaded["total"]) == cost.total
    assert Decimal(loaded["cached_input"]) == cost.cached_input
    assert loaded["currency"] == "USD" and loaded["estimated"] is False


def test_report_fields_default_and_serialise() -> None:
    tap = UsageTap("chat.completions")
    tap.feed(b'data: {"id":"x","choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n')
    report = tap.finish()
    assert report.cost is None and report.choices == ()
    out = report.to_dict()
    assert out["cost"] is None and out["choices"] == []
    cost = Cost("USD", Decimal("0.1"), Decimal("0.2"), Decimal(0), Decimal(0), Decimal("0.3"), "s")
    priced = report.replace(cost=cost, choices=(ChoiceUsage(0, 3, Decimal("0.2"), True),))
    out = json.loads(json.dumps(priced.to_dict()))
    assert out["cost"]["total"] == "0.3"
    assert out["choices"] == [{"index": 0, "output_tokens": 3, "cost": "0.2", "apportioned": True}]


# -- apportioning --------------------------------------------------------------------------

weights = st.lists(st.integers(min_value=0, max_value=10_000), min_size=1, max_size=8)


@given(total=st.integers(min_value=0, max_value=10**7), counts=weights)
def test_apportion_counts_properties(total: int, counts: list[int]) -> None:
    shares = apportion_counts(total, dict(enumerate(counts)))
    assert sorted(shares) == list(range(len(counts)))
    assert sum(shares.values()) == total
    assert all(share >= 0 for share in shares.values())
    effective = counts if any(counts) else [1] * len(counts)
    for i, share in shares.items():
        exact = Fraction(total * effective[i], sum(effective))
        assert abs(share - exact) < 1


def test_apportion_equal_split_for_empty_texts() -> None:
    assert apportion(10, {0: "", 1: "", 2: ""}, "o200k_base") == {0: 4, 1: 3, 2: 3}


def test_apportion_by_tokenizer_counts() -> None:
    from ssetally._metering._estimate import load_encoding

    enc = load_encoding("o200k_base")
    texts = {0: "The quick brown fox jumps over the lazy dog.", 1: "Hi", 2: ""}
    counts = {i: len(enc.encode_ordinary(t)) for i, t in texts.items()}
    total = sum(counts.values()) * 3 + 1  # not a multiple: a remainder to hand out
    shares = apportion(total, texts, enc)
    assert sum(shares.values()) == total
    assert shares[2] == 0
    assert shares == apportion(total, texts, "o200k_base")
    assert shares[0] > shares[1] > 0


amounts = st.decimals(min_value=0, max_value=1000, places=10, allow_nan=False)


@given(amount=amounts, counts=weights)
def test_split_amount_properties(amount: Decimal, counts: list[int]) -> None:
    parts = split_amount(amount, dict(enumerate(counts)))
    assert sum(parts.values(), Decimal(0)) == amount
    assert all(part >= 0 for part in parts.values())
    effective = counts if any(counts) else [1] * len(counts)
    quantum = Fraction(1, 10**12)
    for i, part in parts.items():
        exact = Fraction(amount) * effective[i] / sum(effective)
        assert abs(Fraction(part) - exact) < quantum


def test_split_amount_rejects_negative() -> None:
    with pytest.raises(ValueError):
        split_amount(Decimal(-1), {0: 1})


def _two_choice_report() -> StreamReport:
    model = "gpt-4o-mini-2024-07-18"
    base = {"id": "c1", "object": "chat.completion.chunk", "model": model}
    events = [
        {**base, "choices": [{"index": 0, "delta": {"content": "Hello there, my good friend."}}]},
        {**base, "choices": [{"index": 1, "delta": {"content": "Hi"}}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {**base, "choices": [{"index": 1, "delta": {}, "finish_reason": "stop"}]},
        {
            **base,
            "choices": [],
            "usage": {"prompt_tokens": 20, "completion_tokens": 11, "total_tokens": 31},
        },
    ]
    body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    tap = UsageTap("auto", collect_output=True)
    tap.feed(body + b"data: [DONE]\n\n")
    report = tap.finish()
    return report.replace(output=tap.output())


def test_price_report_fills_cost_and_choices() -> None:
    report, reason = price_report(_two_choice_report())
    assert reason is None
    assert report.cost is not None
    assert [c.index for c in report.choices] == [0, 1]
    assert sum(c.output_tokens for c in report.choices) == 11
    assert report.choices[0].output_tokens > report.choices[1].output_tokens
    assert sum((c.cost or Decimal(0)) for c in report.choices) == report.cost.output
    assert all(c.apportioned for c in report.choices)


def test_choice_usages_without_output_or_cost() -> None:
    report = _two_choice_report()
    assert choice_usages(report.replace(output=None)) == ()
    shares = choice_usages(report)
    assert [c.cost for c in shares] == [None, None]
    assert sum(c.output_tokens for c in shares) == 11


def test_price_report_without_model_or_usage() -> None:
    report = _two_choice_report()
    priced, reason = price_report(report.replace(model=None))
    assert priced.cost is None and reason is not None
    priced, reason = price_report(report.replace(usage=None), requested_model="gpt-4o")
    assert priced.cost is None and reason == "no usage to price" and priced.choices == ()
    priced, reason = price_report(report.replace(model="nope-1"), requested_model="gpt-4o-mini")
    assert reason is None and priced.cost is not None and "gpt-4o-mini" in priced.cost.source


def test_unknown_models_are_remembered_within_a_bound() -> None:
    """A miss is looked up once (genai-prices walks every model's rules on a miss), gives the
    same reason the second time, and the memory of misses stays bounded whatever names come."""
    from ssetally import _cost

    usage = Usage(input_tokens=3, output_tokens=5)
    first = cost_of(usage, model="no-such-model-xyz", api="chat.completions")
    second = cost_of(usage, model="No-Such-Model-XYZ", api="chat.completions")
    assert first[0] is None and second[0] is None
    assert first[1] is not None and first[1] == second[1].replace(
        "No-Such-Model-XYZ", "no-such-model-xyz"
    )
    for i in range(_cost._MISSES_LIMIT + 50):
        cost_of(usage, model=f"hostile-{i}", api="chat.completions")
    assert len(_cost._MISSES) <= _cost._MISSES_LIMIT
    # A known model is still priced after the misses.
    known, reason = cost_of(usage, model="gpt-4o-mini", api="chat.completions")
    assert known is not None and reason is None and known.total > 0
