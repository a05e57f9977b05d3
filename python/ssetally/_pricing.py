"""Pricing a usage with genai-prices at a fraction of ``calc_price``'s cost, with its result.

``calc_price`` re-derives, for every call, which priced units a model has and how each is
split out of the usage (validation, decomposition into leaf counts): ~0.1-0.3 ms, more than
relaying a whole stream. For a model with flat (untiered) prices those leaf counts are an
affine function of the token counts, so it is learned once per price list (from genai-prices'
own decomposition at a few points) and each call only multiplies, with genai-prices' own
``calc_unit_price`` in its order, so the Decimals are the very ones ``calc_price`` returns.
Each learned price list is checked against ``calc_price`` before use; any model it does not
fit (tiers, special cases, another genai-prices version) is priced by ``calc_price`` itself.
"""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from functools import cache
from types import SimpleNamespace
from typing import Any

__all__ = ["KEYS", "calc", "genai"]

#: The token counts a priced usage may carry (genai-prices' names).
KEYS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "output_reasoning_tokens",
)
# A point inside the valid region (every derived count positive), each count +1 staying in it.
_BASE = (8_000_000, 4_000_000, 1_000_000, 2_000_000, 1_000_000, 1_000_000)
# Points the learned form must price exactly as calc_price does before it is trusted.
_CHECKS = (
    (1234, 567, 0, 0, 0, 0),
    (98765, 4321, 2048, 1024, 512, 300),
    (17, 0, 0, 0, 0, 0),
)

_Form = tuple[tuple[Any, Any, tuple[int, ...], int], ...]  # (unit, price, coefficients, constant)
#: id(price list) -> (the price list, its form or None when calc_price must price it).
_FORMS: dict[int, tuple[Any, _Form | None]] = {}
_FORMS_LIMIT = 4096  # price lists come from the package's data, not the network


@cache
def genai() -> SimpleNamespace:
    """The genai-prices names priced with, imported on first use (an import statement per
    call runs importlib's Python code). Raises ``ImportError`` as the import does."""
    from genai_prices import Usage, calc_price
    from genai_prices.data_snapshot import get_snapshot
    from genai_prices.types import PriceCalculation, TieredPrices, calc_unit_price

    return SimpleNamespace(
        Usage=Usage,
        calc_price=calc_price,
        get_snapshot=get_snapshot,
        PriceCalculation=PriceCalculation,
        TieredPrices=TieredPrices,
        calc_unit_price=calc_unit_price,
    )


def calc(
    values: dict[str, int], model_ref: str, provider_id: str | None, when: datetime | None
) -> Any:
    """``genai_prices.calc_price(Usage(**values), model_ref, provider_id=...,
    genai_request_timestamp=when)``, the same ``PriceCalculation``; raises ``LookupError`` when
    the model has no price, as it does."""
    gp = genai()
    snapshot = gp.get_snapshot()
    provider, model = snapshot.find_provider_model(model_ref, None, provider_id, None)
    stamp = when or datetime.now(tz=timezone.utc)
    model_price = model.get_prices(stamp)
    form = _form(model_price, provider, model)
    counts = tuple(values.get(k, 0) for k in KEYS)
    priced = None if form is None else _apply(form, counts)
    if priced is None:
        return gp.calc_price(
            gp.Usage(**values), model_ref, provider_id=provider_id, genai_request_timestamp=when
        )
    return gp.PriceCalculation(
        input_price=priced[0],
        output_price=priced[1],
        total_price=priced[2],
        model=model,
        provider=provider,
        model_price=model_price,
        auto_update_timestamp=snapshot.timestamp if snapshot.from_auto_update else None,
    )


def _apply(form: _Form, counts: tuple[int, ...]) -> tuple[Decimal, Decimal, Decimal] | None:
    calc_unit_price = genai().calc_unit_price
    input_price = Decimal(0)
    output_price = Decimal(0)
    total_price = Decimal(0)
    for unit, price, coefficients, constant in form:
        leaf = constant + sum(c * n for c, n in zip(coefficients, counts) if c)
        if leaf < 0:
            return None  # calc_price raises its own error for such a usage
        unit_price = calc_unit_price(price, leaf, 0, unit.per)
        total_price += unit_price
        direction = unit.dimensions.get("direction")
        if direction == "input":
            input_price += unit_price
        elif direction == "output":
            output_price += unit_price
    return input_price, output_price, total_price


def _form(model_price: Any, provider: Any, model: Any) -> _Form | None:
    known = _FORMS.get(id(model_price))
    if known is not None and known[0] is model_price:
        return known[1]
    try:
        form = _learn(model_price, provider, model)
    except Exception:  # noqa: BLE001 - private parts moved, or a model it cannot express
        form = None
    if len(_FORMS) >= _FORMS_LIMIT:
        _FORMS.clear()
    _FORMS[id(model_price)] = (model_price, form)
    return form


def _learn(model_price: Any, provider: Any, model: Any) -> _Form | None:
    from genai_prices import Usage
    from genai_prices.types import (
        TieredPrices,
        _collect_resolved_model_prices,
        _compute_registry_priced_counts,
    )
    from genai_prices.units import _get_registry
    from genai_prices.validation import validate_priced_units

    if provider.id == "groq" or any(
        isinstance(v, TieredPrices) for v in vars(model_price).values()
    ):
        return None  # billed-seconds rules and tiers: not affine in the counts
    registry = _get_registry()
    resolved = _collect_resolved_model_prices(model_price, registry)
    validate_priced_units(tuple(unit for unit, _ in resolved), registry)

    def leaves(counts: tuple[int, ...]) -> dict[str, Any]:
        usage = Usage(**dict(zip(KEYS, counts)))
        return _compute_registry_priced_counts(resolved, Usage.from_raw(usage))

    base = leaves(_BASE)
    steps = []
    for k in range(len(KEYS)):
        point = list(_BASE)
        point[k] += 1
        steps.append(leaves(tuple(point)))
    form = []
    for unit, price in resolved:
        key = unit.usage_key
        at_base = base[key]
        if not isinstance(at_base, int):
            return None
        coefficients = tuple(step[key] - at_base for step in steps)
        constant = at_base - sum(c * b for c, b in zip(coefficients, _BASE))
        form.append((unit, price, coefficients, constant))
    learned = tuple(form)
    for counts in _CHECKS:
        values = {k: v for k, v in zip(KEYS, counts) if v}
        expected = model_price.calc_price(Usage(**values))
        got = _apply(learned, counts)
        if got is None or [str(x) for x in got] != [
            str(expected["input_price"]),
            str(expected["output_price"]),
            str(expected["total_price"]),
        ]:
            return None
    return learned
