"""Model endpoints keep their API key encrypted at rest (apps/core/secrets.py).

Until now an endpoint named an environment variable (``api_key_env``). A value there that cannot be an
environment variable's name (``sk-...``: a key pasted into the wrong field) is a plaintext secret in the
database: it is moved, encrypted, into ``api_key_encrypted`` and the plain column is cleared.
"""

import re

from django.db import migrations, models

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def encrypt_plaintext_keys(apps, schema_editor):
    from apps.core.secrets import secret_encrypt, secret_hint

    ModelEndpoint = apps.get_model("costs", "ModelEndpoint")
    for endpoint in ModelEndpoint.objects.exclude(api_key_env=""):
        value = endpoint.api_key_env.strip()
        if ENV_NAME.match(value):
            continue
        endpoint.api_key_encrypted = secret_encrypt(value)
        endpoint.api_key_hint = secret_hint(value)
        endpoint.api_key_env = ""
        endpoint.save(update_fields=["api_key_encrypted", "api_key_hint", "api_key_env"])


class Migration(migrations.Migration):
    dependencies = [("costs", "0008_workerprofile_calibrated_at")]

    operations = [
        migrations.AddField(
            model_name="modelendpoint",
            name="api_key_encrypted",
            field=models.TextField(blank=True, editable=False),
        ),
        migrations.AddField(
            model_name="modelendpoint",
            name="api_key_hint",
            field=models.CharField(blank=True, editable=False, help_text="e.g. sk-...abcd", max_length=16),
        ),
        migrations.RunPython(encrypt_plaintext_keys, migrations.RunPython.noop),
    ]
