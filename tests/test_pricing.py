"""The learned flat-rate pricing gives exactly what genai-prices' ``calc_price`` gives: the same
Decimals (to the digit), for every model of every provider in its data, or falls back to it."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import genai_prices
import pytest
from genai_prices.data_snapshot import get_snapshot
from ssetally import _pricing


def _usages(rng: random.Random) -> list[dict[str, int]]:
    out = []
    for _ in range(4):
        inp = rng.choice([0, 1, 7, 1000, rng.randrange(1, 2_000_000)])
        cache_read = rng.choice([0, rng.randrange(0, inp + 1)])
        cache_write = rng.choice([0, rng.randrange(0, inp - cache_read + 1)])
        hour = rng.choice([0, rng.randrange(0, cache_write + 1)])
        output = rng.choice([0, 1, rng.randrange(1, 100_000)])
        reasoning = rng.choice([0, rng.randrange(0, output + 1)])
        counts = zip(_pricing.KEYS, (inp, output, cache_read, cache_write, hour, reasoning))
        values = {k: v for k, v in counts if v}
        values.setdefault("input_tokens", 0)
        values.setdefault("output_tokens", 0)
        out.append(values)
    return out


def _slow_calc(values: dict[str, int], model: str, provider: str, when: datetime) -> Any:
    return genai_prices.calc_price(
        genai_prices.Usage(**values), model, provider_id=provider, genai_request_timestamp=when
    )


def _outcome(calc: Callable[..., Any], *args: Any) -> object:
    """What a pricing function gives: the Decimals as text (to the digit) and what it priced,
    or the kind of error it raised (the fast path must raise the same kind)."""
    try:
        result = calc(*args)
    except Exception as exc:  # noqa: BLE001
        return type(exc)
    return (
        str(result.input_price),
        str(result.output_price),
        str(result.total_price),
        result.model.id,
        result.provider.id,
        result.model_price,
    )


def _slow(values: dict[str, int], model: str, provider: str, when: datetime) -> object:
    return _outcome(_slow_calc, values, model, provider, when)


def _fast(values: dict[str, int], model: str, provider: str, when: datetime) -> object:
    return _outcome(_pricing.calc, values, model, provider, when)


def test_every_model_is_priced_exactly_as_calc_price_does() -> None:
    rng = random.Random(20261202)
    when = datetime(2026, 6, 1, tzinfo=timezone.utc)
    checked = 0
    for provider in get_snapshot().providers:
        for model in provider.models:
            for values in _usages(rng):
                assert _fast(values, model.id, provider.id, when) == _slow(
                    values, model.id, provider.id, when
                ), (provider.id, model.id, values)
                checked += 1
    assert checked > 1000  # the data really was walked


def test_an_earlier_request_time_gets_the_price_of_its_time() -> None:
    values = {"input_tokens": 1000, "output_tokens": 100}
    for when in (
        datetime(2023, 1, 1, tzinfo=timezone.utc),
        datetime(2026, 1, 1, tzinfo=timezone.utc),
    ):
        assert _fast(values, "gpt-4o", "openai", when) == _slow(values, "gpt-4o", "openai", when)


def test_an_unknown_model_raises_lookup_error() -> None:
    with pytest.raises(LookupError):
        _pricing.calc({"input_tokens": 1, "output_tokens": 1}, "no-such-model-q", "openai", None)
