"""Team-managed model endpoints: OpenAI-compatible URLs a team's owners and admins add, edit, delete and
test, with the API key encrypted at rest (apps/core/secrets.py) and a price from the price book or
entered.

An entered price goes into the price book under the team's own name for the endpoint
(``team-<id>/<endpoint name>``), so one team's price never changes another's; like every price it is
versioned (``price_set``: a change is a new row from now on, rows already charged stay as they were).
Global endpoints (``team=None``, the admin's) are read-only here.
"""

from __future__ import annotations

from decimal import Decimal

from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import URLValidator
from django.db import transaction
from django.utils import timezone

from apps.core.errors import ServiceError, ValidationFailed
from apps.core.network import ENDPOINTS, url_refusal
from apps.core.secrets import secret_encrypt, secret_hint
from apps.costs.models import EndpointKind, ModelEndpoint, Price
from apps.costs.services.prices import price_set

TEST_STAGE_PIPELINE = "endpoint-test"
TEST_PROMPT = [{"role": "user", "content": "Reply with OK."}]


class EndpointInUse(ServiceError):
    code = "endpoint_in_use"
    http_status = 409


def team_price_name(*, team, name: str) -> str:
    """The price book's name for an endpoint price a team entered itself."""
    return f"team-{team.pk}/{name}"


def _price_name_allowed(*, team, price_name: str) -> bool:
    return not price_name.startswith("team-") or price_name.startswith(f"team-{team.pk}/")


def _fail(field: str, message: str, code: str = "validation_failed") -> ValidationFailed:
    return ValidationFailed(message, detail={"fields": {field: message}}, code=code)


def _check_values(*, team, endpoint: ModelEndpoint | None, name: str, base_url: str, model: str,
                  context_window: int, max_output_tokens: int) -> None:
    if not name or len(name) > 120:
        raise _fail("name", "give the endpoint a name of 1 to 120 characters")
    clash = ModelEndpoint.objects.filter(team=team, name=name)
    if endpoint is not None:
        clash = clash.exclude(pk=endpoint.pk)
    if clash.exists():
        raise _fail("name", f"the team already has an endpoint called {name!r}", code="duplicate")
    try:
        URLValidator(schemes=["http", "https"])(base_url)
    except DjangoValidationError as exc:
        raise _fail("base_url", "the base URL must be an http(s) URL, e.g. https://api.openai.com/v1") from exc
    refusal = url_refusal(url=base_url, setting=ENDPOINTS)
    if refusal is not None:
        raise _fail("base_url", f"the base URL is not allowed: {refusal}", code="address_not_allowed")
    if not model or len(model) > 200:
        raise _fail("model", "name the model to send (1 to 200 characters), e.g. gpt-4o-mini")
    if not 1 <= max_output_tokens <= context_window:
        raise _fail("max_output_tokens", "the output cap must be at least 1 and at most the context window")


def _check_tokenizer(tokenizer: str) -> None:
    """A named tokenizer must load from this server's files (how reservations count the prompts)."""
    if not tokenizer:
        return
    try:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(tokenizer, local_files_only=True)
    except Exception as exc:  # any failure to load means it cannot count prompts
        raise _fail(
            "tokenizer",
            f"the tokenizer {tokenizer!r} is not available on this server (local files only); leave it blank "
            "to count with tiktoken (OpenAI models) or the byte bound",
        ) from exc


def _resolve_price(*, team, name: str, price_name: str, input_per_mtok: Decimal | None,
                   output_per_mtok: Decimal | None, cached_input_per_mtok: Decimal | None,
                   batch_input_per_mtok: Decimal | None = None, batch_output_per_mtok: Decimal | None = None) -> str:
    entered = input_per_mtok is not None or output_per_mtok is not None
    batch = (batch_input_per_mtok, batch_output_per_mtok)
    if any(v is not None for v in batch) and not entered:
        raise _fail("batch_input_per_mtok", "enter the batch prices with the input and output prices (or choose a "
                                            "price of the price book that has them)")
    if any(v is not None for v in batch) and None in batch:
        raise _fail("batch_input_per_mtok", "enter both batch prices (input and output), or neither")
    if entered:
        if input_per_mtok is None or output_per_mtok is None:
            raise _fail("input_per_mtok", "enter both the input and the output price (USD per 1M tokens)")
        values = [v for v in (input_per_mtok, output_per_mtok, cached_input_per_mtok, *batch) if v is not None]
        if any(v < 0 for v in values):
            raise _fail("input_per_mtok", "prices cannot be negative")
        own = team_price_name(team=team, name=name)
        price_set(model_name=own, input_per_mtok=input_per_mtok, output_per_mtok=output_per_mtok,
                  cached_input_per_mtok=cached_input_per_mtok, batch_input_per_mtok=batch_input_per_mtok,
                  batch_output_per_mtok=batch_output_per_mtok, provider="team", source="entered by the team")
        return own
    if not price_name:
        raise _fail("price_name", "choose a price from the price book, or enter the input and output prices")
    in_book = Price.objects.filter(model_name=price_name, effective_from__lte=timezone.now()).exists()
    if not in_book or not _price_name_allowed(team=team, price_name=price_name):
        raise _fail("price_name", f"the price book has no price called {price_name!r}", code="price_missing")
    return price_name


