"""The one text form of money: a plain decimal string with exactly 10 decimal places, never an exponent.

``Decimal`` prints exponents (``0E-10``, ``6.336E-7``) and keeps whatever scale arithmetic left
(``0.010764285100000000``); clients then parse three shapes of one number. Every place money
leaves the service as text (REST and OpenAI-compatible JSON, the CSV export, ``X-Parsimony-*``
headers, 402 details) goes through ``money_str``: fixed point, 10 decimal places (the ledger's
precision, ``apps.costs.models.MONEY``), rounded half-up, ``-`` only for negative amounts.
The UI shows dollars for people instead: ``usd`` below (the ``usd`` template filter, the admin's
columns, the models' labels).
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal, localcontext

PLACES = 10
QUANTUM = Decimal(1).scaleb(-PLACES)  # 0.0000000001
# What the OpenAPI schema documents for every money field.
MONEY_PATTERN = r"^-?\d+\.\d{10}$"
MONEY_EXAMPLE = "0.0000006336"
_MONEY_RE = re.compile(MONEY_PATTERN)


def money_str(value: Decimal | int | str | None) -> str | None:
    """``Decimal("6.336E-7")`` -> ``"0.0000006336"``; ``Decimal("0E-10")`` -> ``"0.0000000000"``; None stays None."""
    if value is None:
        return None
    amount = value if isinstance(value, Decimal) else Decimal(str(value))
    if not amount.is_finite():
        raise ValueError(f"money must be a finite amount, not {amount}")
    with localcontext() as context:
        context.prec = 60  # quantize needs room for every integer digit plus the 10 places
        text = format(amount.quantize(QUANTUM, rounding=ROUND_HALF_UP), "f")
    return "0." + "0" * PLACES if text == "-0." + "0" * PLACES else text


def is_money_str(text: str) -> bool:
    return bool(_MONEY_RE.match(text))


def usd(value: Decimal | int | float | str | None) -> str:
    """$ amounts readable at every scale, for people: cents for dollars, more digits for the fractions of
    a cent (``$1.00``, ``$0.0123``, ``$0.000063``, ``<$0.000001``); ``—`` for none."""
    if value in (None, ""):
        return "—"
    try:
        amount = Decimal(str(value))
    except ArithmeticError:
        return str(value)
    if not amount.is_finite():
        return str(value)
    if amount == 0:
        return "$0"
    size = abs(amount)
    if size >= 1:
        places = Decimal("0.01")
    elif size >= Decimal("0.01"):
        places = Decimal("0.0001")
    elif size >= Decimal("0.000001"):
        places = Decimal("0.000001")
    else:
        return "<$0.000001" if amount > 0 else "−<$0.000001"
    shown = amount.quantize(places)
    return f"−${-shown:,}" if shown < 0 else f"${shown:,}"
