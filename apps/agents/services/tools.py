"""The tool library: validate, create, change and delete tools; the http allow-list; built-in packs.

Every change re-indexes that tool (``apps.agents.indexing.tool_index_sync``), so the library
search never offers a tool as it was before the change. Embedding a team's tool is a cost path
(``tool_index``): the change reserves the bound of the tool's texts before anything is saved
(402: nothing changes), the embedding is billed under that hold, and it is settled. The global
library (team None) is the operator's and is not billed.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, transaction

from apps.agents import indexing
from apps.agents.models import HttpAllowedHost, Tool, ToolKind, tool_name_validator
from apps.agents.selectors import http_allowed_hosts
from apps.core.errors import ValidationFailed
from apps.costs.defaults import LOCAL_EMBEDDING_PRICE_NAME
from apps.costs.models import ZERO
from apps.costs.services import BudgetExceeded

logger = logging.getLogger(__name__)

# Tool calls are billed per second of wall time at this price, when the price book has it
# (load_builtin_tools adds it at the local CPU price); otherwise they are metered at zero.
TOOL_PRICE_NAME = "local/agent-tools"
RETRIEVAL_MAX_K = 20
RETRIEVERS = ("dense", "bm25", "hybrid")
TOOL_FIELDS = ("name", "description", "parameters", "kind", "config", "examples", "enabled")


def tools_index_bound(tools: list[tuple[str, str, list[str] | tuple[str, ...]]]) -> Decimal:
    """The most embedding these tools' texts can cost, as the index embeds them
    (``indexes.tool_index.tool_vectors``): one call for every ``name: description``, one for every
    example, their tokens counted exactly with the tool embedder's tokenizer and padded per batch.
    Texts the embedder's cache already holds cost nothing, so this bounds what is billed. Measured
    on this process's own embedder (it embeds them: ``embedding.embedder_for``).
    """
    from apps.corpora.services.embedding import calls_bound, texts_calls
    from indexes.tool_index import tool_text

    model = indexing.TOOL_EMBEDDING_MODEL
    bases = list(dict.fromkeys(tool_text(name, description) for name, description, _ in tools))
    examples = list(dict.fromkeys(str(e) for _, _, some in tools for e in some if str(e).strip()))
    calls = texts_calls(model, bases, slab=None) + texts_calls(model, examples, slab=None)
    return calls_bound(model_name=model, calls=calls, here=True)


def tool_index_bound(*, name: str, description: str, examples: list[str] | tuple[str, ...] = ()) -> Decimal:
    """``tools_index_bound`` of one tool."""
    return tools_index_bound([(name, description, examples)])


@contextmanager
def _tool_index_spending(*, team, user, bound: Decimal, description: str):
    """Reserve a team's tool embedding (402 before anything changes), then bill what the block embedded."""
    from apps.corpora.services.embedding import embedding_billed
    from apps.costs.models import Stage
    from apps.costs.pricing import Usage, to_decimal
    from apps.costs.services import LedgerContext, PriceMissing, price_current
    from apps.costs.services.holds import spending

    if team is None:  # the global library: the operator's, not a team's
        yield
        return
    context = LedgerContext(team=team, user=user)
    with spending(path="tool_index", context=context, estimate=bound, description=description[:255]) as hold:
        with indexing.embedding_meter() as meter:
            yield
        if meter["texts"]:
            try:
                price = price_current(model_name=LOCAL_EMBEDDING_PRICE_NAME)
            except PriceMissing:
                price = None
            hold.record(
                stage=Stage.EMBED, model_name=LOCAL_EMBEDDING_PRICE_NAME,
                usage=Usage(prompt_tokens=meter["tokens"], cpu_seconds=to_decimal(round(meter["seconds"], 6))),
                price=price, latency_ms=int(meter["seconds"] * 1000), finish_reason="tool-index",
            )
            embedding_billed(indexing.TOOL_EMBEDDING_MODEL)


def _python_config(*, name: str, config: dict, parameters: Any, errors: dict[str, str]) -> tuple[dict, Any]:
    """A python tool runs one built-in callable; its schema defaults to the callable's own."""
    from workers.agent.tools import REGISTRY

    callable_name = config.get("callable") or name
    if not isinstance(callable_name, str) or callable_name not in REGISTRY:
        errors["config"] = (
            f"unknown built-in callable {callable_name!r} ({len(REGISTRY)} registered, "
            f"e.g. {', '.join(sorted(REGISTRY)[:4])})"
        )
        return config, parameters
    if not parameters:
        parameters = REGISTRY[callable_name].parameters
    return {"callable": callable_name}, parameters


