"""Demo seeders run by ``manage.py bootstrap_demo``: each takes (team, user, stdout) and is idempotent."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

SEEDERS: list[Callable] = []


def seed_docs_corpus(team, user, stdout) -> None:
    """The "Parsimony docs" corpus: README.md and docs/*.md, ingested through the real pipeline.

    Idempotent: files already ingested (same sha256) are skipped; changed files are added.
    """
    from pathlib import Path

    from django.conf import settings

    from apps.corpora.models import Corpus, DocumentStatus
    from apps.corpora.services import corpus_create, document_upload, documents_ingest

    corpus = Corpus.objects.filter(team=team, name="Parsimony docs").first() or corpus_create(
        team=team, name="Parsimony docs", user=user, description="Parsimony's own README and docs/"
    )
    root = Path(settings.BASE_DIR)
    paths = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    queued = []
    for path in paths:
        if path.is_file():
            document = document_upload(
                corpus=corpus, filename=path.name, data=path.read_bytes(), user=user, start_job=False
            )
            if document.status in (DocumentStatus.QUEUED, DocumentStatus.PROCESSING):
                queued.append(document)
    if queued:
        result = documents_ingest(documents=queued)
        stdout.write(f"Corpus 'Parsimony docs': ingested {result['ready']} document(s), {result['chunks']} chunks.")
    else:
        stdout.write("Corpus 'Parsimony docs': up to date.")


SEEDERS.append(seed_docs_corpus)

# The demo's pipelines on the docs corpus: the default (naive RAG, the baseline savings are measured
# against) sorts first, so the Ask page preselects it; the second cuts the context by half.
DEMO_PIPELINES = (
    ("parsimony-docs", "Naive RAG over Parsimony's docs: the top 5 passages sent as they are", {}),
    ("parsimony-docs-extractive",
     "Cost-saving: the passages' most relevant sentences only (extractive compression to half the tokens)",
     {"compression_method": "extractive", "compression_target": 0.5}),
    ("parsimony-docs-quote",
     "No generation: the answer is the passages' best supporting sentence with its citation (docs/prompting.md)",
     {"prompting_strategy": "extractive_answer"}),
    ("parsimony-docs-cascade",
     "Quote first; the local model only when the quote's quality signals doubt it (docs/cascades.md)",
     {"cascade": {"tiers": ["parsimony-docs-quote", "parsimony-docs"]}}),
)


def seed_demo_pipelines(team, user, stdout) -> None:
    """Pipelines on the "Parsimony docs" corpus with the local model, so Ask answers on first visit: naive
    RAG, extractive compression, an extractive answer (nothing generated) and a cascade of the last two.

    Idempotent: existing pipelines of those names are left as they are (a user may have tuned them).
    """
    from apps.corpora.models import Corpus
    from apps.rag.models import Pipeline
    from apps.rag.services import pipeline_save

    docs = Corpus.objects.filter(team=team, name="Parsimony docs").first()
    if docs is None:
        stdout.write("Pipelines: no 'Parsimony docs' corpus, none created.")
        return
    for name, description, options in DEMO_PIPELINES:
        if Pipeline.objects.filter(team=team, name=name).exists():
            continue
        if "cascade" in options:
            tiers = options["cascade"]["tiers"]
            if Pipeline.objects.filter(team=team, name__in=tiers).count() != len(tiers):
                continue  # a tier was renamed or deleted: no cascade over it
            retrieval: dict[str, Any] = {}  # a cascade retrieves through its tiers
        else:
            retrieval = {"corpora": [docs], "retriever": "hybrid", "top_k": 5}
        pipeline_save(
            team=team, name=name, model_endpoint="smollm2-135m-instruct", created_by=user,
            description=description, **retrieval, **options,
        )
        stdout.write(f"Pipeline '{name}' created on 'Parsimony docs'.")


SEEDERS.append(seed_demo_pipelines)


def seed_agent_tools(team, user, stdout) -> None:
    """The global built-in tools (math, calculator, date and time), indexed, and a demo math agent.

    Idempotent: existing tools are refreshed only when their definition changed; the agent is
    created once. When the "Parsimony docs" corpus exists, the team also gets a retrieval tool on it.
    """
    from apps.agents.models import Agent, Tool, ToolKind
    from apps.agents.services import agent_save, builtin_tools_load, tool_create
    from apps.corpora.models import Corpus

    counts = builtin_tools_load()
    stdout.write(
        f"Built-in tools: {counts['created']} created, {counts['updated']} updated, {counts['unchanged']} unchanged."
    )
    docs = Corpus.objects.filter(team=team, name="Parsimony docs").first()
    if docs is not None and not Tool.objects.filter(team=team, name="search_parsimony_docs").exists():
        tool_create(
            team=team, name="search_parsimony_docs", kind=ToolKind.RETRIEVAL, created_by=user,
            description="Search Parsimony's own documentation (README and docs) for how the service works.",
            config={"corpus_id": docs.pk, "k": 3},
        )
    if not Agent.objects.filter(team=team, name="math-agent").exists():
        agent_save(
            team=team, name="math-agent", model_endpoint="smollm2-135m-instruct", created_by=user,
            description="Solves small math tasks with the built-in tool library",
            system_prompt="You solve math tasks with tools. Use the numbers given in the task.",
        )
        stdout.write("Agent 'math-agent' created (model smollm2-135m-instruct).")


SEEDERS.append(seed_agent_tools)


def seed_remote_prices(team, user, stdout) -> None:
    """The bundled LiteLLM list prices of the common remote models (gpt-4o, claude-*, gemini-*, mistral...),
    for every model the price book has no price for yet (apps/costs/price_table.py; idempotent)."""
    from apps.costs.price_table import PriceTableMissing, bundled_prices_load

    try:
        result = bundled_prices_load()
    except PriceTableMissing as exc:
        stdout.write(f"Remote model prices: not loaded ({exc}).")
        return
    stdout.write(
        f"Remote model prices: {result.added} added, {result.already_priced} already priced ({result.source})."
    )


SEEDERS.insert(0, seed_remote_prices)
