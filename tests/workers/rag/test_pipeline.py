"""The RAG engine on plain data: the order of its steps, what it asks the service for, what it returns.

Small fakes stand in for the service's hooks and the model (the Django path, with the ledger and
the real models, is covered by tests/apps/rag).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from workers import compression, prompting
from workers.compression.base import CompressedContext
from workers.compression.plan import CompressionPlan, ModelCall
from workers.rag.pipeline import (
    PipelineConfig,
    PipelineError,
    RetrievedChunk,
    citations,
    run_direct,
    run_pipeline,
)
from workers.runtime.meter import EchoTarget, count_chat_tokens

CHUNKS = [
    RetrievedChunk(chunk_id=7, document_id=1, title="Eiffel Tower", text="The tower was completed in 1889.",
                   start=0, end=32, score=0.91234567,
                   retrievers={"dense": (1, 0.91234567), "bm25": (2, 3.5)}),
    RetrievedChunk(chunk_id=9, document_id=2, title="Paris", text="Paris is the capital of France.",
                   start=10, end=41, score=0.5, retrievers={"dense": (2, 0.5)}),
]


@dataclass
class FakeHooks:
    """Records every call the engine makes, in order; generations reply with ``reply``."""

    chunks: list[RetrievedChunk] = field(default_factory=lambda: list(CHUNKS))
    target: Any = field(default_factory=lambda: EchoTarget(name="echo"))
    local: Any = None
    context_text: str = "The fixed context."
    reply: str = "It was completed in 1889 [1]."
    calls: list[tuple] = field(default_factory=list)
    store: object = field(default_factory=object)
    budget_s: float | None = None

    def retrieve(self, question: str, k: int) -> list[RetrievedChunk]:
        self.calls.append(("retrieve", question, k))
        return self.chunks[:k]

    def model(self) -> Any:
        self.calls.append(("model",))
        return self.target

    def local_model(self) -> Any:
        self.calls.append(("local_model",))
        return self.local

    def kv_store(self) -> object:
        self.calls.append(("kv_store",))
        return self.store

    def fixed_context_text(self) -> str:
        self.calls.append(("fixed_context_text",))
        return self.context_text

    def compression_planned(self, plan: Any) -> None:
        self.calls.append(("compression_planned", plan))

    def bill_compression(self, *, prompt_tokens: int, completion_tokens: int, compute_s: float) -> None:
        self.calls.append(("bill_compression", prompt_tokens, completion_tokens, compute_s))

    def generate(self, messages: list[dict], on_token) -> SimpleNamespace:
        self.calls.append(("generate", messages))
        on_token(self.reply)
        return SimpleNamespace(text=self.reply, finish_reason="stop")

    def metered(self, generate):
        self.calls.append(("metered:start",))
        result = generate()
        self.calls.append(("metered:billed", result))
        return result

    def generation_budget_s(
        self, prompt_tokens: int, max_output_tokens: int, prefill_tokens: int | None = None
    ) -> float | None:
        self.calls.append(
            ("generation_budget_s", prompt_tokens, max_output_tokens)
            + (() if prefill_tokens is None else (prefill_tokens,))
        )
        return self.budget_s

    def embed(self, texts: list[str]) -> Any:
        import numpy as np

        self.calls.append(("embed", list(texts)))
        return np.tile(np.eye(1, 4, dtype=np.float32), (len(texts), 1))  # every text equally similar

    def count_tokens(self, prompt: list[dict] | str) -> int:
        self.calls.append(("count_tokens",))
        return count_chat_tokens(self.target, prompt) if isinstance(prompt, list) else len(prompt.split())

    def names(self) -> list[str]:
        return [call[0] for call in self.calls]


def _run(hooks: FakeHooks, **config: Any):
    progress: list[tuple[int, int, str]] = []
    pieces: list[str] = []
    result = run_pipeline(
        question="When was the tower completed?",
        config=PipelineConfig(name="p", model_name="echo-model", system_prompt="Answer briefly.", top_k=2,
                              **config),
        hooks=hooks,
        progress=lambda done, total, message: progress.append((done, total, message)),
        on_token=pieces.append,
    )
    return result, progress, pieces


def test_it_retrieves_compresses_and_generates_in_order():
    hooks = FakeHooks()
    result, progress, pieces = _run(hooks)
    # Without compression the status never says "compressing".
    assert progress == [(0, 3, "retrieving"), (1, 3, "building the prompt"), (2, 3, "generating")]
    # "none" plans nothing (the hold grows by nothing) and compresses nothing: nothing billed.
    assert hooks.names() == ["retrieve", "model", "compression_planned", "generate"]
    assert hooks.calls[2][1].method == "none" and not hooks.calls[2][1].model_calls
    assert hooks.calls[0] == ("retrieve", "When was the tower completed?", 2)
    prompt = hooks.calls[3][1]
    assert prompt[0] == {"role": "system", "content": "Answer briefly."}
    assert CHUNKS[0].text in prompt[-1]["content"] and CHUNKS[1].text in prompt[-1]["content"]
    assert (result.answer, result.finish_reason) == (hooks.reply, "stop") and pieces == [hooks.reply]
    # The baseline: the naive prompt over every retrieved chunk, counted by the endpoint's model.
    assert result.baseline_prompt_tokens == count_chat_tokens(hooks.target, prompt)
    words = sum(len(chunk.text.split()) for chunk in CHUNKS)
    assert result.context_tokens_before == result.context_tokens_after == words
    assert [c["chunk_id"] for c in result.citations] == [7, 9]


def test_citations_number_the_chunks_as_the_prompt_does_and_mark_the_cited_ones():
    found = citations(CHUNKS, "In 1889 [1].")
    assert found[0] == {
        "n": 1, "chunk_id": 7, "document_id": 1, "document_title": "Eiffel Tower", "start": 0, "end": 32,
        "snippet": CHUNKS[0].text, "score": 0.912346,
        "retrievers": {"dense": {"rank": 1, "score": 0.912346}, "bm25": {"rank": 2, "score": 3.5}},
        "cited": True,
    }
    assert found[1]["n"] == 2 and found[1]["cited"] is False


class _ShortenTo1:
    """A compression method that keeps the first passage, having used a model (``model`` names it)."""

    name = "shorten"
    model = ""

    def __init__(self, *, resources=None, **params):
        self.resources = resources

    def plan(self, *, query, passages, target, count_tokens):
        return CompressionPlan(method=self.name, model=self.model, model_calls=[ModelCall(40, 6)])

    def compress(self, *, query, passages, target, count_tokens, plan=None):
        return CompressedContext(
            passages=passages[:1], tokens_before=sum(count_tokens(p.text) for p in passages),
            tokens_after=count_tokens(passages[0].text), compute_s=0.5, model_prompt_tokens=40,
            model_completion_tokens=6, model=self.model,
        )


def test_a_compression_that_did_work_is_billed_and_only_its_passages_reach_the_prompt(monkeypatch, tmp_path):
    monkeypatch.setitem(compression.METHODS, "shorten", _ShortenTo1)
    hooks = FakeHooks()
    result, _, _ = _run(hooks, compression_method="shorten", compression_target=0.5,
                        compression_cache_dir=tmp_path)
    assert hooks.names() == ["retrieve", "model", "compression_planned", "bill_compression", "generate"]
    # The hold grew by the method's plan before it ran; then the stage was billed.
    assert hooks.calls[2][1].model_calls == [ModelCall(40, 6)]
    assert hooks.calls[3] == ("bill_compression", 40, 6, 0.5)
    prompt = hooks.calls[4][1][-1]["content"]
    assert CHUNKS[0].text in prompt and CHUNKS[1].text not in prompt
    assert result.context_tokens_after < result.context_tokens_before
    # The baseline still reads every chunk, uncompressed; citations list every retrieved chunk.
    assert result.baseline_prompt_tokens > count_chat_tokens(hooks.target, hooks.calls[4][1])
    assert len(result.citations) == 2


def test_a_helper_models_tokens_are_not_billed_as_the_endpoints(monkeypatch):
    class OnAHelper(_ShortenTo1):
        model = "some-local-scorer"

    monkeypatch.setitem(compression.METHODS, "shorten", OnAHelper)
    hooks = FakeHooks()
    _run(hooks, compression_method="shorten")
    assert hooks.calls[3] == ("bill_compression", 0, 0, 0.5)  # its seconds only


@dataclass
class FakeResult:
    text: str
    finish_reason: str
    prompt_tokens: int = 0
    context_tokens: int = 0
    truncated_tokens: int = 0


class _RunsModel:
    """A prompting strategy that runs the local model itself (as superposition does)."""

    name = "runs-model"
    runs_model = True
    seen: dict[str, Any] = {}

    def build_messages(self, *, system_prompt, question, passages):
        return [{"role": "user", "content": question}]

    def prompt_tokens_bound(self, *, model, system_prompt, question, passages):
        return 40 + len(passages)

    def generate(self, **kwargs):
        _RunsModel.seen = kwargs
        kwargs["on_token"]("superposed")
        return FakeResult(text="superposed", finish_reason="length")


def test_a_strategy_that_runs_the_model_generates_under_the_meter_with_the_local_model(monkeypatch):
    monkeypatch.setitem(prompting.STRATEGIES, "runs-model", _RunsModel)
    local = object()
    hooks = FakeHooks(local=local, budget_s=0.25)
    result, _, pieces = _run(hooks, prompting_strategy="runs-model", max_output_tokens=16,
                             wall_time_limit_s=9.0)
    assert hooks.names() == [
        "retrieve", "model", "compression_planned", "local_model", "kv_store", "metered:start",
        "generation_budget_s", "metered:billed",
    ]
    # The hold is enforced: the budget is asked for the strategy's prompt bound, inside the meter.
    assert ("generation_budget_s", 42, 16) in hooks.calls and _RunsModel.seen["budget_s"] == 0.25
    seen = _RunsModel.seen
    assert seen["model"] is local and seen["kv_store"] is hooks.store
    assert (seen["max_output_tokens"], seen["wall_time_limit_s"]) == (16, 9.0)
    assert [p.chunk_id for p in seen["passages"]] == [7, 9] and seen["system_prompt"] == "Answer briefly."
    assert (result.answer, result.finish_reason, pieces) == ("superposed", "length", ["superposed"])
    naive = prompting.get_strategy("naive").build_messages(
        system_prompt="Answer briefly.", question="When was the tower completed?",
        passages=[prompting.Passage(chunk_id=c.chunk_id, title=c.title, text=c.text) for c in CHUNKS])
    assert result.baseline_prompt_tokens == count_chat_tokens(hooks.target, naive)


def test_a_strategy_that_runs_the_model_refuses_a_remote_one_before_generating(monkeypatch):
    monkeypatch.setitem(prompting.STRATEGIES, "runs-model", _RunsModel)
    hooks = FakeHooks(local=None)
    message = "prompting strategy 'runs-model' needs a local model; 'echo-model' is not one"
    with pytest.raises(PipelineError, match=message):
        _run(hooks, prompting_strategy="runs-model")
    assert "metered:start" not in hooks.names() and "generate" not in hooks.names()


def test_with_nothing_retrieved_a_model_running_strategy_falls_back_to_a_plain_call(monkeypatch):
    monkeypatch.setitem(prompting.STRATEGIES, "runs-model", _RunsModel)
    hooks = FakeHooks(chunks=[])
    result, _, _ = _run(hooks, prompting_strategy="runs-model")
    assert hooks.names() == ["retrieve", "model", "compression_planned", "generate"]
    assert result.citations == [] and result.context_tokens_before == 0


def test_a_fixed_context_is_answered_over_the_kv_store_without_retrieval(monkeypatch):
    from workers.attention import fixed_context

    seen: dict[str, Any] = {}

    def answer(model, **kwargs):
        seen.update(kwargs, model=model)
        return FakeResult(text="1889", finish_reason="stop", prompt_tokens=120, context_tokens=100,
                          truncated_tokens=30)

    monkeypatch.setattr(fixed_context, "answer", answer)
    monkeypatch.setattr(fixed_context, "answer_prompt_parts", lambda model, **kwargs: (100, 20))
    local = object()
    hooks = FakeHooks(local=local, budget_s=1.5)
    result, progress, _ = _run(hooks, fixed_context=True, attention_backend="squeezed",
                               attention_options={"keep_fraction": 0.5}, fixed_context_max_tokens=512,
                               max_output_tokens=8, wall_time_limit_s=5.0)
    assert progress == [(1, 3, "loading the fixed context"), (2, 3, "generating")]
    assert hooks.names() == [
        "local_model", "fixed_context_text", "metered:start", "kv_store", "generation_budget_s", "metered:billed",
    ]
    # The hold starts from the user's 20 tokens (the context is cached); all 120 are billed.
    assert ("generation_budget_s", 120, 8, 20) in hooks.calls and seen["budget_s"] == 1.5
    assert seen["model"] is local and seen["store"] is hooks.store
    assert seen["context_text"] == "The fixed context."
    assert (seen["backend"], seen["options"]) == ("squeezed", {"keep_fraction": 0.5})
    assert seen["max_output_tokens"] == 8
    assert seen["config"].max_context_tokens == 512 and seen["question"] == "When was the tower completed?"
    assert (result.answer, result.citations) == ("1889", [])
    # The baseline: the same prompt with nothing cached; the context as given and as prefilled.
    assert result.baseline_prompt_tokens == 120
    assert (result.context_tokens_before, result.context_tokens_after) == (130, 100)


def test_a_fixed_context_needs_a_local_model_and_a_text():
    message = "a fixed context is answered by a local model; 'echo-model' is not one"
    with pytest.raises(PipelineError, match=message):
        _run(FakeHooks(local=None), fixed_context=True)
    hooks = FakeHooks(local=object(), context_text="  \n")
    with pytest.raises(PipelineError, match="pipeline 'p' has an empty fixed context"):
        _run(hooks, fixed_context=True)
    assert "metered:start" not in hooks.names()


def test_a_direct_call_sends_the_messages_as_they_are():
    hooks = FakeHooks(reply="hello")
    progress: list[tuple] = []
    messages = [{"role": "user", "content": "hi"}]
    result = run_direct(messages=messages, hooks=hooks, progress=lambda *args: progress.append(args))
    assert hooks.calls == [("generate", messages)] and progress == [(2, 3, "generating")]
    assert (result.answer, result.citations, result.baseline_prompt_tokens) == ("hello", [], None)


def test_an_extractive_pipeline_quotes_a_sentence_and_never_generates():
    hooks = FakeHooks()
    result, progress, pieces = _run(hooks, prompting_strategy="extractive_answer")
    # One encode (question + every sentence), no model loaded, nothing compressed or generated.
    assert hooks.names() == ["retrieve", "embed", "count_tokens", "count_tokens"]
    assert hooks.calls[1][1] == ["When was the tower completed?", "Eiffel Tower. The tower was completed in 1889.",
                                 "Paris. Paris is the capital of France."]
    assert progress == [(0, 3, "retrieving"), (2, 3, "choosing the best sentence")]
    assert result.answer == "The tower was completed in 1889. [1]" and pieces == [result.answer]
    assert result.finish_reason == "extractive"
    assert [c["cited"] for c in result.citations] == [True, False]
    # The baseline: naive RAG over the same passages, with as many output tokens as the quote.
    naive = prompting.get_strategy("naive").build_messages(
        system_prompt="Answer briefly.", question="When was the tower completed?",
        passages=[prompting.Passage(c.chunk_id, c.title, c.text) for c in CHUNKS])
    assert result.baseline_prompt_tokens == count_chat_tokens(hooks.target, naive)
    assert result.baseline_completion_tokens == len(result.answer.split()) == 7
    # ... at most the pipeline's output cap: a naive answer cannot be longer.
    capped, _, _ = _run(FakeHooks(), prompting_strategy="extractive_answer", max_output_tokens=5)
    assert capped.baseline_completion_tokens == 5


def test_an_extractive_pipeline_with_nothing_retrieved_lets_the_model_answer():
    hooks = FakeHooks(chunks=[])
    result, _, _ = _run(hooks, prompting_strategy="extractive_answer")
    assert "generate" in hooks.names() and "embed" not in hooks.names()
    # The model's "[1]" points past the (no) sources: the quality check removes it and counts it.
    assert result.answer == hooks.reply.replace(" [1]", "") and result.baseline_completion_tokens is None
    assert result.quality["citations_removed"] == 1