def _http_config(*, config: dict, parameters: Any, errors: dict[str, str]) -> dict:
    """An http tool calls one allowed URL; every {placeholder} in it must be a parameter."""
    from workers.agent.http_tool import METHODS, HttpToolError, check_url, url_placeholders

    url = str(config.get("url", ""))
    method = str(config.get("method", "GET")).upper()
    try:
        check_url(url, allowed_hosts=http_allowed_hosts())
        placeholders = url_placeholders(url)
    except HttpToolError as exc:
        errors["config"] = str(exc)
        placeholders = []
    if method not in METHODS:
        errors["config"] = f"unsupported method {method!r} (valid: {', '.join(METHODS)})"
    properties = (parameters or {}).get("properties", {}) if isinstance(parameters, dict) else {}
    missing = [p for p in placeholders if not isinstance(properties, dict) or p not in properties]
    if missing and "config" not in errors:
        errors["config"] = f"URL placeholders without a parameter: {', '.join(missing)}"
    return {"url": url, "method": method}


def _retrieval_config(*, team, config: dict, errors: dict[str, str]) -> dict:
    """A retrieval tool searches one of the team's corpora; its schema is always a query."""
    from apps.corpora.models import Corpus

    corpus_id = config.get("corpus_id")
    valid_id = isinstance(corpus_id, int) and not isinstance(corpus_id, bool) and 0 < corpus_id < 2**63
    corpus = Corpus.objects.filter(pk=corpus_id, team=team).first() if valid_id and team else None
    if corpus is None:
        errors["config"] = "a retrieval tool needs the id of one of the team's corpora (config.corpus_id)"
    k = config.get("k", 3)
    if not isinstance(k, int) or not 1 <= k <= RETRIEVAL_MAX_K:
        errors["config"] = f"config.k must be a whole number from 1 to {RETRIEVAL_MAX_K}"
    retriever = config.get("retriever", "hybrid")
    if retriever not in RETRIEVERS:
        errors["config"] = f"unknown retriever {retriever!r} (valid: {', '.join(RETRIEVERS)})"
    return {"corpus_id": corpus_id, "k": k, "retriever": retriever}


def _examples_problem(examples: Any) -> str | None:
    if not isinstance(examples, list) or not all(isinstance(e, str) for e in examples):
        return "examples must be a list of strings"
    if len(examples) > 200:
        return "at most 200 examples per tool"
    return None


def _check_identity(*, name: str, description: str, kind: str, errors: dict[str, str]) -> None:
    try:
        tool_name_validator(name)
    except Exception as exc:  # django ValidationError
        errors["name"] = " ".join(getattr(exc, "messages", [str(exc)]))
    if not (description or "").strip():
        errors["description"] = "a tool needs a description (the library search embeds it)"
    if kind not in ToolKind.values:
        errors["kind"] = f"unknown tool kind {kind!r} (valid: {', '.join(ToolKind.values)})"


def tool_validate(*, team, name: str, description: str, parameters: Any, kind: str, config: Any,
                  examples: Any) -> tuple[dict, dict, list[str]]:
    """(parameters, config, examples) normalised, or ValidationFailed listing every problem."""
    from workers.agent.schema import schema_problems
    from workers.agent.tools import RETRIEVAL_PARAMETERS

    errors: dict[str, str] = {}
    _check_identity(name=name, description=description, kind=kind, errors=errors)
    config = dict(config or {}) if isinstance(config, dict) else config
    if not isinstance(config, dict):
        errors["config"] = "config must be a JSON object"
        config = {}
    if kind == ToolKind.PYTHON:
        config, parameters = _python_config(name=name, config=config, parameters=parameters, errors=errors)
    elif kind == ToolKind.HTTP:
        config = _http_config(config=config, parameters=parameters, errors=errors)
    elif kind == ToolKind.RETRIEVAL:
        config = _retrieval_config(team=team, config=config, errors=errors)
        parameters = RETRIEVAL_PARAMETERS
    if parameters in (None, ""):
        parameters = {"type": "object", "properties": {}, "required": []}
    problems = schema_problems(parameters)
    if problems:
        errors["parameters"] = "; ".join(problems)
    if examples is None:
        examples = []
    problem = _examples_problem(examples)
    if problem:
        errors["examples"] = problem
    if errors:
        message = "; ".join(f"{k}: {v}" for k, v in errors.items())
        raise ValidationFailed(message, detail={"fields": errors})
    return parameters, config, [e.strip() for e in examples if e.strip()]


