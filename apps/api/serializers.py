from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from apps.core.models import Job
from apps.costs.money_format import MONEY_EXAMPLE, MONEY_PATTERN, money_str

MONEY_SCHEMA = {
    "type": "string",
    "format": "decimal",
    "pattern": MONEY_PATTERN,
    "example": MONEY_EXAMPLE,
    "description": "USD as a plain decimal string, 10 decimal places, never an exponent",
}


@extend_schema_field(MONEY_SCHEMA)
class MoneyField(serializers.DecimalField):
    """A read-only USD amount in the one money format (``apps.costs.money_format.money_str``)."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("read_only", True)
        super().__init__(max_digits=24, decimal_places=10, **kwargs)

    def to_representation(self, value) -> str | None:
        return money_str(value)


class JobOutputSerializer(serializers.ModelSerializer):
    progress_percent = serializers.IntegerField(read_only=True)

    class Meta:
        model = Job
        fields = [
            "id", "kind", "status", "progress_done", "progress_total", "progress_percent", "message",
            "error", "result", "attempts", "created_at", "started_at", "finished_at",
        ]
