"""Prompt token bounds for reservations, per ModelEndpoint, without loading any model weights.

What counts an endpoint's tokens (``endpoint_tokenizer``), in order:

- a local endpoint: its model's own tokenizer and chat template (exact: what the model reads);
- an endpoint with ``tokenizer`` set: that Hugging Face tokenizer, from local files only;
- an OpenAI-family remote model (``remote_model`` or ``price_name`` like gpt-4o*, gpt-4*, o3*,
  gpt-5*): tiktoken's encoding, built offline (``workers.runtime.token_count``);
- none known: ``None``, i.e. the UTF-8 byte bound (see docs/costs.md for what it assumes).

Tokenizers are loaded lazily and cached per process (torch is never imported here).

``prompt_check`` refuses a prompt that cannot fit the model's context window with its output cap, or
passes the per-request ceiling ``PARSIMONY_MAX_PROMPT_TOKENS``, before anything is reserved or sent
(``ContextLengthExceeded``: 400, code ``context_length_exceeded``, naming the limit and the tokens).
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

from django.conf import settings

from apps.core.errors import ValidationFailed
from apps.costs.models import EndpointKind, ModelEndpoint

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_tokenizers: dict[tuple[str, str], Any] = {}


def _key(endpoint: ModelEndpoint) -> tuple[str, str]:
    from workers.runtime.token_count import encoding_for_model

    if endpoint.kind == EndpointKind.LOCAL:
        return ("local", endpoint.source or "smollm2-135m-instruct")
    if endpoint.tokenizer:
        return ("hf", endpoint.tokenizer)
    encoding = encoding_for_model(endpoint.remote_model) or encoding_for_model(endpoint.price_name)
    if encoding is not None:
        return ("tiktoken", encoding)
    return ("bytes", "")


def _load(kind: str, name: str) -> Any:
    data_root = Path(settings.DATA_ROOT)
    if kind == "local":
        from workers.runtime.local_lm import load_tokenizer

        return load_tokenizer(name, cache_dir=data_root)
    if kind == "hf":
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(name, local_files_only=True)
    if kind == "tiktoken":
        from workers.runtime.token_count import tiktoken_encoding

        return tiktoken_encoding(name, cache_dir=data_root)
    return None


def endpoint_tokenizer(endpoint: ModelEndpoint) -> Any | None:
    """The tokenizer that counts ``endpoint``'s prompts (HF tokenizer, tiktoken encoding), None: bytes."""
    key = _key(endpoint)
    if key[0] == "bytes":
        return None
    with _lock:
        if key not in _tokenizers:
            _tokenizers[key] = _load(*key)
        return _tokenizers[key]


def tokenizer_kind(endpoint: ModelEndpoint) -> str:
    """How ``endpoint``'s prompts are counted: "local", "hf", "tiktoken" or "bytes" (for docs and reports)."""
    return _key(endpoint)[0]


def prompt_tokens_bound(endpoint: ModelEndpoint, messages: list[dict], tools: list[dict] | None = None) -> int:
    """The most prompt tokens ``endpoint`` can count for ``messages`` (exact for a local model)."""
    from workers.runtime.token_count import chat_template_ids, chat_tokens_bound

    tokenizer = endpoint_tokenizer(endpoint)
    if endpoint.kind == EndpointKind.LOCAL:
        # Exactly the meter's count (workers.runtime.meter.count_chat_tokens); local calls get no tools.
        return len(chat_template_ids(tokenizer, messages))
    return chat_tokens_bound(tokenizer, messages, tools)


def text_tokens_bound(endpoint: ModelEndpoint, text: str) -> int:
    """The tokens of ``text`` alone for ``endpoint`` (exact with a tokenizer, else its UTF-8 bytes).

    A piece of a larger prompt can tokenize slightly differently at its edges: callers adding
    pieces up allow a few tokens per piece for that.
    """
    from workers.runtime.token_count import text_tokens

    return text_tokens(endpoint_tokenizer(endpoint), text)


def texts_tokens_max(endpoint: ModelEndpoint, texts: list[str]) -> int:
    """The largest ``text_tokens_bound`` over ``texts`` (batched; 0 for none)."""
    from workers.runtime.token_count import texts_tokens_max as count_max

    return count_max(endpoint_tokenizer(endpoint), texts)


class ContextLengthExceeded(ValidationFailed):
    """A prompt too long for the model's context window (with the output cap) or the per-request ceiling."""

    code = "context_length_exceeded"


def endpoint_context_window(endpoint: ModelEndpoint, target: Any = None) -> int | None:
    """The tokens ``endpoint``'s model can read, prompt and output together (None: unknown).

    A local model: its config's window (``max_position_embeddings``; the loaded ``target``'s when given,
    else read from its files without the weights), ``endpoint.context_window`` only when the model's
    files do not say. A remote endpoint: ``endpoint.context_window``.
    """
    from workers.runtime.local_lm import LoadedModel, context_window, model_context_window

    if isinstance(target, LoadedModel):
        return context_window(target)
    if endpoint.kind == EndpointKind.LOCAL and target is None:
        source = endpoint.source or "smollm2-135m-instruct"
        try:
            return model_context_window(source, cache_dir=Path(settings.DATA_ROOT))
        except (OSError, ValueError, KeyError) as exc:
            logger.warning("context window of %s unknown (%s); using the endpoint's %s", source, exc,
                           endpoint.context_window)
    return endpoint.context_window or None


