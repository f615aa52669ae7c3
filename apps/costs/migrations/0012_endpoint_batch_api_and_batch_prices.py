"""A model endpoint's Batch API flag and the price book's batch prices (apps/bulk/provider_batch.py); the
bundled LiteLLM table's batch prices filled in on the rows it loaded before (costs 0010)."""

from django.db import migrations, models


def fill_batch_prices(apps, schema_editor):
    """The bundled table's batch prices on the rows it loaded before (costs 0010): new columns, same source."""
    from apps.costs.price_table import PriceTableMissing, bundled_batch_prices_fill

    try:
        bundled_batch_prices_fill(price_model=apps.get_model("costs", "Price"))
    except PriceTableMissing as exc:
        print(f"\n  costs 0012: no batch prices filled: {exc}")



class Migration(migrations.Migration):

    dependencies = [
        ('costs', '0011_degradationpolicy'),
    ]

    operations = [
        migrations.AddField(
            model_name='modelendpoint',
            name='batch_api',
            field=models.BooleanField(default=False, help_text='openai: the provider offers the Batch API (bulk jobs may run there at batch prices)'),
        ),
        migrations.AddField(
            model_name='price',
            name='batch_input_per_mtok',
            field=models.DecimalField(blank=True, decimal_places=10, help_text="USD per 1M input tokens through the provider's Batch API", max_digits=24, null=True),
        ),
        migrations.AddField(
            model_name='price',
            name='batch_output_per_mtok',
            field=models.DecimalField(blank=True, decimal_places=10, help_text="USD per 1M output tokens through the provider's Batch API", max_digits=24, null=True),
        ),
        migrations.RunPython(fill_batch_prices, migrations.RunPython.noop),
    ]
