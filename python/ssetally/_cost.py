"""What a stream cost: prices from pydantic's ``genai-prices`` and per-choice shares.

``cost_of(usage, model=...)`` prices one usage record with ``genai_prices.calc_price``.
Our ``Usage`` counts the way genai-prices does (``input_tokens`` includes cache reads and
writes, ``output_tokens`` includes reasoning; genai-prices prices each subset at its own
rate and the rest at the base rate), so the counts pass through unchanged. It never raises:
an unknown model, missing counts or a missing package give ``(None, reason)``.

``apportion`` and ``split_amount`` share a total among the choices of an ``n > 1`` stream by
the largest-remainder method, so the parts add up exactly. ``price_report`` does both for a
finished ``StreamReport``.

genai-prices is imported on first use (about a third of a second to load its price list).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

from ._pricing import calc as calc_price
from ._pricing import genai
from ._report import ChoiceUsage, Cost, StreamReport, Usage

if TYPE_CHECKING:
    from genai_prices.types import ModelPrice, PriceCalculation

__all__ = [
    "ChoiceUsage",
    "Cost",
    "apportion",
    "apportion_counts",
    "choice_usages",
    "cost_of",
    "infer_provider",
    "price_report",
    "split_amount",
]

#: genai-prices prices in US dollars.
CURRENCY = "USD"

#: Reasons quote network values (model names): keep them short.
_NAME_LIMIT = 120
#: Model names genai-prices had no price for, remembered (it caches only its hits, and a miss
#: walks every model's match rules: ~0.4 ms a stream). Names come from the network: bounded.
_MISSES: dict[tuple[str | None, str, str], str] = {}
_MISSES_LIMIT = 1024
#: Why a report's models (with its API and provider) have no price, for reports whose usage
#: has both counts: an unpriced model (a self-hosted one, say) is not looked up per stream.
_UNPRICED: dict[tuple[Any, ...], str | None] = {}
_REASON_LIMIT = 300

#: Provider names as other tools write them (OpenTelemetry ``gen_ai.provider.name``, gateway
#: prefixes) mapped to genai-prices provider ids.
_PROVIDER_ALIASES = {
    "gcp.gemini": "google",
    "gcp.vertex_ai": "google",
    "gcp.gen_ai": "google",
    "gemini": "google",
    "vertex_ai": "google",
    "aws.bedrock": "aws",
    "bedrock": "aws",
    "azure.ai.openai": "azure",
    "azure.ai.inference": "azure",
    "x_ai": "x-ai",
    "xai": "x-ai",
    "mistral_ai": "mistral",
    "moonshot_ai": "moonshotai",
}

#: The provider an API belongs to; the OpenAI-shaped APIs are served by many providers, so for
#: them the model decides when OpenAI does not know it.
_API_PROVIDER = {
    "anthropic.messages": "anthropic",
    "gemini": "google",
    "gemini.interactions": "google",
    "cohere": "cohere",
}
_OPENAI_SHAPED = ("chat.completions", "completions", "responses", "assistants")


class _Encoder(Protocol):
    def encode_ordinary(self, text: str) -> list[int]: ...


def _short(text: str, limit: int = _NAME_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _reason(text: str) -> str:
    return _short(text, _REASON_LIMIT)


def infer_provider(api: str | None, model: str | None) -> tuple[str | None, str | None]:
    """The genai-prices provider id for a stream, and the model name to look up.

    A gateway prefix (``anthropic/claude-sonnet-4``) names the provider; otherwise the API
    does (``anthropic.messages`` is Anthropic, ``gemini`` Google); for the OpenAI-shaped APIs
    the provider is None, meaning "OpenAI if it knows the model, else whoever genai-prices
    matches the model name to".
    """
    name = (model or "").strip()
    prefix, sep, rest = name.partition("/")
    if sep and rest:
        candidate = _PROVIDER_ALIASES.get(prefix.lower(), prefix.lower())
        if candidate in _known_providers():
            return candidate, rest
    return _API_PROVIDER.get(api or ""), name or None


def _known_providers() -> frozenset[str]:
    try:
        from genai_prices.data_snapshot import get_snapshot
    except Exception:  # noqa: BLE001 - any import failure means "no price list"
        return frozenset()
    return frozenset(p.id for p in get_snapshot().providers)


def _timestamp(when: datetime | float | None) -> datetime | None:
    if when is None:
        return None
    if isinstance(when, datetime):
        return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)
    if not math.isfinite(when):
        return None
    return datetime.fromtimestamp(when, tz=timezone.utc)


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _one_hour_writes(raw: Mapping[str, Any]) -> int | None:
    """Anthropic's 1-hour cache writes (``cache_creation.ephemeral_1h_input_tokens``), which are
    priced above 5-minute ones."""
    creation = raw.get("cache_creation")
    return (
        _count(creation.get("ephemeral_1h_input_tokens")) if isinstance(creation, Mapping) else None
    )


def _price_usage(usage: Usage, input_tokens: int, output_tokens: int) -> dict[str, int]:
    """The token counts genai-prices prices (its ``Usage`` field names), zeros left out."""
    values: dict[str, int] = {"input_tokens": input_tokens, "output_tokens": output_tokens}
    cached = _count(usage.cached_input_tokens)
    writes = _count(usage.cache_write_tokens)
    reasoning = _count(usage.reasoning_tokens)
    if cached:
        values["cache_read_tokens"] = cached
    if writes:
        values["cache_write_tokens"] = writes
        hour = _one_hour_writes(usage.raw)
        if hour:
            values["cache_write_1h_tokens"] = min(hour, writes)
    if reasoning:
        values["output_reasoning_tokens"] = min(reasoning, output_tokens)
    return values


def _part(model_price: ModelPrice, keys: Sequence[str], count: int, tier_input: int) -> Decimal:
    """The cost of ``count`` tokens at the first of ``keys`` the model has a price for."""
    if not count:
        return Decimal(0)
    calc_unit_price = genai().calc_unit_price
    for key in keys:
        price = getattr(model_price, key, None)
        if price is not None:
            cost: Decimal = calc_unit_price(price, count, tier_input, 1_000_000)
            return cost
    return Decimal(0)


def _cache_parts(
    calc: PriceCalculation, usage: Usage, input_tokens: int
) -> tuple[Decimal, Decimal]:
    """Cache-read and cache-write parts of the input cost, priced as genai-prices prices them:
    at the cache rate where the model has one, at the input rate where it does not."""
    prices = calc.model_price
    tiered_prices = genai().TieredPrices
    tiered = any(isinstance(v, tiered_prices) for v in vars(prices).values())
    tier_input = input_tokens if tiered else 0
    cached = _count(usage.cached_input_tokens) or 0
    writes = _count(usage.cache_write_tokens) or 0
    hour = min(_one_hour_writes(usage.raw) or 0, writes)
    read_cost = _part(prices, ("cache_read_mtok", "input_mtok"), cached, tier_input)
    write_keys = ("cache_write_mtok", "input_mtok")
    write_cost = _part(prices, write_keys, writes - hour, tier_input)
    write_cost += _part(prices, ("cache_write_1h_mtok", *write_keys), hour, tier_input)
    return read_cost, write_cost


def cost_of(
    usage: Usage | None,
    *,
    model: str | None,
    provider: str | None = None,
    api: str | None = None,
    when: datetime | float | None = None,
) -> tuple[Cost | None, str | None]:
    """Price ``usage`` for ``model``: ``(Cost, None)``, or ``(None, reason)``. Never raises.

    ``provider`` is a genai-prices provider id (``openai``, ``anthropic``, ``google``...) or an
    OpenTelemetry provider name (``gcp.gemini``, ``aws.bedrock``...); without it the provider
    is inferred from ``api`` and ``model`` (``infer_provider``). ``when`` is the request time
    (a datetime, naive meaning UTC, or epoch seconds): prices change, and genai-prices knows
    when. An estimated usage gives an estimated cost (``Cost.estimated``, and ``source`` says so).
    """
    if usage is None:
        return None, "no usage to price"
    if not model:
        return None, "no model name to look a price up by"
    input_tokens = _count(usage.input_tokens)
    output_tokens = _count(usage.output_tokens)
    missing = [
        name
        for name, value in (("input_tokens", input_tokens), ("output_tokens", output_tokens))
        if value is None
    ]
    if missing or input_tokens is None or output_tokens is None:
        return None, f"usage has no {' or '.join(missing)}, so the cost is unknown"
    try:
        import genai_prices
    except Exception as exc:  # noqa: BLE001 - ImportError, or a SyntaxError on old Pythons
        return None, _reason(
            f"genai-prices is not available ({type(exc).__name__}: {exc}); "
            "install ssetally[cost] (Python 3.11+) to price streams"
        )
    try:
        return _cost(
            usage,
            model,
            provider,
            api,
            _timestamp(when),
            input_tokens,
            output_tokens,
            genai_prices.__version__,
        )
    except Exception as exc:  # noqa: BLE001 - pricing must never break metering
        return None, _reason(f"could not price {_short(model)!r}: {type(exc).__name__}: {exc}")


def _cost(
    usage: Usage,
    model: str,
    provider: str | None,
    api: str | None,
    when: datetime | None,
    input_tokens: int,
    output_tokens: int,
    version: str,
) -> tuple[Cost | None, str | None]:
    if provider:
        candidates: list[tuple[str | None, str]] = [
            (_PROVIDER_ALIASES.get(provider.lower(), provider.lower()), model)
        ]
    else:
        inferred, name = infer_provider(api, model)
        name = name or model
        if inferred is not None:
            candidates = [(inferred, name)]
        elif api in _OPENAI_SHAPED:
            candidates = [("openai", name), (None, name)]
        else:
            candidates = [(None, name)]
    calc = None
    failures: list[str] = []
    for candidate, name in candidates:
        key = (candidate, name.lower(), version)
        missed = _MISSES.get(key)
        if missed is not None:
            failures.append(missed)
            continue
        try:
            # Built only for a lookup: a model remembered as unpriced costs nothing more.
            calc = calc_price(
                _price_usage(usage, input_tokens, output_tokens), name, candidate, when
            )
            break
        except LookupError as exc:
            failures.append(str(exc))
            if len(_MISSES) >= _MISSES_LIMIT:
                _MISSES.pop(next(iter(_MISSES)))  # the oldest: insertion order
            _MISSES[key] = failures[-1]
    if calc is None:
        return None, _reason(
            f"genai-prices {version} has no price for model {_short(model)!r}"
            + (f" ({failures[-1]})" if failures else "")
        )
    read_cost, write_cost = _cache_parts(calc, usage, input_tokens)
    estimated = usage.source == "estimate"
    source = f"genai-prices {version}: {calc.provider.id}/{calc.model.id}"
    if estimated:
        source += " (estimated token counts)"
    return (
        Cost(
            currency=CURRENCY,
            input=calc.input_price,
            output=calc.output_price,
            cached_input=read_cost,
            cache_write=write_cost,
            total=calc.total_price,
            source=source,
            estimated=estimated,
        ),
        None,
    )


# -- sharing totals among choices ---------------------------------------------------------


def _largest_remainder(total: int, weights: Sequence[int]) -> list[int]:
    """``total`` split in proportion to ``weights``: each part is the floor of its exact
    quota or one more, the largest remainders (then the lowest positions) getting the extra
    units, so the parts add up to ``total``. All-zero weights split equally."""
    if total < 0:
        raise ValueError("the total to share must not be negative")
    if any(w < 0 for w in weights):
        raise ValueError("weights must not be negative")
    if not weights:
        return []
    if not any(weights):
        weights = [1] * len(weights)
    weight_sum = sum(weights)
    quotas = [divmod(total * w, weight_sum) for w in weights]
    parts = [q for q, _ in quotas]
    left = total - sum(parts)
    for i in sorted(range(len(weights)), key=lambda i: (-quotas[i][1], i))[:left]:
        parts[i] += 1
    return parts


def apportion_counts(total_output_tokens: int, counts: Mapping[int, int]) -> dict[int, int]:
    """Share ``total_output_tokens`` among choices in proportion to ``counts`` (choice index
    -> tokenizer count); the shares add up exactly to the total."""
    keys = sorted(counts)
    parts = _largest_remainder(total_output_tokens, [counts[k] for k in keys])
    return dict(zip(keys, parts))


def apportion(
    total_output_tokens: int, texts_by_choice: Mapping[int, str], encoding: _Encoder | str
) -> dict[int, int]:
    """Share a stream's ``total_output_tokens`` among its choices by the tokenizer counts of
    each choice's text (``encoding``: a tiktoken ``Encoding`` or its name). Integer shares
    that add up exactly to the total; an equal split when every text is empty."""
    if isinstance(encoding, str):
        from ._metering._estimate import load_encoding

        encoding = load_encoding(encoding)
    counts = {
        i: len(encoding.encode_ordinary(text)) if text else 0 for i, text in texts_by_choice.items()
    }
    return apportion_counts(total_output_tokens, counts)


def split_amount(amount: Decimal, weights: Mapping[int, int]) -> dict[int, Decimal]:
    """Split a non-negative ``amount`` in proportion to ``weights`` (e.g. each choice's
    apportioned output tokens) into parts of at least 12 decimal places that add up to
    ``amount`` exactly."""
    if not amount.is_finite() or amount < 0:
        raise ValueError("the amount to split must be finite and not negative")
    _, digits, exponent = amount.as_tuple()
    assert isinstance(exponent, int)  # finite, checked above
    scale = min(exponent, -12)
    units = int("".join(map(str, digits)) or "0") * 10 ** (exponent - scale)
    keys = sorted(weights)
    parts = _largest_remainder(units, [weights[k] for k in keys])
    return {k: Decimal(p).scaleb(scale) for k, p in zip(keys, parts)}


def _choice_weights(report: StreamReport, encoding: _Encoder | str | None) -> dict[int, int] | None:
    """Tokenizer counts of each reassembled choice (text, refusals, reasoning, tool calls)."""
    output = report.output or {}
    choices = output.get("choices")
    items = list(choices.values() if isinstance(choices, Mapping) else choices or ())
    indexes: list[int] = []
    for pos, choice in enumerate(items):
        if isinstance(choice, Mapping):
            index = choice.get("index")
            indexes.append(index if isinstance(index, int) else pos)
    if len(indexes) < 2 or len(set(indexes)) != len(indexes):
        return None
    from ._metering._estimate import (
        EstimateError,
        count_completion_tokens,
        encoding_name_for,
        load_encoding,
    )

    try:
        if encoding is None:
            encoding = encoding_name_for(report.model)[0]
        enc = load_encoding(encoding) if isinstance(encoding, str) else encoding
        counts = count_completion_tokens(output, enc)  # type: ignore[arg-type]
    except EstimateError:
        return {i: 0 for i in indexes}  # no tokenizer: an equal split
    return dict(zip(sorted(indexes), counts))


def choice_usages(
    report: StreamReport, cost: Cost | None = None, *, encoding: _Encoder | str | None = None
) -> tuple[ChoiceUsage, ...]:
    """Per-choice output tokens (and output cost) of an ``n > 1`` stream; ``()`` for one
    choice or when the stream's output was not collected (``collect_output=True``) or its
    usage has no ``output_tokens``."""
    usage = report.usage
    total = None if usage is None else _count(usage.output_tokens)
    if total is None or report.output is None:  # nothing to apportion by
        return ()
    weights = _choice_weights(report, encoding)
    if weights is None:
        return ()
    tokens = apportion_counts(total, weights)
    costs = split_amount(cost.output, tokens) if cost is not None else {}
    return tuple(ChoiceUsage(i, n, costs.get(i), True) for i, n in tokens.items())


def price_report(
    report: StreamReport,
    *,
    provider: str | None = None,
    requested_model: str | None = None,
    when: datetime | float | None = None,
    encoding: _Encoder | str | None = None,
) -> tuple[StreamReport, str | None]:
    """``report`` with ``cost`` and ``choices`` filled in, and why the cost is missing if it is.

    The response's model is priced first (it names the exact version billed), then
    ``requested_model``. Never raises.
    """
    cost, choices, reason = price_parts(report, requested_model, when, provider, encoding)
    return report.replace(cost=cost, choices=choices), reason


def price_parts(
    report: StreamReport,
    requested_model: str | None,
    when: datetime | float | None,
    provider: str | None = None,
    encoding: _Encoder | str | None = None,
) -> tuple[Cost | None, tuple[ChoiceUsage, ...], str | None]:
    """What ``price_report`` fills in: ``(cost, choices, reason)``. Never raises."""
    cost: Cost | None = None
    reason: str | None = "no model name to look a price up by"
    model = report.model or requested_model
    models: tuple[str, ...] = () if not model else (model,)
    if model and requested_model and model != requested_model:
        models = (model, requested_model)
    usage = report.usage
    counted = (
        usage is not None
        and _count(usage.input_tokens) is not None
        and _count(usage.output_tokens) is not None
    )
    # Only once genai-prices is loaded, and per its version: a price list that changes (or
    # goes) is looked up anew.
    version = getattr(sys.modules.get("genai_prices"), "__version__", None)
    key = (models, report.api, provider, version)
    known = _UNPRICED.get(key) if counted and isinstance(version, str) else None
    if known is not None:
        reason = known
    else:
        for model in models:
            cost, reason = cost_of(usage, model=model, provider=provider, api=report.api, when=when)
            if cost is not None:
                break
        version = getattr(sys.modules.get("genai_prices"), "__version__", None)
        key = (models, report.api, provider, version)
        if cost is None and counted and isinstance(version, str):
            if len(_UNPRICED) >= _MISSES_LIMIT:
                _UNPRICED.pop(next(iter(_UNPRICED)))  # the oldest: insertion order
            _UNPRICED[key] = reason
    try:
        choices = choice_usages(report, cost, encoding=encoding)
    except Exception:  # noqa: BLE001 - per-choice shares are extra; never break metering
        choices = ()
    return cost, choices, reason
