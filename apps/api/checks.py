"""System check: in production the API-key rate limit must count in a shared cache (Redis).

Without CACHE_URL each web process counts in its own memory, so N processes allow N times the
documented rate; production refuses to start (`manage.py check`, `migrate`, and the web server's
start-up in gunicorn.conf.py run this check).
"""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Error, Tags, register

LOCAL_CACHES = {
    "django.core.cache.backends.locmem.LocMemCache",
    "django.core.cache.backends.dummy.DummyCache",
}


@register(Tags.caches)
def rate_limit_cache_check(app_configs=None, **kwargs) -> list[Error]:
    backend = settings.CACHES.get("default", {}).get("BACKEND", "")
    if getattr(settings, "PRODUCTION", False) and backend in LOCAL_CACHES:
        return [
            Error(
                "PARSIMONY_ENV=production needs a shared cache for the API-key rate limit: set CACHE_URL "
                "(e.g. redis://redis:6379/1).",
                hint=f"The default cache is {backend.rsplit('.', 1)[-1]}, one per process: with several web "
                "processes each key gets several times PARSIMONY_API_KEY_RATE.",
                id="parsimony.E001",
            )
        ]
    return []
