"""Naive RAG prompting: every passage, numbered, in one user message before the question.

This is also the baseline every cost saving is measured against. The instruction wording
follows the anchors in shared/notes/anchors.md so results compare.
"""

from __future__ import annotations

from workers.prompting.base import Passage

INSTRUCTION = "Answer the question using the context. Reply with a short answer only."


def format_context(passages: list[Passage]) -> str:
    return "\n\n".join(f"[{n}] Title: {p.title}\n{p.text}" for n, p in enumerate(passages, start=1))


class NaivePrompting:
    name = "naive"
    runs_model = False

    def build_messages(self, *, system_prompt: str, question: str, passages: list[Passage]) -> list[dict]:
        messages: list[dict] = []
        if system_prompt:
            messages.append({"role": "system", "content": system_prompt})
        if passages:
            user = f"{INSTRUCTION}\n\nContext:\n{format_context(passages)}\n\nQuestion: {question}"
        else:
            user = question
        messages.append({"role": "user", "content": user})
        return messages
