from __future__ import annotations

import pytest

from workers.ingest.chunking import chunk_text

pytestmark = pytest.mark.slow  # loads the real MiniLM tokenizer

PARAGRAPHS = [
    " ".join(f"Sentence {p}.{s} talks about retrieval budgets and token costs in detail." for s in range(12))
    for p in range(8)
]
DOCUMENT = "\n\n".join(PARAGRAPHS)


def _tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"])


def test_it_returns_exact_character_spans(minilm_tokenizer):
    chunks = chunk_text(DOCUMENT, tokenizer=minilm_tokenizer, chunk_tokens=64, overlap_tokens=8)
    assert len(chunks) > 3
    for chunk in chunks:
        assert DOCUMENT[chunk.start : chunk.end] == chunk.text
        assert chunk.token_count == _tokens(minilm_tokenizer, chunk.text)
    assert chunks[0].start == 0 and chunks[-1].end == len(DOCUMENT)


def test_it_never_exceeds_the_model_limit(minilm_tokenizer, embedder):
    limit = embedder.max_chunk_tokens
    assert limit == 254  # max_seq_length 256 minus [CLS] and [SEP]
    # Long unbroken "words" and punctuation runs are where naive chunkers overflow.
    nasty = DOCUMENT + "\n\n" + "x" * 3000 + " " + "anti-dis-establish-ment " * 200 + "€" * 500
    chunks = chunk_text(
        nasty, tokenizer=minilm_tokenizer, chunk_tokens=10_000, overlap_tokens=32, max_tokens=limit
    )
    assert all(0 < c.token_count <= limit for c in chunks)
    assert all(_tokens(minilm_tokenizer, c.text) <= limit for c in chunks)
    assert all(nasty[c.start : c.end] == c.text for c in chunks)


def test_it_covers_the_whole_text_with_overlap(minilm_tokenizer):
    chunks = chunk_text(DOCUMENT, tokenizer=minilm_tokenizer, chunk_tokens=64, overlap_tokens=16)
    for before, after in zip(chunks, chunks[1:], strict=False):
        assert after.start < before.end  # overlapping, no gap
        assert after.start > before.start  # always moving forward
        assert DOCUMENT[after.start - 1].isspace()  # starts on a word boundary


def test_it_prefers_paragraph_then_sentence_boundaries(minilm_tokenizer):
    per_paragraph = _tokens(minilm_tokenizer, PARAGRAPHS[0])
    chunks = chunk_text(
        DOCUMENT, tokenizer=minilm_tokenizer, chunk_tokens=per_paragraph + 5, overlap_tokens=0
    )
    assert [c.text for c in chunks] == PARAGRAPHS
    small = chunk_text(PARAGRAPHS[0], tokenizer=minilm_tokenizer, chunk_tokens=40, overlap_tokens=0)
    assert all(c.text.endswith(".") for c in small)


def test_it_returns_nothing_for_blank_text(minilm_tokenizer):
    assert chunk_text("  \n\n ", tokenizer=minilm_tokenizer) == []


def test_it_rejects_bad_sizes(minilm_tokenizer):
    with pytest.raises(ValueError):
        chunk_text("text", tokenizer=minilm_tokenizer, chunk_tokens=0)
