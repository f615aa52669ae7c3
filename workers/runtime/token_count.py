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


# ---------------------------------------------------------------------------- context limits

# An unknown tokenizer (a remote endpoint without one): no token is assumed to span more bytes than this
# (the longest tokens of the BPE vocabularies we know: SmolLM2 81 bytes, cl100k 128, o200k 128).
UNKNOWN_MAX_TOKEN_BYTES = 128
# Normalizers that never shrink a text by more than a UTF-8 character's bytes per character they read
# (no deletions): a byte lower bound stays a bound when divided by 4. Any other normalizer (BERT's clean
# text, strip, strip accents) can delete input outright, so no byte bound exists for it.
_SAFE_NORMALIZERS = {"NFC", "NFD", "NFKC", "NFKD", "Lowercase", "Prepend", "Replace"}
_max_bytes: dict[int, tuple[Any, int | None]] = {}


class PromptTooLong(ValueError):
    """A prompt that cannot be run: more tokens than the model's context window leaves after the output
    cap, or than the per-request ceiling. ``tokens`` is exact when ``exact``, else a lower bound (the
    text was not tokenized: it provably cannot fit)."""

    def __init__(self, *, tokens: int, exact: bool, limit: int, limit_name: str, max_output_tokens: int = 0) -> None:
        self.tokens, self.exact, self.limit, self.limit_name = tokens, exact, limit, limit_name
        self.max_output_tokens = max_output_tokens
        counted = f"{tokens:,} tokens" if exact else f"at least {tokens:,} tokens"
        if limit_name == "context_window":
            message = (
                f"this model's context window is {limit:,} tokens; the prompt has {counted} and "
                f"max_tokens is {max_output_tokens:,} ({limit - max_output_tokens:,} tokens left for the prompt)"
            )
        else:
            message = f"the prompt has {counted}, over the per-request ceiling of {limit:,} prompt tokens"
        super().__init__(message)

    def detail(self) -> dict[str, Any]:
        return {"limit": self.limit, "limit_name": self.limit_name, "prompt_tokens": self.tokens,
                "prompt_tokens_exact": self.exact, "max_output_tokens": self.max_output_tokens}


def _normalizer_types(node: Any) -> list[str]:
    if not node:
        return []
    if node.get("type") == "Sequence":
        return [t for child in node.get("normalizers", []) for t in _normalizer_types(child)]
    return [str(node.get("type"))]


def max_token_bytes(tokenizer: Any | None) -> int | None:
    """The most UTF-8 bytes of input one token of ``tokenizer`` can stand for (cached per tokenizer), for
    cheap lower bounds on token counts; None when no such bound exists (a normalizer that deletes text).

    HF tokenizers: the longest vocabulary entry (added and special tokens included: their text in a prompt
    becomes one token): its characters for byte-level BPE (one character per byte), else the UTF-8 bytes
    of the entry as written, which never undercounts (SentencePiece writes a space as 3-byte "▁", byte
    fallback a byte as "<0x41>"); times 4 when a non-deleting normalizer may shrink the input first.
    tiktoken: the longest token's bytes. None (no tokenizer known): ``UNKNOWN_MAX_TOKEN_BYTES``, an
    assumption.
    """
    if tokenizer is None:
        return UNKNOWN_MAX_TOKEN_BYTES
    hit = _max_bytes.get(id(tokenizer))
    if hit is not None and hit[0] is tokenizer:
        return hit[1]
    value: int | None
    if _is_tiktoken(tokenizer):
        value = max([len(b) for b in tokenizer.token_byte_values()]
                    + [len(t.encode("utf-8")) for t in tokenizer.special_tokens_set])
    else:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            value = None
        else:
            normalizer = backend.normalizer
            types = _normalizer_types(json.loads(normalizer.__getstate__())) if normalizer is not None else []
            added = set(tokenizer.get_added_vocab())
            # Byte-level BPE writes each byte as one character: an entry's length is its bytes.
            byte_level = type(backend.decoder).__name__ == "ByteLevel"
            longest = max(
                len(token) if byte_level and token not in added else len(token.encode("utf-8"))
                for token in tokenizer.get_vocab()
            )
            value = None if any(t not in _SAFE_NORMALIZERS for t in types) else (4 if types else 1) * longest
    _max_bytes[id(tokenizer)] = (tokenizer, value)
    return value