@transaction.atomic
def endpoint_save(
    *,
    team,
    name: str,
    base_url: str,
    model: str,
    api_key: str | None = None,
    clear_api_key: bool = False,
    tokenizer: str = "",
    price_name: str = "",
    input_per_mtok: Decimal | None = None,
    output_per_mtok: Decimal | None = None,
    cached_input_per_mtok: Decimal | None = None,
    batch_input_per_mtok: Decimal | None = None,
    batch_output_per_mtok: Decimal | None = None,
    context_window: int = 128_000,
    max_output_tokens: int = 1024,
    enabled: bool = True,
    endpoint: ModelEndpoint | None = None,
    batch_api: bool | None = None,
) -> ModelEndpoint:
    """Create (``endpoint=None``) or change a team's OpenAI-compatible endpoint.

    ``api_key``: a new key (encrypted before it is stored); None keeps the stored one; ``clear_api_key``
    removes it. The price: ``price_name`` from the price book, or the entered ``*_per_mtok`` prices.
    ``batch_api``: the provider offers the OpenAI Batch API (bulk jobs may run there); None keeps it. The
    ``batch_*_per_mtok`` prices go with entered prices (the Batch API's, both or neither).
    """
    if endpoint is not None and endpoint.team_id != team.pk:
        raise ValidationFailed("only the team's own endpoints can be changed here", code="permission_denied")
    name, base_url, model, tokenizer = name.strip(), base_url.strip(), model.strip(), tokenizer.strip()
    _check_values(team=team, endpoint=endpoint, name=name, base_url=base_url, model=model,
                  context_window=context_window, max_output_tokens=max_output_tokens)
    _check_tokenizer(tokenizer)
    resolved_price = _resolve_price(
        team=team, name=name, price_name=price_name.strip(), input_per_mtok=input_per_mtok,
        output_per_mtok=output_per_mtok, cached_input_per_mtok=cached_input_per_mtok,
        batch_input_per_mtok=batch_input_per_mtok, batch_output_per_mtok=batch_output_per_mtok,
    )
    endpoint = endpoint or ModelEndpoint(team=team, kind=EndpointKind.OPENAI)
    endpoint.name, endpoint.base_url, endpoint.remote_model = name, base_url, model
    endpoint.tokenizer, endpoint.price_name = tokenizer, resolved_price
    endpoint.context_window, endpoint.max_output_tokens, endpoint.enabled = context_window, max_output_tokens, enabled
    if batch_api is not None:
        endpoint.batch_api = bool(batch_api)
    if api_key is not None and api_key.strip():
        endpoint.api_key_encrypted = secret_encrypt(api_key.strip())
        endpoint.api_key_hint = secret_hint(api_key)
        endpoint.api_key_env = ""
    elif clear_api_key:
        endpoint.api_key_encrypted = endpoint.api_key_hint = endpoint.api_key_env = ""
    endpoint.save()
    return endpoint


def endpoint_delete(*, endpoint: ModelEndpoint, team) -> None:
    """Delete a team's endpoint; refused (409) while pipelines or agents use it."""
    if endpoint.team_id != team.pk:
        raise ValidationFailed("only the team's own endpoints can be deleted here", code="permission_denied")
    users = [f"pipeline {n}" for n in endpoint.pipelines.values_list("name", flat=True)]
    users += [f"agent {n}" for n in endpoint.agents.values_list("name", flat=True)]
    if users:
        raise EndpointInUse(
            f"endpoint {endpoint.name!r} is used by {', '.join(users)}: point them at another model first",
            detail={"used_by": users},
        )
    endpoint.delete()
