"""Cost of tokens by model name: defaults, snapshots, vendor prefixes, overrides, unknown models."""
from __future__ import annotations

import pytest

from autoresearch.agents.pricing import DEFAULT_PRICES, Price, cost_usd, price_for, price_table


def test_cost_of_a_known_model():
    price = DEFAULT_PRICES["gpt-4o"]
    expected = price.input_per_million * 0.5 + price.output_per_million * 0.25
    assert cost_usd("gpt-4o", 500_000, 250_000) == pytest.approx(expected)


def test_a_dated_snapshot_uses_its_longest_base_entry():
    assert price_for("gpt-4o-2024-08-06") == DEFAULT_PRICES["gpt-4o"]
    assert price_for("gpt-4o-mini-2024-07-18") == DEFAULT_PRICES["gpt-4o-mini"]
    assert price_for("claude-sonnet-4-20250514") == DEFAULT_PRICES["claude-sonnet-4"]


def test_a_name_only_sharing_letters_is_not_matched():
    assert price_for("gpt-4omega") is None


def test_a_vendor_prefix_is_ignored_when_the_full_name_is_unknown():
    assert price_for("openai/gpt-4.1-mini") == DEFAULT_PRICES["gpt-4.1-mini"]


def test_an_unknown_model_costs_nothing():
    assert price_for("smollm2-135m") is None
    assert cost_usd("smollm2-135m", 10_000, 5_000) == 0.0


def test_overrides_win_and_add_models_in_either_form():
    prices = {"gpt-4o": {"input": 1.0, "output": 2.0}, "my-local": [0.5, 0.5]}
    assert price_for("gpt-4o", prices) == Price(1.0, 2.0)
    assert cost_usd("my-local", 2_000_000, 2_000_000, prices) == pytest.approx(2.0)
    assert price_table(prices)["gpt-4o-mini"] == DEFAULT_PRICES["gpt-4o-mini"]  # others untouched
    assert price_for("gpt-4o") == DEFAULT_PRICES["gpt-4o"]  # the defaults themselves unchanged


@pytest.mark.parametrize("bad", [{"input": 1.0}, [1.0], {"input": -1, "output": 2}, "cheap", [True, 1]])
def test_a_malformed_override_is_refused(bad):
    with pytest.raises(ValueError, match="price of"):
        price_table({"m": bad})
