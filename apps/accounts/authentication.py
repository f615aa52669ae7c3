"""DRF authentication by ``Authorization: Bearer <key>``."""

from __future__ import annotations

from rest_framework import authentication, exceptions

from apps.accounts.services import api_key_authenticate


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        parts = header.split()
        if len(parts) != 2 or parts[0].lower() != self.keyword.lower():
            raise exceptions.AuthenticationFailed("use 'Authorization: Bearer <api key>'")
        api_key = api_key_authenticate(raw_key=parts[1])
        if api_key is None:
            raise exceptions.AuthenticationFailed("invalid, revoked or expired API key")
        # The key acts for its team; the user it was created by is kept for the ledger.
        request.team = api_key.team
        request.api_key = api_key
        user = api_key.created_by
        if user is None:
            from django.contrib.auth.models import AnonymousUser

            user = AnonymousUser()
        return (user, api_key)

    def authenticate_header(self, request) -> str:
        return self.keyword
