"""REST: the team's model endpoints (OpenAI-compatible) and the price book to price them from.
One view per operation, thin; writes in apps.costs.services.endpoints. The API key is write-only:
no response ever contains it, only ``api_key_hint`` (``sk-...abcd``)."""

from __future__ import annotations

from decimal import Decimal

from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.models import ApiKey
from apps.api.serializers import MoneyField, StrictCharField, StrictIntegerField, list_of
from apps.costs import selectors as cost_selectors
from apps.costs.connection_test import endpoint_test
from apps.costs.services import endpoints as endpoint_services


class PriceOutputSerializer(serializers.Serializer):
    model_name = serializers.CharField()
    provider = serializers.CharField()
    input_per_mtok = MoneyField(help_text="USD per 1M input tokens")
    output_per_mtok = MoneyField(help_text="USD per 1M output tokens")
    cached_input_per_mtok = MoneyField(allow_null=True, help_text="USD per 1M cached input tokens; null: as input")
    per_gpu_second = MoneyField()
    batch_input_per_mtok = MoneyField(allow_null=True, help_text="USD per 1M input tokens through the provider's "
                                                                 "Batch API; null: no batch price known")
    batch_output_per_mtok = MoneyField(allow_null=True, help_text="USD per 1M output tokens through the Batch API")
    effective_from = serializers.DateTimeField()
    source = serializers.CharField()


class EndpointOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField(source="pk")
    name = serializers.CharField()
    scope = serializers.SerializerMethodField(
        help_text="team: the team's own (admins manage it); global: the operator's"
    )
    kind = serializers.CharField(help_text="openai (an OpenAI-compatible URL) or local")
    base_url = serializers.CharField()
    model = serializers.CharField(source="remote_model")
    api_key_hint = serializers.CharField(
        help_text="The stored key's first and last characters; the key is never returned"
    )
    has_api_key = serializers.SerializerMethodField()
    tokenizer = serializers.CharField()
    price_name = serializers.CharField()
    price = serializers.SerializerMethodField()
    context_window = serializers.IntegerField()
    max_output_tokens = serializers.IntegerField()
    enabled = serializers.BooleanField()
    batch_api = serializers.BooleanField(help_text="The provider offers the OpenAI Batch API: bulk jobs may use "
                                                   "mode provider_batch (at the price's batch prices)")
    created_at = serializers.DateTimeField()

    def get_scope(self, endpoint) -> str:
        return "global" if endpoint.team_id is None else "team"

    def get_has_api_key(self, endpoint) -> bool:
        return bool(endpoint.api_key_encrypted or endpoint.api_key_env)

    @extend_schema_field(PriceOutputSerializer(allow_null=True))
    def get_price(self, endpoint) -> dict | None:
        price = cost_selectors.price_in_force(model_name=endpoint.price_name)
        return PriceOutputSerializer(price).data if price is not None else None


class EndpointInputSerializer(serializers.Serializer):
    name = StrictCharField(max_length=120)
    base_url = StrictCharField(max_length=200, help_text="e.g. https://api.openai.com/v1")
    model = StrictCharField(max_length=200, help_text="the model id sent in each request")
    api_key = StrictCharField(
        max_length=500, required=False, allow_blank=True, write_only=True,
        help_text="Stored encrypted, never returned. Omit to keep the stored key; \"\" removes it",
    )
    tokenizer = StrictCharField(max_length=500, required=False, allow_blank=True, default="")
    price_name = StrictCharField(max_length=200, required=False, allow_blank=True, default="",
                                 help_text="a model name of the price book (GET /api/v1/prices)")
    input_per_mtok = serializers.DecimalField(
        max_digits=20, decimal_places=6, min_value=Decimal(0), required=False,
        help_text="an entered price (USD per 1M input tokens) instead of price_name",
    )
    output_per_mtok = serializers.DecimalField(max_digits=20, decimal_places=6, min_value=Decimal(0), required=False)
    cached_input_per_mtok = serializers.DecimalField(max_digits=20, decimal_places=6, min_value=Decimal(0),
                                                     required=False)
    context_window = StrictIntegerField(min_value=256, max_value=10_000_000, default=128_000)
    max_output_tokens = StrictIntegerField(min_value=1, max_value=1_000_000, default=1024)
    enabled = serializers.BooleanField(default=True)
    batch_api = serializers.BooleanField(
        required=False, help_text="The provider offers the OpenAI Batch API (/v1/files, /v1/batches); omit to keep")
    batch_input_per_mtok = serializers.DecimalField(
        max_digits=20, decimal_places=6, min_value=Decimal(0), required=False,
        help_text="with entered prices: the Batch API's price (USD per 1M input tokens)",
    )
    batch_output_per_mtok = serializers.DecimalField(max_digits=20, decimal_places=6, min_value=Decimal(0),
                                                     required=False)


