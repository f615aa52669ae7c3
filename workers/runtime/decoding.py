"""Decoding settings: the degeneration guard, repetition penalties and stop strings, per model.

Small local models loop ("The answer is:" twenty times until the token cap): the decode loop
(`workers.runtime.decode`) stops such a loop as soon as it is recognisable (finish_reason
"repetition") instead of paying for the rest of the cap, and may also bend the logits away from
repeats (transformers' repetition-penalty and no-repeat-n-gram processors, over the generated ids
only: a RAG answer must be free to copy the passages it read). Each model's defaults live in
`MODEL_DEFAULTS`; a pipeline overrides them with its `decoding_options` (`decoding_settings`
validates both). No Django, no torch at import time.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any


@dataclass(frozen=True)
class DecodingSettings:
    """How a local model decodes, beyond greedy/sampling and the caps.

    repetition_guard: stop a loop with finish_reason "repetition" (see `loop_at_tail`).
    loop_min_tokens / loop_repeats: a tail that repeats one n-gram at least `loop_repeats` times and
    spans at least `loop_min_tokens` tokens is a loop (so "very very" or "1\\n2\\n3" never is).
    segment_repeats: the same line or sentence (at least `segment_min_chars` characters) seen that many
    times, not necessarily in a row, is a loop (a sentence's first copy often tokenizes differently
    from the next ones, so a token-level period can miss it).
    repetition_penalty: > 1 divides the logits of tokens already generated (1.0: off).
    no_repeat_ngram_size: n > 0 forbids generating any n-gram twice (0: off).
    stop: extra stop strings, added to the caller's.
    """

    repetition_guard: bool = True
    loop_min_tokens: int = 20
    loop_repeats: int = 3
    loop_max_period: int = 64
    segment_repeats: int = 3
    segment_min_chars: int = 10
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    stop: tuple[str, ...] = ()
    # Sampling: temperature 0 decodes greedily; top_p < 1 samples from the smallest set of tokens whose
    # probability reaches it (None: the model's generation config). A request's own (OpenAI's
    # `temperature`, `top_p`) override the pipeline's for that request.
    temperature: float = 0.0
    top_p: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "stop": list(self.stop)}


# Per-model defaults, matched by a substring of the model's name or source (first match wins).
# SmolLM2-135M loops on 5–10% of RAG answers (docs/benchmarks.md, "Degeneration guard"): the guard
# stops them with no other answer changed. Forbidding repeated 4-grams prevents them too but also
# forbids legitimate repeats (counted lists, table rules), so it stays a pipeline option.
MODEL_DEFAULTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("smollm2", {"repetition_guard": True}),
    ("gemma", {"repetition_guard": True}),
)

# What a pipeline may override, and the accepted range of each.
OVERRIDABLE = ("repetition_guard", "repetition_penalty", "no_repeat_ngram_size", "stop", "temperature", "top_p")
_MAX_STOP = 8
_MAX_STOP_CHARS = 50


def decoding_settings(model: str = "", overrides: dict[str, Any] | None = None) -> DecodingSettings:
    """The model's defaults with a pipeline's `overrides` applied; ValueError names a bad option."""
    settings = DecodingSettings()
    name = (model or "").lower()
    for pattern, values in MODEL_DEFAULTS:
        if pattern in name:
            settings = replace(settings, **values)
            break
    if not overrides:
        return settings
    if not isinstance(overrides, dict):
        raise ValueError("decoding options must be an object")
    unknown = sorted(set(overrides) - set(OVERRIDABLE))
    if unknown:
        raise ValueError(f"unknown decoding options: {', '.join(unknown)} (valid: {', '.join(OVERRIDABLE)})")
    chosen: dict[str, Any] = {}
    if "repetition_guard" in overrides:
        if not isinstance(overrides["repetition_guard"], bool):
            raise ValueError("repetition_guard must be true or false")
        chosen["repetition_guard"] = overrides["repetition_guard"]
    if "repetition_penalty" in overrides:
        penalty = overrides["repetition_penalty"]
        if isinstance(penalty, bool) or not isinstance(penalty, (int, float)) or not 1.0 <= penalty <= 2.0:
            raise ValueError("repetition_penalty must be a number between 1.0 (off) and 2.0")
        chosen["repetition_penalty"] = float(penalty)
    if "no_repeat_ngram_size" in overrides:
        size = overrides["no_repeat_ngram_size"]
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= 20:
            raise ValueError("no_repeat_ngram_size must be an integer between 0 (off) and 20")
        chosen["no_repeat_ngram_size"] = size
    if "stop" in overrides:
        stop = overrides["stop"]
        if (
            not isinstance(stop, list) or len(stop) > _MAX_STOP
            or not all(isinstance(s, str) and 0 < len(s) <= _MAX_STOP_CHARS for s in stop)
        ):
            raise ValueError(f"stop must be a list of at most {_MAX_STOP} non-empty strings "
                             f"of at most {_MAX_STOP_CHARS} characters")
        chosen["stop"] = tuple(stop)
    chosen.update(_sampling_overrides(overrides))
    return replace(settings, **chosen)


def _sampling_overrides(overrides: dict[str, Any]) -> dict[str, float]:
    """`temperature` (0..2, 0: greedy) and `top_p` ((0, 1]; None: the model's) of `overrides`, checked."""
    chosen: dict[str, float] = {}
    if "temperature" in overrides:
        temperature = overrides["temperature"]
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
            raise ValueError("temperature must be a number between 0 (greedy) and 2")
        chosen["temperature"] = float(temperature)
    if overrides.get("top_p") is not None:
        top_p = overrides["top_p"]
        if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
            raise ValueError("top_p must be a number in (0, 1]")
        chosen["top_p"] = float(top_p)
    return chosen


# ---------------------------------------------------------------------------- loop detection


def loop_at_tail(ids: Sequence[int], settings: DecodingSettings) -> int | None:
    """The period of a token loop ending at the tail of `ids`, or None.

    A loop: the last `copies * n` ids are `copies` repeats of one n-gram (1 <= n <= loop_max_period)
    with copies >= loop_repeats and copies * n >= loop_min_tokens. Checked after every token, so
    it fires on the first token that completes one; cost: about one comparison per period tried.
    """
    total = len(ids)
    for n in range(1, min(settings.loop_max_period, total // 2) + 1):
        copies = max(settings.loop_repeats, -(-settings.loop_min_tokens // n))
        span = copies * n
        if span > total:
            continue
        if all(ids[total - 1 - i] == ids[total - 1 - i - n] for i in range(span - n)):
            return n
    return None


# Where a segment ends: after sentence punctuation, or at a line break.
_SEGMENT_END = re.compile(r"(?<=[.!?])|\n")
SEGMENT_END_CHARS = frozenset(".!?\n")


def segment_loop(text: str, settings: DecodingSettings) -> str | None:
    """The line or sentence that ends `text` if `text` holds it `segment_repeats` times, or None.

    Called when the text just ended a segment. Short segments ("", "-", "```", "1.", "Yes.") never
    count: lists and code repeat them legitimately."""
    if not text or text.rstrip(" \t")[-1:] not in SEGMENT_END_CHARS:
        return None
    segments = [part.strip() for part in _SEGMENT_END.split(text)]
    segments = [part for part in segments if part]
    if not segments or len(segments[-1]) < settings.segment_min_chars:
        return None
    return segments[-1] if segments.count(segments[-1]) >= settings.segment_repeats else None


def degenerate(
    ids: Sequence[int], text_of: Callable[[list[int]], str], settings: DecodingSettings | None = None
) -> bool:
    """Whether the guard would have stopped `ids` somewhere (for outputs generated without it)."""
    settings = settings or DecodingSettings()
    ids = list(ids)
    for end in range(1, len(ids) + 1):
        if loop_at_tail(ids[:end], settings) is not None:
            return True
    text = text_of(ids)
    return any(segment_loop(text[: i + 1], settings) for i, ch in enumerate(text) if ch in SEGMENT_END_CHARS)


def logits_processors(settings: DecodingSettings) -> list[Any]:
    """transformers logits processors for the penalties (empty when they are off)."""
    processors: list[Any] = []
    if settings.repetition_penalty != 1.0:
        from transformers import RepetitionPenaltyLogitsProcessor

        processors.append(RepetitionPenaltyLogitsProcessor(settings.repetition_penalty))
    if settings.no_repeat_ngram_size > 0:
        from transformers import NoRepeatNGramLogitsProcessor

        processors.append(NoRepeatNGramLogitsProcessor(settings.no_repeat_ngram_size))
    return processors


__all__ = [
    "MODEL_DEFAULTS",
    "OVERRIDABLE",
    "DecodingSettings",
    "decoding_settings",
    "degenerate",
    "segment_loop",
    "logits_processors",
    "loop_at_tail",
]
