from django.apps import AppConfig


class AgentsConfig(AppConfig):
    name = "apps.agents"
    label = "agents"
    verbose_name = "Agents and tools"
    default_auto_field = "django.db.models.BigAutoField"
