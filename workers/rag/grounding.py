"""The contrastive grounding signal: how much the retrieved passages raised the model's belief in its answer.

An answer drawn from the passages is far more likely given them than given the question alone; an answer
the model would have said anyway (its prior, a fluent guess) is about as likely either way. The signal is
``grounding_gain = mean log p(answer | passages, question) - mean log p(answer | question)``: the first term
is the generation's own token log-probabilities (recorded in the decode loop, free), the second one short
teacher-forced prefill of the question-only prompt followed by the answer's tokens on the same local model
(``question_only_logprobs``). Context-conditioned against unconditioned likelihood is a known hallucination
signal (e.g. "pointwise mutual information" between answer and context; CAD, Shi et al. 2023).

Plain data in, plain data out; torch is imported when the prefill runs. The caller (the pipeline, through
the service's metered hook) bills the prefill's device seconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from workers.rag.quality import LOGPROB_FLOOR


@dataclass(frozen=True)
class QuestionOnly:
    """The answer's tokens scored after the question-only prompt."""

    logprobs: list[float]  # one per answer token (and the end-of-sequence token when the answer stopped)
    prompt_tokens: int  # tokens read by the prefill: the question-only prompt plus the answer's
    compute_s: float  # device seconds of the forward pass (``workers.runtime.device_clock``, as the meter bills)

    @property
    def mean(self) -> float | None:
        return sum(self.logprobs) / len(self.logprobs) if self.logprobs else None


def question_only_messages(question: str, system_prompt: str = "") -> list[dict[str, Any]]:
    """The prompt the model would read for ``question`` with no passages (the naive strategy's, passages
    omitted: the question alone as the user turn)."""
    from workers.prompting.naive import NaivePrompting

    return NaivePrompting().build_messages(system_prompt=system_prompt, question=question, passages=[])


def answer_ids(tokenizer: Any, answer: str, *, eos: int | None) -> list[int]:
    """The answer's token ids as the model would have produced them, then ``eos`` (None: none, an answer cut
    by the token cap)."""
    ids = list(tokenizer.encode(answer, add_special_tokens=False))
    return ids + ([eos] if eos is not None else [])


def teacher_forced_logprobs(model: Any, prompt_ids: Sequence[int], target_ids: Sequence[int]) -> list[float]:
    """log p(target_ids[i] | prompt_ids + target_ids[:i]) for each i, from one forward pass of ``model`` (a
    transformers causal LM) over the whole sequence; each clipped at ``LOGPROB_FLOOR``."""
    import torch

    if not target_ids:
        return []
    assert prompt_ids, "the answer is scored after a prompt"
    ids = torch.tensor([[*prompt_ids, *target_ids]], dtype=torch.long, device=model.device)
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0].float()  # (T, V)
    start = len(prompt_ids) - 1  # the logits at position t predict token t + 1
    rows = torch.log_softmax(logits[start:start + len(target_ids)], dim=-1)  # (A, V)
    picked = rows.gather(1, torch.tensor(list(target_ids), device=rows.device).unsqueeze(1)).squeeze(1)
    return [max(float(v), LOGPROB_FLOOR) if not math.isnan(float(v)) else LOGPROB_FLOOR for v in picked]


def question_only_logprobs(
    lm: Any, *, question: str, answer: str, stopped: bool, system_prompt: str = "",
) -> QuestionOnly:
    """``answer``'s tokens scored by ``lm`` (a ``workers.runtime.local_lm.LoadedModel``) after the question-only
    prompt, the end-of-sequence token after them when the generation ``stopped`` (as the decode loop recorded
    it). Holds the model's lock for the forward pass."""
    from workers.runtime.decode import eos_ids
    from workers.runtime.device_clock import device_clock
    from workers.runtime.token_count import chat_template_ids

    prompt = chat_template_ids(lm.tokenizer, question_only_messages(question, system_prompt))
    eos = lm.tokenizer.eos_token_id if lm.tokenizer.eos_token_id is not None else min(eos_ids(lm), default=None)
    target = answer_ids(lm.tokenizer, answer, eos=eos if stopped else None)
    clock = device_clock(lm.device)  # the meter's billing clock: the thread's CPU time on a one-thread CPU
    with lm.lock:
        started = clock()
        logprobs = teacher_forced_logprobs(lm.model, prompt, target)
        if str(lm.device).startswith("cuda"):
            import torch

            torch.cuda.synchronize(lm.device)
        compute_s = clock() - started
    return QuestionOnly(logprobs=[round(v, 3) for v in logprobs], prompt_tokens=len(prompt) + len(target),
                        compute_s=compute_s)


def grounding_gain(with_passages: Sequence[float] | None, question_only: Sequence[float] | None) -> float | None:
    """Mean token log-probability of the answer with the passages minus without them (None when either is
    unknown or empty). Positive: the passages made the answer more likely."""
    if not with_passages or not question_only:
        return None
    clip = lambda v: LOGPROB_FLOOR if math.isnan(v) else min(max(float(v), LOGPROB_FLOOR), 0.0)  # noqa: E731
    return (sum(map(clip, with_passages)) / len(with_passages)
            - sum(map(clip, question_only)) / len(question_only))


__all__ = [
    "QuestionOnly",
    "answer_ids",
    "grounding_gain",
    "question_only_logprobs",
    "question_only_messages",
    "teacher_forced_logprobs",
]
