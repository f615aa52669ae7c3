"""One money format: plain decimal strings, 10 places, never an exponent (apps.costs.money_format)."""

from __future__ import annotations

import random
from decimal import Decimal

import pytest

from apps.costs.money_format import MONEY_PATTERN, is_money_str, money_str


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Decimal("0E-10"), "0.0000000000"),
        (Decimal("6.336E-7"), "0.0000006336"),
        (Decimal("0.010764285100000000"), "0.0107642851"),
        (Decimal("1E+3"), "1000.0000000000"),
        (Decimal("-0E-10"), "0.0000000000"),
        (Decimal("-2.5"), "-2.5000000000"),
        (Decimal("0.00000000005"), "0.0000000001"),  # half-up at the 10th place, like pricing.money
        (0, "0.0000000000"),
        (None, None),
    ],
)
def test_it_formats_the_amounts_decimal_prints_badly(value, text):
    assert money_str(value) == text


def test_random_amounts_never_print_an_exponent_and_parse_back_to_the_same_value():
    rng = random.Random(23)
    for _ in range(5000):
        digits = rng.randint(0, 10**rng.randint(1, 18))
        amount = Decimal(digits).scaleb(rng.randint(-10, 6)) * rng.choice((1, -1))
        text = money_str(amount)
        assert "e" not in text.lower(), (amount, text)
        assert is_money_str(text), (amount, text)
        assert Decimal(text) == amount, (amount, text)  # at most 10 places: nothing lost


def test_it_refuses_what_is_not_an_amount():
    with pytest.raises(ValueError):
        money_str(Decimal("NaN"))
    assert MONEY_PATTERN.startswith("^") and not is_money_str("6.336E-7") and not is_money_str("0.01")
