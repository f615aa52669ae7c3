"""Token-aware chunking with character spans.

The document is tokenized once with the embedding model's own (fast) tokenizer;
chunk boundaries are chosen on the token offsets, so every chunk fits the model
without silent truncation, and each chunk keeps its exact character span into the
original text (citations highlight `text[start:end]`).

Cut preference inside the allowed window: paragraph break > sentence end / line
break > any word boundary > a hard cut (only for a single word longer than a chunk).
"""

from __future__ import annotations

import re
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

# Quality of cutting *before* a token.
_HARD, _WORD, _SENTENCE, _PARAGRAPH, _END = 0, 1, 2, 3, 4
_PARAGRAPH_RE = re.compile(r"\n[ \t\r\f\v]*\n")
_SENTENCE_RE = re.compile(r"[.!?\u3002][\"'\u201d\u2019)\]]*(?=\s)|\n")


@dataclass(frozen=True)
class TextChunk:
    text: str
    start: int  # character offset into the original text
    end: int  # exclusive; text == original[start:end]
    token_count: int  # tokens without the model's special tokens


_UNTRUNCATED: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_UNTRUNCATED_LOCK = threading.Lock()


def _backend(tokenizer: Any) -> Any | None:
    """A private copy of the Rust tokenizer with truncation and padding off.

    Faster than the Python wrapper and free of its "sequence longer than max length"
    warning. A copy, because some tokenizer.json files enable truncation (MiniLM's
    says 128) and the shared tokenizer must not be mutated under other threads.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "to_str"):
        return None
    with _UNTRUNCATED_LOCK:
        try:
            clone = _UNTRUNCATED.get(tokenizer)
        except TypeError:  # not weak-referenceable
            clone = None
        if clone is None:
            from tokenizers import Tokenizer

            clone = Tokenizer.from_str(backend.to_str())
            clone.no_truncation()
            clone.no_padding()
            try:
                _UNTRUNCATED[tokenizer] = clone
            except TypeError:
                pass
    return clone


def _offsets(tokenizer: Any, text: str) -> np.ndarray:
    """(n, 2) int64 character spans of the tokens of `text`, special tokens excluded."""
    backend = _backend(tokenizer)
    if backend is not None:
        offsets = backend.encode(text, add_special_tokens=False).offsets
    else:
        if not getattr(tokenizer, "is_fast", False):
            raise TypeError("chunk_text needs a fast tokenizer (offsets mapping)")
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, truncation=False)[
            "offset_mapping"
        ]
    arr = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    # Some tokenizers emit zero-width tokens (e.g. a lone space marker); they carry no text.
    return arr[arr[:, 1] > arr[:, 0]]


def _count_tokens(tokenizer: Any, texts: list[str]) -> list[int]:
    backend = _backend(tokenizer)
    if backend is not None:
        return [len(enc.ids) for enc in backend.encode_batch(texts, add_special_tokens=False)]
    enc = tokenizer(texts, add_special_tokens=False, truncation=False)
    return [len(ids) for ids in enc["input_ids"]]


def _cut_levels(text: str, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """levels[k] = how good it is to cut before token k (levels[n] = end of text)."""
    n = len(starts)
    levels = np.full(n + 1, _HARD, dtype=np.int8)
    if n > 1:
        levels[1:n][starts[1:] > ends[:-1]] = _WORD  # whitespace between tokens
    for pattern, level in ((_SENTENCE_RE, _SENTENCE), (_PARAGRAPH_RE, _PARAGRAPH)):
        positions = np.fromiter((m.end() for m in pattern.finditer(text)), dtype=np.int64)
        if positions.size:
            # First token starting at or after the boundary; only if that is a real gap.
            idx = np.searchsorted(starts, positions, side="left")
            idx = idx[(idx > 0) & (idx < n)]
            idx = idx[levels[idx] >= _WORD]
            levels[idx] = np.maximum(levels[idx], level)
    levels[n] = _END
    return levels


def chunk_text(
    text: str,
    *,
    tokenizer: Any,
    chunk_tokens: int = 256,
    overlap_tokens: int = 32,
    max_tokens: int | None = None,
) -> list[TextChunk]:
    """Split `text` into overlapping chunks of at most min(chunk_tokens, max_tokens) tokens.

    `max_tokens` is the embedding model's hard limit (max_seq_length minus special
    tokens); it is enforced by re-counting each chunk's own tokenization, because a
    substring can tokenize differently from a slice of the whole (rare, but a chunk
    over the limit would be truncated silently by the embedder).
    """
    if chunk_tokens < 1:
        raise ValueError("chunk_tokens must be at least 1")
    if overlap_tokens < 0:
        raise ValueError("overlap_tokens must be >= 0")
    limit = chunk_tokens if max_tokens is None else min(chunk_tokens, max_tokens)
    if limit < 1:
        raise ValueError("max_tokens must be at least 1")
    overlap = min(overlap_tokens, limit // 2)

    offsets = _offsets(tokenizer, text)
    n = len(offsets)
    if n == 0:
        return []
    starts, ends = offsets[:, 0], offsets[:, 1]
    levels = _cut_levels(text, starts, ends)

    spans: list[tuple[int, int]] = []  # token index ranges [i, j)
    i = 0
    while i < n:
        hi = min(i + limit, n)
        if hi == n:
            spans.append((i, n))
            break
        # Do not cut in the first half of the window: it would make tiny chunks.
        lo = i + max(1, limit // 2)
        window = levels[lo : hi + 1]
        best = int(window.max())
        j = lo + int(np.flatnonzero(window == best)[-1])  # the latest cut of the best kind
        spans.append((i, j))
        nxt = j
        if overlap:
            # Step back `overlap` tokens, then forward to a word start so chunks never begin mid-word.
            candidates = np.flatnonzero(levels[max(j - overlap, i + 1) : j] >= _WORD)
            if candidates.size:
                nxt = max(j - overlap, i + 1) + int(candidates[0])
        i = nxt

    chunks: list[TextChunk] = []
    counts = _count_tokens(tokenizer, [text[starts[a] : ends[b - 1]] for a, b in spans])
    hard_limit = limit
    for (a, b), count in zip(spans, counts, strict=True):
        while count > hard_limit and b - a > 1:
            b -= max(1, count - hard_limit)
            count = _count_tokens(tokenizer, [text[starts[a] : ends[b - 1]]])[0]
        s, e = int(starts[a]), int(ends[b - 1])
        chunks.append(TextChunk(text=text[s:e], start=s, end=e, token_count=count))
    return chunks
