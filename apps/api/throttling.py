from rest_framework.throttling import SimpleRateThrottle

from apps.accounts.models import ApiKey


class ApiKeyRateThrottle(SimpleRateThrottle):
    """A request rate per API key (session users are not throttled here)."""

    scope = "api_key"

    def get_cache_key(self, request, view):
        if isinstance(request.auth, ApiKey):
            return self.cache_format % {"scope": self.scope, "ident": request.auth.prefix}
        return None
