"""Date and time tools: the current time in a time zone, the days between two dates, adding days."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo((name or "UTC").strip())
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r} (use an IANA name such as 'Europe/Paris')") from exc


def _date(text: str) -> date:
    try:
        return date.fromisoformat(str(text).strip()[:10])
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a date in the form YYYY-MM-DD") from exc


def current_datetime(timezone: str = "UTC") -> str:
    """Get the current date and time in a time zone.

    :param timezone: An IANA time zone name such as "UTC", "Europe/Berlin" or "America/New_York".
    :return: The current date and time in ISO 8601 format, with the weekday.
    """
    now = datetime.now(_zone(timezone))
    return f"{now.isoformat(timespec='seconds')} ({now.strftime('%A')})"


def date_difference(start_date: str, end_date: str) -> int:
    """Count the days between two dates.

    :param start_date: The first date, as YYYY-MM-DD.
    :param end_date: The second date, as YYYY-MM-DD.
    :return: The number of days from start_date to end_date (negative if end_date is earlier).
    """
    return (_date(end_date) - _date(start_date)).days


def add_days(start_date: str, days: int) -> str:
    """Add a number of days to a date (subtract with a negative number).

    :param start_date: The date, as YYYY-MM-DD.
    :param days: How many days to add.
    :return: The resulting date as YYYY-MM-DD, with the weekday.
    """
    if isinstance(days, float) and float(days).is_integer():
        days = int(days)
    if not isinstance(days, int) or isinstance(days, bool) or abs(days) > 3_650_000:
        raise ValueError("days must be a whole number of at most 3,650,000")
    result = _date(start_date) + timedelta(days=days)
    return f"{result.isoformat()} ({result.strftime('%A')})"


DATETIME_TOOLS: list[Callable[..., Any]] = [current_datetime, date_difference, add_days]
