"""Price the common remote models on a fresh install: the LiteLLM table shipped in the litellm wheel
(apps/costs/price_table.py). Only model names without any price are added, as one version; nothing already
in the price book changes. Without the wheel the migration says so and goes on (import prices later with
manage.py load_bundled_prices or import_prices)."""

from django.db import migrations


def load(apps, schema_editor):
    from apps.costs.price_table import PriceTableMissing, bundled_prices_load

    try:
        result = bundled_prices_load(price_model=apps.get_model("costs", "Price"))
    except PriceTableMissing as exc:
        print(f"\n  costs 0010: no remote model prices loaded: {exc}")
        return
    if result.added:
        print(f"\n  costs 0010: {result.added} remote model prices from the {result.source}")


class Migration(migrations.Migration):
    dependencies = [("costs", "0009_endpoint_api_key_encrypted")]
    operations = [migrations.RunPython(load, migrations.RunPython.noop)]
