"""Prompt token counts for reservations: exact where the model's tokenizer is known, a hard bound otherwise.

Three kinds of counter, chosen by the caller (``apps.costs.tokens`` for a ModelEndpoint):

- a Hugging Face tokenizer with a chat template (a local model, or one named on an endpoint):
  the template's ids, exactly what the model reads;
- a tiktoken encoding (OpenAI-family models): contents, roles and names counted exactly, plus
  a per-message and reply-priming overhead one token above OpenAI's cookbook figures;
- no tokenizer (``None``): UTF-8 bytes. A byte-level BPE never produces more tokens than the
  bytes it encodes (every token covers at least one byte); a SentencePiece tokenizer with byte
  fallback adds at most its dummy-prefix token per text, covered by the per-message overhead.

tiktoken's encodings normally download on first use; here they are built OFFLINE from the
vocabularies bundled in the ``quicktok-v1`` package, written where tiktoken caches downloads
(``TIKTOKEN_CACHE_DIR``, file name = sha1 of the URL) and then verified by tiktoken's own
SHA-256 check when it loads them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

# tiktoken: OpenAI's cookbook counts 3 tokens per message (<|im_start|>, <|im_sep|>/newline,
# <|im_end|>) plus the role, 1 per name, 3 to prime the reply. One more per message makes it a bound.
TIKTOKEN_PER_MESSAGE = 4
TIKTOKEN_PER_NAME = 1
TIKTOKEN_PRIMING = 3
# Unknown tokenizer: any chat template's delimiters around one message (special tokens, newlines,
# headers such as Llama 3's "<|start_header_id|>...<|end_header_id|>\n\n"), the role counted apart.
BYTES_PER_MESSAGE = 16
# ... and the reply priming plus a BOS and a short default system prompt some templates add.
BYTES_PRIMING = 64
# Tool definitions and tool calls: their JSON (providers render them more compactly) plus framing.
TOOL_OVERHEAD = 16
# An HF tokenizer without a chat template (a remote endpoint's named tokenizer).
HF_PER_MESSAGE = 8
HF_PRIMING = 8

TIKTOKEN_ENCODINGS = {
    # encoding: (tiktoken's URL for it, the number of mergeable ranks)
    "o200k_base": ("https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken", 199_998),
    "cl100k_base": ("https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken", 100_256),
}

# Model name prefixes (provider prefix such as "openai/" stripped) -> encoding. Longest prefix wins.
_OPENAI_PREFIXES = {
    "gpt-4o": "o200k_base",
    "chatgpt-4o": "o200k_base",
    "gpt-4.1": "o200k_base",
    "gpt-4.5": "o200k_base",
    "gpt-5": "o200k_base",
    "o1": "o200k_base",
    "o3": "o200k_base",
    "o4": "o200k_base",
    "gpt-oss": "o200k_base",
    "gpt-4": "cl100k_base",
    "gpt-3.5": "cl100k_base",
    "text-embedding-3": "cl100k_base",
    "text-embedding-ada-002": "cl100k_base",
}

_lock = threading.Lock()
_encodings: dict[str, Any] = {}


# ---------------------------------------------------------------------------- message text


def content_text(content: Any) -> str:
    """A message's text: OpenAI allows content as a list of parts; only text parts count."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return str(content)


def normalized(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**m, "content": content_text(m.get("content"))} for m in messages]


def _extras(message: dict[str, Any]) -> list[str]:
    """Texts a message carries besides its content: an assistant's tool calls, a tool result's call id."""
    out = []
    if message.get("tool_calls"):
        out.append(json.dumps(message["tool_calls"], ensure_ascii=False))
    if message.get("tool_call_id"):
        out.append(str(message["tool_call_id"]))
    return out


# ---------------------------------------------------------------------------- tiktoken, offline


def encoding_for_model(model: str) -> str | None:
    """The tiktoken encoding of an OpenAI-family model name (``openai/gpt-4o-mini`` too), else None."""
    name = (model or "").strip().lower().rsplit("/", 1)[-1]
    for prefix in sorted(_OPENAI_PREFIXES, key=len, reverse=True):
        if name == prefix or name.startswith((prefix + "-", prefix + ".", prefix + ":")):
            return _OPENAI_PREFIXES[prefix]
    return None


def _tiktoken_cache_dir(cache_dir: Path | None) -> Path:
    configured = os.environ.get("TIKTOKEN_CACHE_DIR")
    if configured:
        return Path(configured)
    if cache_dir is None:
        raise ValueError("no TIKTOKEN_CACHE_DIR and no cache_dir given for tiktoken's encodings")
    folder = Path(cache_dir) / "tiktoken"
    os.environ["TIKTOKEN_CACHE_DIR"] = str(folder)  # where tiktoken.load reads (process-wide)
    return folder


