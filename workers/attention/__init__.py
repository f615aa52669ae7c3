"""Attention backends over a cached fixed context, chosen by name (no Django here).

- ``full``: exact attention over every fixed-context key (the reference, `reference.py`);
- ``squeezed``: Squeezed Attention, k-means key centroids + a calibrated threshold (`squeezed.py`);
- ``retrieval``: RetrievalAttention, per-head inner-product ANN + static set, merged with
  log-sum-exp (`retrieval.py`).

`get_backend(name, **options)` builds a backend with its config (options are the config
dataclass's fields; unknown ones raise and list the valid ones). `fixed_context.py` runs the
model: the one-off prefill of a fixed context into the KV store, index builds, and answering a
question over the cached KV with a backend. How it hooks into transformers: `base.py`.
"""

from __future__ import annotations

from typing import Any

from workers.attention.reference import FullBackend
from workers.attention.retrieval import RetrievalBackend, RetrievalConfig
from workers.attention.squeezed import SqueezedBackend, SqueezedConfig
from workers.config_options import config_from_options

# The backends share no base class; their common surface is `name`, `config_class` and the constructor.
BackendClass = type[FullBackend] | type[SqueezedBackend] | type[RetrievalBackend]

BACKENDS: dict[str, BackendClass] = {
    FullBackend.name: FullBackend,
    SqueezedBackend.name: SqueezedBackend,
    RetrievalBackend.name: RetrievalBackend,
}


def backend_config(name: str, options: dict[str, Any] | None = None) -> Any:
    """The backend's config dataclass from plain options (None for "full"). Raises ValueError."""
    return config_from_options(_backend_class(name).config_class, options, what=f"attention backend {name!r}")


def _backend_class(name: str) -> BackendClass:
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown attention backend {name!r} (valid: {', '.join(sorted(BACKENDS))})") from None


def get_backend(name: str, **options: Any) -> Any:
    """A backend instance by name, configured from keyword options."""
    return _backend_class(name)(backend_config(name, options))


__all__ = ["BACKENDS", "RetrievalConfig", "SqueezedConfig", "backend_config", "get_backend"]
