"""Which write path runs: PostgreSQL's one-statement hot path, or the ORM under a process lock on SQLite.

SQLite has no row locks, so budget and ledger writes of the (single) embedded process are
serialised by one re-entrant lock; on PostgreSQL the statements in ``apps.costs.postgres_hot_path``
lock the rows they touch instead.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connection

from apps.core.errors import ServiceError

# SQLite has no row locks: serialise budget writes within the (single) embedded process.
_sqlite_budget_lock = threading.RLock()


class TryAgain(ServiceError):
    """Rows a statement depends on kept changing under it (practically never): the request may be retried."""

    code = "try_again"
    http_status = 503


def on_postgresql() -> bool:
    return connection.vendor == "postgresql"


@contextmanager
def budget_lock() -> Iterator[None]:
    """Held around budget and ledger writes on SQLite; a no-op elsewhere."""
    if connection.vendor == "sqlite":
        with _sqlite_budget_lock:
            yield
    else:
        yield
