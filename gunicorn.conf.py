"""gunicorn's settings for the production web server (read from the working directory at start).

Threaded workers (gthread): a server-sent-event stream or a synchronous query's wait holds a thread,
not a whole worker process (benchmarks/server_streams.py, docs/reliability.md "Serving"). The command
line may override any of these; at start the worker timeout is checked against the synchronous query
wait (PARSIMONY_SYNC_QUERY_TIMEOUT_S), so that a waiting request gets its documented 202, not a kill.
"""

from __future__ import annotations

import importlib
import os

worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY", "3"))
threads = int(os.environ.get("GUNICORN_THREADS", "32"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "180"))
# The margin a synchronous query's answer (or its 202) needs after the wait ends.
TIMEOUT_MARGIN_S = 30


def sync_query_wait_s() -> float:
    """The synchronous query wait the settings resolve (environment or default)."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "apps.config.settings")
    settings = importlib.import_module(os.environ["DJANGO_SETTINGS_MODULE"])
    return float(settings.PARSIMONY_SYNC_QUERY_TIMEOUT_S)


def timeout_error(timeout_s: float, wait_s: float) -> str | None:
    """Why this worker timeout is too short for the synchronous query wait, or None."""
    if timeout_s and timeout_s < wait_s + TIMEOUT_MARGIN_S:
        return (
            f"gunicorn --timeout {timeout_s:g} must be at least PARSIMONY_SYNC_QUERY_TIMEOUT_S ({wait_s:g}) "
            f"+ {TIMEOUT_MARGIN_S} s: a synchronous query would be killed instead of answering 504/202"
        )
    return None


def on_starting(server) -> None:
    """Refuse to start with a worker timeout under the synchronous query wait, or on a failed Django
    system check (e.g. production without a shared rate-limit cache, apps/api/checks.py)."""
    error = timeout_error(server.cfg.timeout, sync_query_wait_s())
    if error:
        raise SystemExit(error)
    import django
    from django.core.management import call_command
    from django.core.management.base import SystemCheckError

    django.setup()
    try:
        call_command("check")
    except SystemCheckError as exc:
        raise SystemExit(str(exc)) from None
