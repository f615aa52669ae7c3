"""Numbers as people read them, shared by the pages and the admin (money: apps.costs.money_format.usd)."""

from __future__ import annotations


def seconds(milliseconds: float | int | str | None) -> str:
    """A duration in ms as seconds: "62.9 s", under a second "0.84 s", "<0.01 s", "0 s"; "—" for none."""
    if milliseconds in (None, ""):
        return "—"
    try:
        ms = float(milliseconds)
    except (TypeError, ValueError):
        return str(milliseconds)
    if ms <= 0:
        return "0 s"
    if ms < 10:
        return "<0.01 s"
    if ms < 1000:
        return f"{ms / 1000:.2f} s"
    return f"{ms / 1000:,.1f} s"
