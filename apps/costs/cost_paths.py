"""The code's own list of cost-bearing paths: every way a request can make Parsimony spend.

Each path reserves a bound before its work runs and settles to its ledger rows after
(``apps.costs.services.holds``). ``hold_open`` refuses a path that is not listed here, and the
test suite enumerates this list: a new path without a $0-budget refusal test fails
(``tests/apps/costs/test_cost_paths.py``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CostPath:
    name: str
    stage: str  # the ledger stage its main rows carry
    what: str


COST_PATHS: dict[str, CostPath] = {
    path.name: path
    for path in (
        CostPath("ingest", "embed", "embedding uploaded documents' chunks"),
        CostPath("index_rebuild", "embed", "re-embedding a corpus when its index is rebuilt"),
        CostPath("search_ui", "retrieve", "embedding a search query typed in the team UI"),
        CostPath("search_api", "retrieve", "embedding a search query sent to the REST API"),
        CostPath("embeddings_api", "embed", "POST /v1/embeddings"),
        CostPath("tool_index", "embed", "embedding a tool library's descriptions"),
        CostPath("tool_search", "retrieve", "embedding a tool-search query (UI and REST)"),
        CostPath("query", "generate", "a RAG or direct query: retrieval, compression, generation"),
        CostPath("kv_prefill", "prefill", "prefilling a pipeline's fixed context into the KV store"),
        CostPath("agent_step", "agent-step", "one agent step: tool search, the model call, its tool calls"),
        CostPath("model_call", "generate", "a metered model call that reserves for itself"),
        CostPath("evaluation", "generate", "an evaluation job: a labelled set through several pipelines"),
        CostPath("bulk", "generate", "a bulk question job: every row's retrieval and (batched) generation"),
        CostPath(
            "shadow_baseline", "generate", "the naive pipeline run for real to measure a query's savings"
        ),
    )
}


def cost_path(name: str) -> CostPath:
    try:
        return COST_PATHS[name]
    except KeyError:
        raise ValueError(f"unknown cost path {name!r}: add it to apps.costs.cost_paths.COST_PATHS") from None
