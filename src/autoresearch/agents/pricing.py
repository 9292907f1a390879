"""What a model's tokens cost, in US dollars per million input and output tokens.

The default table holds list prices of a few common hosted models (as published in
2025; providers change them, so settings and flags can override any entry). A dated
snapshot ("gpt-4o-2024-08-06") or an OpenRouter name ("openai/gpt-4o") finds its base
entry. An unknown model, e.g. a local one, costs 0; its tokens are still counted.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Price:
    input_per_million: float
    output_per_million: float


DEFAULT_PRICES = {
    "gpt-4o": Price(2.50, 10.00),
    "gpt-4o-mini": Price(0.15, 0.60),
    "gpt-4.1": Price(2.00, 8.00),
    "gpt-4.1-mini": Price(0.40, 1.60),
    "gpt-4.1-nano": Price(0.10, 0.40),
    "gpt-5": Price(1.25, 10.00),
    "gpt-5-mini": Price(0.25, 2.00),
    "gpt-5-nano": Price(0.05, 0.40),
    "o4-mini": Price(1.10, 4.40),
    "claude-opus-4": Price(15.00, 75.00),
    "claude-opus-4-1": Price(15.00, 75.00),
    "claude-sonnet-4": Price(3.00, 15.00),
    "claude-sonnet-4-5": Price(3.00, 15.00),
    "claude-haiku-4-5": Price(1.00, 5.00),
    "claude-3-5-haiku": Price(0.80, 4.00),
}


def _as_price(model: str, value) -> Price:
    """A table entry from settings: Price, {"input": x, "output": y}, or [x, y]."""
    if isinstance(value, Price):
        return value
    if isinstance(value, dict) and set(value) == {"input", "output"}:
        pair = (value["input"], value["output"])
    elif isinstance(value, (list, tuple)) and len(value) == 2:
        pair = tuple(value)
    else:
        raise ValueError(f"price of {model!r} must be {{input = X, output = Y}} (USD per million tokens), got {value!r}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in pair):
        raise ValueError(f"price of {model!r} must be two non-negative numbers, got {value!r}")
    return Price(float(pair[0]), float(pair[1]))


def price_table(overrides: dict | None = None) -> dict[str, Price]:
    """The default table with `overrides` (model -> price) laid over it."""
    table = dict(DEFAULT_PRICES)
    for model, value in (overrides or {}).items():
        table[model] = _as_price(model, value)
    return table


def _lookup(name: str, table: dict[str, Price]) -> Price | None:
    if name in table:
        return table[name]
    # a dated snapshot: the longest entry the name extends with "-..."
    bases = [key for key in table if name.startswith(key + "-")]
    return table[max(bases, key=len)] if bases else None


def price_for(model: str, prices: dict | None = None) -> Price | None:
    table = price_table(prices)
    found = _lookup(model, table)
    if found is None and "/" in model:  # OpenRouter-style "vendor/model"
        found = _lookup(model.rsplit("/", 1)[1], table)
    return found


def cost_usd(model: str, input_tokens: int, output_tokens: int, prices: dict | None = None) -> float:
    price = price_for(model, prices)
    if price is None:
        return 0.0
    return (input_tokens * price.input_per_million + output_tokens * price.output_per_million) / 1_000_000
