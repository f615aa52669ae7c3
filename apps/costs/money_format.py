"""The one text form of money: a plain decimal string with exactly 10 decimal places, never an exponent.

``Decimal`` prints exponents (``0E-10``, ``6.336E-7``) and keeps whatever scale arithmetic left
(``0.010764285100000000``); clients then parse three shapes of one number. Every place money
leaves the service as text (REST and OpenAI-compatible JSON, the CSV export, ``X-Parsimony-*``
headers, 402 details) goes through ``money_str``: fixed point, 10 decimal places (the ledger's
precision, ``apps.costs.models.MONEY``), rounded half-up, ``-`` only for negative amounts.
The UI shows dollars for people instead (the ``usd`` template filter, ``apps.web.templatetags``).
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
