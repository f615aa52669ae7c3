"""Seed the default local model endpoint and local compute prices (see apps/costs/defaults.py)."""

from django.db import migrations

from apps.costs.defaults import ensure_default_models


def seed(apps, schema_editor):
    ensure_default_models(endpoint_model=apps.get_model("costs", "ModelEndpoint"), price_model=apps.get_model("costs", "Price"))


class Migration(migrations.Migration):
    dependencies = [("costs", "0001_initial")]
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