def _check_name_free(*, team, name: str, exclude: int | None = None) -> None:
    clash = Tool.objects.filter(team=team, name=name)
    if exclude is not None:
        clash = clash.exclude(pk=exclude)
    if clash.exists():
        owner = "the team" if team is not None else "the global library"
        raise ValidationFailed(f"{owner} already has a tool called {name!r}", code="duplicate")


def tool_create(
    *,
    team,
    name: str,
    description: str,
    kind: str = ToolKind.PYTHON,
    parameters: dict | None = None,
    config: dict | None = None,
    examples: list[str] | None = None,
    enabled: bool = True,
    created_by=None,
) -> Tool:
    """Create a tool (team=None: global) and index it."""
    name = (name or "").strip()
    parameters, config, examples = tool_validate(
        team=team, name=name, description=description, parameters=parameters, kind=kind, config=config,
        examples=examples,
    )
    _check_name_free(team=team, name=name)
    bound = ZERO  # the global library (team None) is the operator's: nothing to reserve
    if enabled and team is not None:
        bound = tool_index_bound(name=name, description=description.strip(), examples=examples)
    with _tool_index_spending(team=team, user=created_by, bound=bound, description=f"index tool {name}"):
        try:
            with transaction.atomic():
                tool = Tool.objects.create(
                    team=team, name=name, description=description.strip(), kind=kind, parameters=parameters,
                    config=config, examples=examples, enabled=enabled,
                    created_by=created_by if getattr(created_by, "pk", None) else None,
                )
        except IntegrityError as exc:
            raise ValidationFailed(f"a tool called {name!r} already exists", code="duplicate") from exc
        indexing.tool_index_sync(tool)
    return tool


def tool_search_bound(query: str) -> Decimal:
    """The most embedding a tool-search query can cost: one call, its tokens counted with the embedder's
    tokenizer, measured on this process's own embedder (it embeds the query)."""
    from apps.corpora.services.embedding import embedding_bound
    from apps.costs.tokens import embedding_tokens

    tokens = embedding_tokens(indexing.TOOL_EMBEDDING_MODEL, [query])
    return embedding_bound(model_name=indexing.TOOL_EMBEDDING_MODEL, tokens=tokens, here=True)


def tool_search_billed(*, team, query: str, k: int = 5, user=None, api_key=None) -> list:
    """The library search the tools page runs (cost path ``tool_search``): the query embedding is
    reserved (402 before it runs), billed as a ``retrieve`` row, settled. Empty queries cost nothing."""
    from apps.agents.selectors import tool_search
    from apps.corpora.services.embedding import embedding_billed
    from apps.costs.models import Stage
    from apps.costs.pricing import Usage, to_decimal
    from apps.costs.services import LedgerContext, PriceMissing, price_current
    from apps.costs.services.holds import spending

    query = (query or "").strip()
    if not query or k < 1:
        return []
    context = LedgerContext(team=team, user=user, api_key=api_key)
    timings: dict[str, float] = {}
    with spending(path="tool_search", context=context, estimate=tool_search_bound(query),
                  description="tool search") as hold:
        matches = tool_search(team=team, query=query, k=k, timings=timings)
        try:
            price = price_current(model_name=LOCAL_EMBEDDING_PRICE_NAME)
        except PriceMissing:
            price = None
        seconds = timings.get("embed_s", 0.0)
        hold.record(
            stage=Stage.RETRIEVE, model_name=LOCAL_EMBEDDING_PRICE_NAME,
            usage=Usage(prompt_tokens=indexing.query_tokens(query), cpu_seconds=to_decimal(round(seconds, 6))),
            price=price, latency_ms=int(seconds * 1000), finish_reason="tool-search",
        )
        embedding_billed(indexing.TOOL_EMBEDDING_MODEL)
    return matches


