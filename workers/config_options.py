"""Plain options (a pipeline's JSON) -> a technique's config dataclass, shared by the registries.

Attention backends and prompting strategies each declare a `config_class` (a dataclass, or None
when they take no options); unknown option names are refused with the valid ones listed, and
the dataclass's own `__post_init__` refuses impossible values.
"""

from __future__ import annotations

import dataclasses
from typing import Any


def config_from_options(config_class: type | None, options: dict[str, Any] | None, *, what: str) -> Any:
    """`config_class(**options)`, or None for a technique without options. Raises ValueError.

    `what` names the technique in the messages, e.g. "attention backend 'squeezed'"."""
    options = dict(options or {})
    if config_class is None:
        if options:
            raise ValueError(f"{what} takes no options (got {', '.join(sorted(options))})")
        return None
    fields = {f.name for f in dataclasses.fields(config_class)}
    unknown = set(options) - fields
    if unknown:
        raise ValueError(f"unknown options for {what}: {', '.join(sorted(unknown))} "
                         f"(valid: {', '.join(sorted(fields))})")
    return config_class(**options)