def _write_bpe_file(encoding: str, folder: Path) -> None:
    """Write tiktoken's ``.tiktoken`` file for ``encoding`` from quicktok's bundled vocabulary.

    Same bytes as OpenAI's published file (one ``base64(token) rank`` line per rank), so
    tiktoken's SHA-256 check of its expected hash passes; anything else makes it refuse the file.
    """
    import quicktok

    url, ranks = TIKTOKEN_ENCODINGS[encoding]
    path = folder / hashlib.sha1(url.encode()).hexdigest()
    if path.exists():
        return
    enc = quicktok.get_encoding(encoding)
    data = b"".join(
        base64.b64encode(enc.decode_single_token_bytes(i)) + b" " + str(i).encode() + b"\n"
        for i in range(ranks)
    )
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def tiktoken_encoding(encoding: str, *, cache_dir: Path | None = None) -> Any:
    """tiktoken's ``encoding`` (o200k_base, cl100k_base), built offline on first use; cached per process.

    ``cache_dir``: where to keep the files when TIKTOKEN_CACHE_DIR is not set (``<cache_dir>/tiktoken``).
    """
    if encoding not in TIKTOKEN_ENCODINGS:
        raise ValueError(f"no offline vocabulary for tiktoken encoding {encoding!r}")
    with _lock:
        hit = _encodings.get(encoding)
        if hit is not None:
            return hit
        import tiktoken

        _write_bpe_file(encoding, _tiktoken_cache_dir(cache_dir))
        enc = tiktoken.get_encoding(encoding)
        _encodings[encoding] = enc
        return enc


def _is_tiktoken(tokenizer: Any) -> bool:
    return hasattr(tokenizer, "encode_ordinary")


# ---------------------------------------------------------------------------- counting


def text_tokens(tokenizer: Any | None, text: str) -> int:
    """Tokens of ``text`` alone: exact with a tokenizer (no special tokens), else its UTF-8 bytes (a bound)."""
    text = text or ""
    if tokenizer is None:
        return len(text.encode("utf-8"))
    if _is_tiktoken(tokenizer):
        # Special-token text in a prompt is ordinary text to the API.
        return len(tokenizer.encode_ordinary(text))
    return len(tokenizer.encode(text, add_special_tokens=False))


def texts_tokens_max(tokenizer: Any | None, texts: list[str], batch_size: int = 256) -> int:
    """The largest ``text_tokens`` over ``texts`` (0 for none), counted in batches."""
    best = 0
    for start in range(0, len(texts), batch_size):
        batch = [t or "" for t in texts[start : start + batch_size]]
        if tokenizer is None:
            counts = [len(t.encode("utf-8")) for t in batch]
        elif _is_tiktoken(tokenizer):
            counts = [len(ids) for ids in tokenizer.encode_ordinary_batch(batch)]
        else:
            counts = [len(ids) for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]]
        best = max(best, *counts)
    return best


def chat_template_ids(
    tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict] | None = None
) -> list[int]:
    """The ids a chat model reads for ``messages`` (its chat template, with the generation prompt)."""
    extra = {"tools": tools} if tools else {}
    ids = tokenizer.apply_chat_template(
        normalized(messages), add_generation_prompt=True, tokenize=True, return_dict=False, **extra
    )
    return list(ids)


def _tools_tokens(tokenizer: Any | None, tools: list[dict] | None) -> int:
    if not tools:
        return 0
    return text_tokens(tokenizer, json.dumps(tools, ensure_ascii=False)) + TOOL_OVERHEAD * len(tools)


def chat_tokens_bound(
    tokenizer: Any | None, messages: list[dict[str, Any]], tools: list[dict] | None = None
) -> int:
    """An upper bound on the prompt tokens of a chat (exact for an HF tokenizer's own chat template).

    - HF tokenizer with a chat template: the template's ids (falls back to contents + overhead
      when the template rejects the messages);
    - tiktoken encoding: contents, roles, names, tool calls exactly, plus ``TIKTOKEN_PER_MESSAGE``
      per message and ``TIKTOKEN_PRIMING``;
    - ``None``: UTF-8 bytes of every text plus ``BYTES_PER_MESSAGE`` per message and ``BYTES_PRIMING``.

    ``tools`` (function definitions sent with the call): their JSON's tokens plus a framing allowance.
    """
    if tokenizer is not None and not _is_tiktoken(tokenizer) and getattr(tokenizer, "chat_template", None):
        try:
            return len(chat_template_ids(tokenizer, messages, tools))
        except Exception:  # noqa: BLE001 - a template that refuses these messages: count the parts instead
            pass
    if tokenizer is None:
        per_message, per_name, priming = BYTES_PER_MESSAGE, 0, BYTES_PRIMING
    elif _is_tiktoken(tokenizer):
        per_message, per_name, priming = TIKTOKEN_PER_MESSAGE, TIKTOKEN_PER_NAME, TIKTOKEN_PRIMING
    else:
        per_message, per_name, priming = HF_PER_MESSAGE, 1, HF_PRIMING
    total = priming + _tools_tokens(tokenizer, tools)
    for message in messages:
        total += per_message + text_tokens(tokenizer, str(message.get("role") or ""))
        total += text_tokens(tokenizer, content_text(message.get("content")))
        if message.get("name"):
            total += per_name + text_tokens(tokenizer, str(message["name"]))
        for extra in _extras(message):
            total += TOOL_OVERHEAD + text_tokens(tokenizer, extra)
    return total


__all__ = [
    "BYTES_PER_MESSAGE",
    "BYTES_PRIMING",
    "TIKTOKEN_ENCODINGS",
    "chat_template_ids",
    "chat_tokens_bound",
    "content_text",
    "encoding_for_model",
    "normalized",
    "text_tokens",
    "texts_tokens_max",
    "tiktoken_encoding",
]