def prompt_check(
    endpoint: ModelEndpoint, messages: list[dict], *, max_output_tokens: int, tools: list[dict] | None = None,
    target: Any = None, count: Any = None, extra_tokens: int = 0,
) -> int | None:
    """Refuse a prompt that cannot run on ``endpoint``: raise ``ContextLengthExceeded`` when its tokens
    plus ``max_output_tokens`` pass the context window (``endpoint_context_window``) or its tokens pass
    ``PARSIMONY_MAX_PROMPT_TOKENS``. -> the tokens counted (None when not counted exactly).

    First a lower bound from the UTF-8 bytes over the tokenizer's longest token (no tokenizing: a 1.2 MB
    prompt is refused in well under a millisecond once the tokenizer is loaded), then the exact count
    (``count()``, default ``prompt_tokens_bound``) plus ``extra_tokens`` (framing added later). Endpoints
    with no known tokenizer (the byte bound) are refused on the lower bound only (assuming no token over
    ``UNKNOWN_MAX_TOKEN_BYTES`` bytes): their byte count is a bound far above the real count.
    ``target``: the engine's object, when resolved (its window and, for the echo double, its count).
    """
    from workers.runtime.meter import EchoTarget, count_chat_tokens
    from workers.runtime.token_count import PromptTooLong, chat_prompt_check, prompt_limit_check

    window = endpoint_context_window(endpoint, target)
    ceiling = settings.PARSIMONY_MAX_PROMPT_TOKENS
    try:
        if isinstance(target, EchoTarget):  # the test double counts words: no byte bound applies
            tokens = count_chat_tokens(target, messages) + extra_tokens
            prompt_limit_check(tokens=tokens, max_output_tokens=max_output_tokens, context_window=window,
                               ceiling=ceiling)
            return tokens
        tokenizer = endpoint_tokenizer(endpoint)
        if tokenizer is None:
            chat_prompt_check(None, messages, count=lambda: 0, max_output_tokens=max_output_tokens,
                              context_window=window, ceiling=ceiling)
            return None
        counter = count or (lambda: prompt_tokens_bound(endpoint, messages, tools))
        return chat_prompt_check(tokenizer, messages, count=lambda: counter() + extra_tokens,
                                 max_output_tokens=max_output_tokens, context_window=window, ceiling=ceiling)
    except PromptTooLong as exc:
        raise ContextLengthExceeded(f"model {endpoint.name!r}: {exc}", detail=exc.detail()) from exc


_embedding_tokenizers: dict[str, Any] = {}


def embedding_tokenizer(model: str) -> Any:
    """The fast tokenizer of an embedding model (a known name such as "all-MiniLM-L6-v2", or a folder),
    truncating where the model does; only the tokenizer is loaded (cached per process, no torch)."""
    with _lock:
        tokenizer = _embedding_tokenizers.get(model)
        if tokenizer is None:
            from transformers import AutoTokenizer

            from workers.runtime.embedders import resolve_model_path

            path = Path(resolve_model_path(model))
            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            # sentence-transformers truncates at its own max_seq_length (MiniLM: 256, not the tokenizer's 512).
            config = path / "sentence_bert_config.json"
            if config.exists():
                limit = json.loads(config.read_text()).get("max_seq_length")
                if limit:
                    tokenizer.model_max_length = int(limit)
            _embedding_tokenizers[model] = tokenizer
    return tokenizer


def embedding_token_counts(model: str, texts: list[str]) -> list[int]:
    """Exactly the tokens an embedding model reads for each of ``texts`` (special tokens included,
    truncated at the model's maximum), as the embedder tokenizes them."""
    from workers.runtime.token_count import embedding_input

    if not texts:
        return []
    tokenizer = embedding_tokenizer(model)
    # As the embedder: only the part of a text the model can read is tokenized (megabytes cost nothing).
    cut = [embedding_input(t, tokenizer.model_max_length) for t in texts]
    return [len(ids) for ids in tokenizer(cut, truncation=True)["input_ids"]]


def embedding_tokens(model: str, texts: list[str]) -> int:
    """Exactly the tokens an embedding model (e.g. "all-MiniLM-L6-v2") reads for ``texts``.

    The same count as the embeddings worker bills (its tokenizer, special tokens, truncation to
    the tokenizer's maximum); only the tokenizer is loaded (cached per process).
    """
    return sum(embedding_token_counts(model, texts))


__all__ = [
    "ContextLengthExceeded",
    "embedding_token_counts",
    "embedding_tokenizer",
    "embedding_tokens",
    "endpoint_context_window",
    "endpoint_tokenizer",
    "prompt_check",
    "prompt_tokens_bound",
    "text_tokens_bound",
    "texts_tokens_max",
    "tokenizer_kind",
]
