"""Demo seeders run by ``manage.py bootstrap_demo``: each takes (team, user, stdout) and is idempotent."""

from __future__ import annotations

from collections.abc import Callable

SEEDERS: list[Callable] = []
