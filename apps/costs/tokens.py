"""Prompt token bounds for reservations, per ModelEndpoint, without loading any model weights.

What counts an endpoint's tokens (``endpoint_tokenizer``), in order:

- a local endpoint: its model's own tokenizer and chat template (exact: what the model reads);
- an endpoint with ``tokenizer`` set: that Hugging Face tokenizer, from local files only;
- an OpenAI-family remote model (``remote_model`` or ``price_name`` like gpt-4o*, gpt-4*, o3*,
  gpt-5*): tiktoken's encoding, built offline (``workers.runtime.token_count``);
- none known: ``None``, i.e. the UTF-8 byte bound (see docs/costs.md for what it assumes).

Tokenizers are loaded lazily and cached per process (torch is never imported here).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from django.conf import settings

from apps.costs.models import EndpointKind, ModelEndpoint

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
    if not texts:
        return []
    return [len(ids) for ids in embedding_tokenizer(model)(list(texts), truncation=True)["input_ids"]]


def embedding_tokens(model: str, texts: list[str]) -> int:
    """Exactly the tokens an embedding model (e.g. "all-MiniLM-L6-v2") reads for ``texts``.

    The same count as the embeddings worker bills (its tokenizer, special tokens, truncation to
    the tokenizer's maximum); only the tokenizer is loaded (cached per process).
    """
    return sum(embedding_token_counts(model, texts))


__all__ = [
    "embedding_token_counts",
    "embedding_tokenizer",
    "embedding_tokens",
    "endpoint_tokenizer",
    "prompt_tokens_bound",
    "text_tokens_bound",
    "texts_tokens_max",
    "tokenizer_kind",
]
