"""Record what a test's generations were sent: every call of ``workers.runtime.meter.generate`` appends its
messages, and (``reply`` given) the engine's echo model answers with ``reply``."""

from __future__ import annotations

from typing import Any


def prompts_record(monkeypatch: Any, *, reply: str | None = None) -> list[list[dict]]:
    """The list the messages of every generation are appended to, in order."""
    import workers.runtime.meter as meter

    prompts: list[list[dict]] = []
    real = meter.generate

    def recording(*args, **kwargs):
        prompts.append(kwargs["messages"])
        return real(*args, **kwargs)

    monkeypatch.setattr(meter, "generate", recording)
    if reply is not None:
        from apps.costs import metering
        from workers.runtime.meter import EchoTarget

        monkeypatch.setattr(metering, "_target_override", lambda endpoint: EchoTarget(name=endpoint.name, reply=reply))
    return prompts