def tool_update(*, tool: Tool, user: Any = None, **changes: Any) -> Tool:
    """Change a tool; the version goes up by one when anything changed, and the tool is re-indexed
    (billed to ``user``'s team under a hold, see the module docstring)."""
    unknown = set(changes) - set(TOOL_FIELDS)
    if unknown:
        raise ValidationFailed(f"unknown tool fields: {', '.join(sorted(unknown))}")
    values = {field: getattr(tool, field) for field in TOOL_FIELDS}
    values.update(changes)
    values["name"] = (values["name"] or "").strip()
    if "kind" in changes and changes["kind"] != tool.kind and "parameters" not in changes:
        values["parameters"] = None  # a new kind brings its own default schema
    parameters, config, examples = tool_validate(
        team=tool.team, name=values["name"], description=values["description"], kind=values["kind"],
        parameters=values["parameters"], config=values["config"], examples=values["examples"],
    )
    values.update(
        parameters=parameters, config=config, examples=examples, description=values["description"].strip()
    )
    if all(getattr(tool, field) == values[field] for field in TOOL_FIELDS):
        return tool
    _check_name_free(team=tool.team, name=values["name"], exclude=tool.pk)
    bound = ZERO
    if values["enabled"] and tool.team is not None:
        bound = tool_index_bound(name=values["name"], description=values["description"], examples=values["examples"])
    with _tool_index_spending(team=tool.team, user=user, bound=bound, description=f"index tool {values['name']}"):
        for field in TOOL_FIELDS:
            setattr(tool, field, values[field])
        tool.version += 1
        tool.save()
        indexing.tool_index_sync(tool)
    return tool


def tool_delete(*, tool: Tool) -> None:
    scope, tool_id = indexing.scope_of(tool), tool.pk
    tool.delete()
    indexing.tool_index_drop(scope=scope, tool_id=tool_id)


def tool_index_rebuild(*, team=None, include_global: bool = True) -> dict[str, int]:
    """Rebuild indexes from the database: one team's (and the global one), or every team's."""
    from apps.accounts.models import Team
    from indexes.tool_index import GLOBAL_SCOPE

    store = indexing.tool_store()
    counts: dict[str, int] = {}
    teams = [team] if team is not None else list(Team.objects.all())
    for each in teams:
        tools = list(Tool.objects.filter(team=each, enabled=True).order_by("pk"))
        bound = tools_index_bound([(t.name, t.description, t.examples or ()) for t in tools]) if tools else ZERO
        try:
            with _tool_index_spending(team=each, user=None, bound=bound, description="rebuild the tool index"):
                counts[f"team {each.pk}"] = store.rebuild(each.pk, [indexing.document_of(t) for t in tools])
        except BudgetExceeded as exc:
            if team is not None:
                raise
            logger.warning("team %s: tool index not rebuilt: %s", each.pk, exc.message)
    if include_global:
        tools = Tool.objects.filter(team=None, enabled=True).order_by("pk")
        counts[GLOBAL_SCOPE] = store.rebuild(GLOBAL_SCOPE, [indexing.document_of(t) for t in tools])
    return counts


def http_host_allow(*, host: str, note: str = "") -> HttpAllowedHost:
    host = host.strip().lower()
    if not host or "/" in host or " " in host:
        raise ValidationFailed(f"{host!r} is not a host name (e.g. api.example.com or *.example.com)")
    allowed, _ = HttpAllowedHost.objects.get_or_create(host=host, defaults={"note": note})
    return allowed


def builtin_tools_load(*, packs: list[str] | None = None) -> dict[str, int]:
    """Create or refresh the global Tool rows of the built-in packs (idempotent), and the tool price."""
    from apps.costs.defaults import CPU_PER_SECOND, EFFECTIVE
    from apps.costs.models import Price
    from workers.agent.tools import builtin_tools

    Price.objects.get_or_create(
        model_name=TOOL_PRICE_NAME, effective_from=EFFECTIVE,
        defaults={
            "per_cpu_second": CPU_PER_SECOND,
            "provider": "local",
            "source": "parsimony default for tool calls",
        },
    )
    created = updated = unchanged = 0
    for builtin in builtin_tools(packs):
        existing = Tool.objects.filter(team=None, name=builtin.name).first()
        values = {
            "description": builtin.description, "kind": ToolKind.PYTHON, "parameters": builtin.parameters,
            "config": {"callable": builtin.name},
        }
        if existing is None:
            tool_create(team=None, name=builtin.name, **values)
            created += 1
        elif any(getattr(existing, k) != v for k, v in values.items()):
            tool_update(tool=existing, **values)
            updated += 1
        else:
            unchanged += 1
    return {"created": created, "updated": updated, "unchanged": unchanged}
