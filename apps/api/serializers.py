from drf_spectacular.utils import extend_schema_field, inline_serializer
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


class RetrieverRankSerializer(serializers.Serializer):
    """Where one retriever placed a passage: the one shape of ``retrievers`` in search hits and citations."""

    rank = serializers.IntegerField(help_text="1 = this retriever's best match")
    score = serializers.FloatField(help_text="The retriever's own score (cosine for dense, BM25 for bm25)")


RETRIEVERS_FIELD = serializers.DictField(
    child=RetrieverRankSerializer(),
    help_text='Per retriever that found the passage: {"dense": {"rank": 1, "score": 0.83}, "bm25": {...}}',
)


class CitationSerializer(serializers.Serializer):
    """One retrieved passage of a query, numbered as the prompt numbered it (the answer's ``[n]``)."""

    n = serializers.IntegerField()
    chunk_id = serializers.IntegerField()
    document_id = serializers.IntegerField()
    document_title = serializers.CharField()
    start = serializers.IntegerField()
    end = serializers.IntegerField()
    snippet = serializers.CharField()
    score = serializers.FloatField()
    retrievers = serializers.DictField(child=RetrieverRankSerializer())
    cited = serializers.BooleanField(help_text="The answer mentions [n]")


@extend_schema_field(CitationSerializer(many=True))
class CitationsField(serializers.JSONField):
    """A run's citations as stored (documented by CitationSerializer; passed through unchanged)."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("read_only", True)
        super().__init__(**kwargs)


class JobOutputSerializer(serializers.ModelSerializer):
    progress_percent = serializers.IntegerField(read_only=True)

    class Meta:
        model = Job
        fields = [
            "id", "kind", "status", "progress_done", "progress_total", "progress_percent", "message",
            "error", "result", "attempts", "created_at", "started_at", "finished_at",
        ]


def list_of(serializer_class: type[serializers.BaseSerializer], *, paginated: bool = True) -> serializers.Serializer:
    """The OpenAPI schema of a list response as the views send it: ``{"count", "results"}``, plus ``next`` and
    ``previous`` when it is one limit/offset page (``shortcuts.paginated_response``)."""
    fields: dict = {"count": serializers.IntegerField(), "results": serializer_class(many=True)}
    if paginated:
        fields["next"] = serializers.URLField(allow_null=True)
        fields["previous"] = serializers.URLField(allow_null=True)
    name = serializer_class.__name__.removesuffix("Serializer")
    return inline_serializer(name=f"{'Paginated' if paginated else ''}{name}List", fields=fields)


# --------------------------------------------------------------------------- strict input fields
# DRF's fields coerce: 5 becomes the string "5", "5" the integer 5, true the string "True". A JSON body
# is typed, and the schema says which type each field has: these take that type only (400 otherwise).


def _strict_string(field: serializers.CharField, data) -> None:
    if not isinstance(data, str):
        field.fail("invalid")
    # The schema's maxLength counts what was sent, before DRF trims surrounding whitespace.
    if field.max_length is not None and len(data) > field.max_length:
        field.fail("max_length", max_length=field.max_length)


class StrictCharField(serializers.CharField):
    """A string, and only a string."""

    def to_internal_value(self, data):
        _strict_string(self, data)
        return super().to_internal_value(data)


class StrictSlugField(serializers.SlugField):
    def to_internal_value(self, data):
        _strict_string(self, data)
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    """A JSON integer (not a numeric string, not a boolean)."""

    def to_internal_value(self, data):
        if isinstance(data, (str, bool)):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictFloatField(serializers.FloatField):
    """A JSON number (not a numeric string, not a boolean)."""

    def to_internal_value(self, data):
        if isinstance(data, (str, bool)):
            self.fail("invalid")
        return super().to_internal_value(data)
