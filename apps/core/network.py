"""The outbound network policy (workers/runtime/net_guard.py) built from the operator's settings: the
engine takes it as plain data. Team-chosen destinations — a team's model endpoints, agents' http tools —
connect only to public addresses, or to the private ones the operator lists."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from django.conf import settings

if TYPE_CHECKING:
    from workers.runtime.net_guard import NetworkPolicy

ENDPOINTS = "PARSIMONY_ENDPOINT_ALLOWED_PRIVATE_NETWORKS"
HTTP_TOOLS = "PARSIMONY_AGENT_HTTP_ALLOWED_PRIVATE_NETWORKS"


def network_policy(*, setting: str) -> NetworkPolicy:
    """The policy whose exceptions the named setting lists (validated at start-up)."""
    # Imported here: the core app loads no engine module at start-up (tests/apps/core/test_jobs.py).
    from workers.runtime.net_guard import NetworkPolicy

    return NetworkPolicy.from_entries(getattr(settings, setting))


def url_refusal(*, url: str, setting: str) -> str | None:
    """Why ``url`` is refused without looking up DNS (an address literal or a localhost name outside the
    policy), else None: the check a form can give at once. Names that resolve to private addresses are
    refused when the connection is made."""
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return None
    reason = network_policy(setting=setting).static_reason(host) if host else None
    if reason is None:
        return None
    return f"{reason} (the operator's setting {setting} lists the allowed exceptions)"
