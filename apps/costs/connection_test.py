"""A model endpoint's "Test connection": GET {base_url}/models (free), else a 1-token completion through
the metered call (its cost in the ledger). Beside ``metering`` (which it uses), not in ``services``,
which ``metering`` imports."""

from __future__ import annotations

import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.conf import settings

from apps.core.errors import ServiceError
from apps.core.network import ENDPOINTS
from apps.costs.metering import endpoint_api_key, endpoint_network_policy, model_call
from apps.costs.models import ZERO, EndpointKind, ModelEndpoint
from apps.costs.services.ledger import LedgerContext

TEST_PIPELINE = "endpoint-test"
TEST_PROMPT = [{"role": "user", "content": "Reply with OK."}]


@dataclass(frozen=True)
class ConnectionTest:
    ok: bool
    message: str
    method: str  # "models" (GET /models, free) or "completion" (a 1-token completion, metered)
    latency_ms: int = 0
    cost: Decimal = ZERO

    def as_dict(self) -> dict[str, Any]:
        from apps.costs.money_format import money_str

        return {"ok": self.ok, "message": self.message, "method": self.method, "latency_ms": self.latency_ms,
                "cost": money_str(self.cost)}


def _list_models(endpoint: ModelEndpoint, api_key: str | None, timeout_s: float) -> tuple[int | None, Any, str]:
    """(HTTP status or None, JSON body or None, error text) of GET {base_url}/models."""
    import httpx

    from workers.runtime.net_guard import blocked_message, guarded_transport

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    policy = endpoint_network_policy(endpoint)
    transport = guarded_transport(policy) if policy is not None else None
    try:
        with httpx.Client(transport=transport, follow_redirects=False, timeout=timeout_s) as client:
            response = client.get(endpoint.base_url.rstrip("/") + "/models", headers=headers)
    except httpx.TimeoutException:
        return None, None, f"no answer within {timeout_s:g} s"
    except httpx.HTTPError as exc:
        blocked = blocked_message(exc)
        if blocked is not None:
            return None, None, f"refused: {blocked} (the operator's setting {ENDPOINTS} lists the allowed exceptions)"
        return None, None, f"could not connect ({type(exc).__name__}: {exc})"
    try:
        body = response.json()
    except ValueError:
        body = None
    return response.status_code, body, ""


def _served_models(body: Any) -> list[str] | None:
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        return None
    return [str(item.get("id")) for item in data if isinstance(item, dict) and item.get("id")]


def endpoint_test(*, endpoint: ModelEndpoint, team, user=None, api_key=None) -> ConnectionTest:
    """Check that the endpoint answers: GET /models (free) and the model is listed; where /models is not
    served, a 1-token completion through the metered call (its cost in the ledger, under a hold, as
    ``pipeline_name`` "endpoint-test"). Never raises for the endpoint's failures: they are the result."""
    from workers.runtime.openai_compat import EndpointError

    timeout_s = float(settings.PARSIMONY_ENDPOINT_TEST_TIMEOUT_S)
    if endpoint.kind != EndpointKind.OPENAI:
        return ConnectionTest(False, "only OpenAI-compatible endpoints can be tested here", "models")
    try:
        key = endpoint_api_key(endpoint)
    except ServiceError as exc:
        return ConnectionTest(False, exc.message, "models")
    started = time.monotonic()
    status, body, error = _list_models(endpoint, key, timeout_s)
    elapsed = int((time.monotonic() - started) * 1000)
    if status is None:
        return ConnectionTest(False, f"{endpoint.base_url}: {error}", "models", elapsed)
    if status in (401, 403):
        return ConnectionTest(False, f"the endpoint refused the API key (HTTP {status})", "models", elapsed)
    served = _served_models(body) if status == 200 else None
    if served is not None:
        if endpoint.remote_model in served:
            return ConnectionTest(True, f"connected: the endpoint serves {endpoint.remote_model}", "models", elapsed)
        listed = ", ".join(served[:8]) + (" …" if len(served) > 8 else "")
        return ConnectionTest(
            False, f"connected, but the endpoint does not list {endpoint.remote_model!r} (it lists: "
            f"{listed or 'nothing'})", "models", elapsed,
        )
    if status not in (404, 405, 501) and status != 200:
        return ConnectionTest(False, f"GET /models answered HTTP {status}", "models", elapsed)
    # No usable /models: ask for one token, metered like any call.
    started = time.monotonic()
    try:
        call = model_call(
            endpoint=endpoint, messages=TEST_PROMPT, max_output_tokens=1, wall_time_limit_s=timeout_s,
            context=LedgerContext(team=team, user=user, api_key=api_key, pipeline_name=TEST_PIPELINE),
        )
    except EndpointError as exc:
        status_text = f"HTTP {exc.status}: " if exc.status is not None else ""
        return ConnectionTest(False, f"the 1-token completion failed ({status_text}{exc.message[:300]})",
                              "completion", int((time.monotonic() - started) * 1000))
    except ServiceError as exc:
        return ConnectionTest(False, exc.message, "completion")
    elapsed = int((time.monotonic() - started) * 1000)
    cost = call.record.cost if call.record is not None else ZERO
    if call.finish_reason in ("error", "time_limit"):
        return ConnectionTest(False, f"the 1-token completion did not finish ({call.finish_reason})", "completion",
                              elapsed, cost)
    return ConnectionTest(True, f"connected: {endpoint.remote_model} answered a 1-token completion", "completion",
                          elapsed, cost)
