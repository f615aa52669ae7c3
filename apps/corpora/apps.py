from django.apps import AppConfig


class CorporaConfig(AppConfig):
    name = "apps.corpora"
    label = "corpora"
    verbose_name = "Corpora: documents, chunks and their indexes"
    default_auto_field = "django.db.models.BigAutoField"
