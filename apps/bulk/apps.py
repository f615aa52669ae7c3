from django.apps import AppConfig


class BulkConfig(AppConfig):
    name = "apps.bulk"
    label = "bulk"
    verbose_name = "Bulk question jobs"
