"""The default local models and their prices, so a fresh install can answer and bill right away.

Local compute is priced per device-second: $4.00 per GPU-hour (an H100-class rental) and
$0.08 per CPU-hour (a 2-vCPU VM). Change them in the admin: a change is a new Price row.
"""

from datetime import datetime, timezone
from decimal import Decimal

from django.db import migrations

EFFECTIVE = datetime(2026, 1, 1, tzinfo=timezone.utc)
GPU_PER_SECOND = Decimal("4.00") / 3600
CPU_PER_SECOND = Decimal("0.08") / 3600

LOCAL_PRICES = ["local/smollm2-135m-instruct", "local/all-minilm-l6-v2", "local/gemma-3-270m"]


def seed(apps, schema_editor):
    ModelEndpoint = apps.get_model("costs", "ModelEndpoint")
    Price = apps.get_model("costs", "Price")
    for name in LOCAL_PRICES:
        Price.objects.get_or_create(
            model_name=name,
            effective_from=EFFECTIVE,
            defaults={
                "per_gpu_second": GPU_PER_SECOND.quantize(Decimal("0.0000000001")),
                "per_cpu_second": CPU_PER_SECOND.quantize(Decimal("0.0000000001")),
                "provider": "local",
                "source": "parsimony default for local compute",
            },
        )
    ModelEndpoint.objects.get_or_create(
        team=None,
        name="smollm2-135m-instruct",
        defaults={
            "kind": "local",
            "source": "smollm2-135m-instruct",
            "price_name": "local/smollm2-135m-instruct",
            "context_window": 8192,
            "max_output_tokens": 256,
        },
    )


class Migration(migrations.Migration):
    dependencies = [("costs", "0001_initial")]
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