def chat_tokens_lower_bound(tokenizer: Any | None, messages: list[dict[str, Any]]) -> int:
    """A lower bound on a chat's prompt tokens without tokenizing it: each content's UTF-8 bytes over the
    longest token's (``max_token_bytes``); 0 when no bound exists. Milliseconds even for megabytes."""
    per_token = max_token_bytes(tokenizer)
    if not per_token:
        return 0
    return sum(-(-len(content_text(m.get("content")).encode("utf-8")) // per_token) for m in messages)


def prompt_limit_check(
    *, tokens: int, exact: bool = True, max_output_tokens: int, context_window: int | None, ceiling: int | None
) -> None:
    """Raise ``PromptTooLong`` when ``tokens`` prompt tokens plus ``max_output_tokens`` do not fit
    ``context_window`` (None: unknown, not checked) or the prompt passes ``ceiling`` (None: none)."""
    if context_window is not None and tokens + max_output_tokens > context_window:
        raise PromptTooLong(tokens=tokens, exact=exact, limit=context_window, limit_name="context_window",
                            max_output_tokens=max_output_tokens)
    if ceiling is not None and tokens > ceiling:
        raise PromptTooLong(tokens=tokens, exact=exact, limit=ceiling, limit_name="max_prompt_tokens",
                            max_output_tokens=max_output_tokens)


def chat_prompt_check(
    tokenizer: Any | None, messages: list[dict[str, Any]], *, count: Any, max_output_tokens: int,
    context_window: int | None, ceiling: int | None,
) -> int:
    """Check a chat prompt against the limits -> its token count (``count()``: the exact count or bound).

    First a lower bound from the contents' bytes (``chat_tokens_lower_bound``): a prompt that provably
    cannot fit is refused without tokenizing (a 1.2 MB prompt in milliseconds); otherwise ``count()`` is
    checked. Raises ``PromptTooLong``.
    """
    # The bound first: count() (tokenizing) runs only for a prompt that may fit.
    prompt_limit_check(tokens=chat_tokens_lower_bound(tokenizer, messages), exact=False,
                       max_output_tokens=max_output_tokens, context_window=context_window, ceiling=ceiling)
    tokens = int(count())
    prompt_limit_check(tokens=tokens, max_output_tokens=max_output_tokens, context_window=context_window,
                       ceiling=ceiling)
    return tokens


# Embedding inputs: the embedder reads at most max_seq_length tokens (the rest is truncated, as
# sentence-transformers does); only this many characters per token of a text are tokenized at all, so a
# megabyte input costs what a page does. Real text averages 4-6 characters per token; WordPiece splits
# any word over 100 characters into pieces or one [UNK], so the first max_seq_length tokens are kept.
EMBED_CHARS_PER_TOKEN = 64


def embedding_input(text: str, max_seq_length: int) -> str:
    """``text`` cut to what an embedder reading ``max_seq_length`` tokens can use (see EMBED_CHARS_PER_TOKEN)."""
    return text[: max(1, max_seq_length) * EMBED_CHARS_PER_TOKEN]


__all__ = [
    "BYTES_PER_MESSAGE",
    "BYTES_PRIMING",
    "TIKTOKEN_ENCODINGS",
    "chat_template_ids",
    "EMBED_CHARS_PER_TOKEN",
    "PromptTooLong",
    "chat_prompt_check",
    "chat_tokens_bound",
    "chat_tokens_lower_bound",
    "content_text",
    "embedding_input",
    "encoding_for_model",
    "max_token_bytes",
    "normalized",
    "prompt_limit_check",
    "text_tokens",
    "texts_tokens_max",
    "tiktoken_encoding",
]
