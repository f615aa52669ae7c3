from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("costs", "0004_worker_profiles"),
    ]

    operations = [
        migrations.AddField(
            model_name="budgetwindow",
            name="opening_spent",
            field=models.DecimalField(decimal_places=10, default=0, max_digits=24),
        ),
    ]