class ConnectionTestSerializer(serializers.Serializer):
    ok = serializers.BooleanField()
    message = serializers.CharField()
    method = serializers.CharField(help_text="models: GET /models (free); completion: a 1-token completion (metered)")
    latency_ms = serializers.IntegerField()
    cost = MoneyField(help_text="what the test cost (in the ledger as pipeline 'endpoint-test')")


def _save(request, values: dict, endpoint=None):
    api_key = values.pop("api_key", None)
    return endpoint_services.endpoint_save(
        team=request.team, endpoint=endpoint, api_key=api_key or None, clear_api_key=api_key == "", **values
    )


class EndpointListView(APIView):
    required_scopes = {"POST": "admin"}

    @extend_schema(responses=list_of(EndpointOutputSerializer, paginated=False),
                   operation_id="api_v1_model_endpoints_list",
                   summary="The model endpoints the team can use: its own and the global ones")
    def get(self, request):
        endpoints = list(cost_selectors.endpoint_list(team=request.team))
        return Response({"count": len(endpoints), "results": EndpointOutputSerializer(endpoints, many=True).data})

    @extend_schema(request=EndpointInputSerializer, responses={201: EndpointOutputSerializer},
                   summary="Add an OpenAI-compatible endpoint (admins); the API key is stored encrypted")
    def post(self, request):
        data = EndpointInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        endpoint = _save(request, dict(data.validated_data))
        return Response(EndpointOutputSerializer(endpoint).data, status=status.HTTP_201_CREATED)


class EndpointDetailView(APIView):
    required_scopes = {"PATCH": "admin", "DELETE": "admin"}

    @extend_schema(responses=EndpointOutputSerializer, summary="One model endpoint")
    def get(self, request, endpoint_id: int):
        endpoint = cost_selectors.endpoint_get(team=request.team, endpoint_id=endpoint_id)
        return Response(EndpointOutputSerializer(endpoint).data)

    @extend_schema(request=EndpointInputSerializer(partial=True), responses=EndpointOutputSerializer,
                   summary="Change a team endpoint (admins); omit api_key to keep the stored one")
    def patch(self, request, endpoint_id: int):
        endpoint = cost_selectors.endpoint_get(team=request.team, endpoint_id=endpoint_id, own=True)
        data = EndpointInputSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        given = dict(data.validated_data)
        entered = any(name in given for name in ("input_per_mtok", "output_per_mtok", "cached_input_per_mtok",
                                                 "batch_input_per_mtok", "batch_output_per_mtok"))
        values = {
            "name": endpoint.name, "base_url": endpoint.base_url, "model": endpoint.remote_model,
            "tokenizer": endpoint.tokenizer, "context_window": endpoint.context_window,
            "max_output_tokens": endpoint.max_output_tokens, "enabled": endpoint.enabled,
            "price_name": "" if entered else endpoint.price_name, **given,
        }
        return Response(EndpointOutputSerializer(_save(request, values, endpoint)).data)

    @extend_schema(responses={204: None},
                   summary="Delete a team endpoint (admins); 409 while pipelines or agents use it")
    def delete(self, request, endpoint_id: int):
        endpoint = cost_selectors.endpoint_get(team=request.team, endpoint_id=endpoint_id, own=True)
        endpoint_services.endpoint_delete(endpoint=endpoint, team=request.team)
        return Response(status=status.HTTP_204_NO_CONTENT)


class EndpointTestView(APIView):
    required_scopes = {"POST": "admin"}

    @extend_schema(request=None, responses=ConnectionTestSerializer,
                   summary="Test the connection (admins): GET /models, else a 1-token completion (metered)")
    def post(self, request, endpoint_id: int):
        endpoint = cost_selectors.endpoint_get(team=request.team, endpoint_id=endpoint_id)
        result = endpoint_test(
            endpoint=endpoint, team=request.team, user=request.user if request.user.is_authenticated else None,
            api_key=request.auth if isinstance(request.auth, ApiKey) else None,
        )
        return Response(result.as_dict())


class PriceListView(APIView):
    @extend_schema(
        parameters=[OpenApiParameter("search", str, description="part of a model name, e.g. gpt-4o, claude"),
                    OpenApiParameter("limit", int, description="at most this many (default 20, at most 100)")],
        responses=list_of(PriceOutputSerializer, paginated=False),
        summary="The price book's prices in force, by model name (to price an endpoint)",
    )
    def get(self, request):
        try:
            limit = max(1, min(100, int(request.query_params.get("limit", 20))))
        except ValueError:
            limit = 20
        prices = cost_selectors.price_book_search(
            team=request.team, query=request.query_params.get("search", "")[:100], limit=limit
        )
        return Response({"count": len(prices), "results": PriceOutputSerializer(prices, many=True).data})
