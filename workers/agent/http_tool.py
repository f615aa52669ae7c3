"""`http` tools: call a URL on an allow-list, with a timeout and a response size cap (httpx).

The URL may hold ``{placeholders}`` filled from the arguments (URL-quoted); the remaining
arguments go in the query string (GET) or as a JSON body (POST). Redirects are not followed
(a redirect could leave the allow-list). With a ``network_policy`` (the Django side always passes one)
the connection is made only to public addresses, or the private ones the policy allows, checked on
every address the host resolves to when connecting (``workers.runtime.net_guard``). The body is read
in chunks and the call fails as soon as it passes ``max_bytes``.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from workers.runtime.net_guard import NetworkPolicy, blocked_message, guarded_transport

METHODS = ("GET", "POST")


class HttpToolError(Exception):
    pass


def _host_allowed(host: str, allowed_hosts: Iterable[str]) -> bool:
    host = host.lower().rstrip(".")
    for pattern in allowed_hosts:
        pattern = pattern.strip().lower().rstrip(".")
        if not pattern:
            continue
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and host != pattern[2:]:
                return True
        elif host == pattern:
            return True
    return False


def url_host(url: str) -> str:
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as exc:  # e.g. a broken IPv6 literal
        raise HttpToolError(f"not an http(s) URL: {url!r}") from exc
    if parts.scheme not in ("http", "https") or not host:
        raise HttpToolError(f"not an http(s) URL: {url!r}")
    return host


def check_url(url: str, *, allowed_hosts: Iterable[str]) -> str:
    """The URL's host if it is allow-listed; else HttpToolError (the message names the host)."""
    host = url_host(url)
    if not _host_allowed(host, allowed_hosts):
        raise HttpToolError(f"host {host!r} is not on the allow-list of http tool hosts")
    return host


def url_placeholders(url: str) -> list[str]:
    try:
        return [name for _, name, _, _ in string.Formatter().parse(url) if name]
    except ValueError as exc:  # an unbalanced brace
        raise HttpToolError(f"the URL has an unbalanced {{ or }}: {url!r}") from exc


def build_request(url: str, method: str, arguments: dict[str, Any]) -> tuple[str, dict, Any]:
    """(url, query params, json body) for a call."""
    placeholders = url_placeholders(url)
    missing = [name for name in placeholders if name not in arguments]
    if missing:
        raise HttpToolError(f"missing arguments for the URL: {', '.join(missing)}")
    filled = url
    for name in placeholders:
        filled = filled.replace("{" + name + "}", quote(str(arguments[name]), safe=""))
    rest = {k: v for k, v in arguments.items() if k not in placeholders}
    if method == "GET":
        params = {k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in rest.items()}
        return filled, params, None
    return filled, {}, rest


def http_call(
    *,
    url: str,
    method: str,
    arguments: dict[str, Any],
    allowed_hosts: Iterable[str],
    timeout_s: float,
    max_bytes: int,
    headers: dict[str, str] | None = None,
    transport: httpx.BaseTransport | None = None,
    network_policy: NetworkPolicy | None = None,
) -> Any:
    """Call the endpoint; return its JSON (or text). Raises HttpToolError with a readable reason."""
    method = method.upper()
    if method not in METHODS:
        raise HttpToolError(f"unsupported method {method!r} (valid: {', '.join(METHODS)})")
    allowed = list(allowed_hosts)
    check_url(url, allowed_hosts=allowed)
    target, params, body = build_request(url, method, arguments)
    check_url(target, allowed_hosts=allowed)  # placeholders must not smuggle in another host
    if transport is None and network_policy is not None:
        transport = guarded_transport(network_policy)
    received = bytearray()
    try:
        with httpx.Client(timeout=httpx.Timeout(timeout_s), follow_redirects=False, transport=transport) as client:
            with client.stream(method, target, params=params or None, json=body, headers=headers or {}) as response:
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > max_bytes:
                    raise HttpToolError(f"the response is {declared} bytes, over the limit of {max_bytes}")
                for chunk in response.iter_bytes():
                    received += chunk
                    if len(received) > max_bytes:
                        raise HttpToolError(f"the response is over the limit of {max_bytes} bytes")
                status = response.status_code
                content_type = response.headers.get("content-type", "")
    except httpx.TimeoutException as exc:
        raise HttpToolError(f"timed out after {timeout_s:g} s") from exc
    except httpx.HTTPError as exc:
        blocked = blocked_message(exc)
        if blocked is not None:
            raise HttpToolError(f"refused by the network policy: {blocked}") from exc
        raise HttpToolError(f"request failed: {exc}") from exc
    text = received.decode("utf-8", errors="replace")
    if 300 <= status < 400:
        raise HttpToolError(f"the endpoint redirected (HTTP {status}); redirects are not followed")
    if status >= 400:
        raise HttpToolError(f"HTTP {status}: {text[:300]}")
    if "json" in content_type or re.match(r"^\s*[\[{]", text):
        try:
            return json.loads(text)
        except ValueError:
            pass
    return text
