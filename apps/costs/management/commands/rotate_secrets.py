"""Re-encrypt every stored secret (model endpoints' API keys) under the current PARSIMONY_SECRETS_KEY."""

from __future__ import annotations

from django.core.management.base import BaseCommand
from django.db import transaction

from apps.core.secrets import secret_rotate
from apps.costs.models import ModelEndpoint


class Command(BaseCommand):
    help = (
        "After changing PARSIMONY_SECRETS_KEY (the old value in PARSIMONY_SECRETS_KEY_PREVIOUS): re-encrypt "
        "every stored API key under the new key; then the old one can be dropped."
    )

    @transaction.atomic
    def handle(self, *args, **options) -> None:
        rotated = 0
        for endpoint in ModelEndpoint.objects.select_for_update().exclude(api_key_encrypted=""):
            endpoint.api_key_encrypted = secret_rotate(
                endpoint.api_key_encrypted, what=f"the API key of model endpoint {endpoint.name!r}"
            )
            endpoint.save(update_fields=["api_key_encrypted"])
            rotated += 1
        self.stdout.write(self.style.SUCCESS(f"{rotated} secret(s) re-encrypted under the current key"))
