"""Outbound HTTP to URLs that teams choose (their model endpoints, agents' http tools) must not reach
this server's own network: loopback, private ranges (10/8, 172.16/12, 192.168/16, fc00::/7), link-local
(169.254/16 — the cloud metadata service at 169.254.169.254 — and fe80::/10), CGNAT, multicast and
the other non-global ranges.

The check happens **when the connection is made**, on every address the host name resolves to, and
the socket then connects to the address that was checked (so a DNS answer cannot change between the
check and the connect, and a redirect — never followed by our clients anyway — would be checked too).
``guarded_transport(policy)`` is an httpx transport doing that; ``NetworkPolicy`` is plain data the
Django side builds from the operator's settings (hosts and networks allowed although private, for a
self-hosted model server on the LAN, say).

A transport with a policy connects directly: a proxy from the environment would hide the address.
"""

from __future__ import annotations

import ipaddress
import socket
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]

_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class AddressBlocked(httpcore.ConnectError):
    """The host is, or resolves to, an address outside the public internet that the policy does not allow."""


def _embedded_ipv4(ip: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 one carries (mapped ::ffff:a.b.c.d, 6to4, NAT64), else the address itself."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.sixtofour is not None:
            return ip.sixtofour
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def address_public(ip: IPAddress) -> bool:
    """Whether ``ip`` is a public unicast address (not private, loopback, link-local, multicast, reserved...)."""
    ip = _embedded_ipv4(ip)
    return ip.is_global and not ip.is_multicast


def _normal_host(host: str) -> str:
    return host.strip().lower().rstrip(".").strip("[]")


@dataclass(frozen=True)
class NetworkPolicy:
    """Which non-public destinations are allowed anyway: ``allowed_networks`` (an address in one passes)
    and ``allowed_hosts`` (a URL with exactly that host name passes whatever it resolves to)."""

    allowed_networks: tuple[IPNetwork, ...] = ()
    allowed_hosts: tuple[str, ...] = ()

    @classmethod
    def from_entries(cls, entries: Iterable[str]) -> NetworkPolicy:
        """From an operator's list: each entry an address, a network in CIDR form, or a host name.
        Raises ValueError naming an entry that is none of these."""
        networks: list[IPNetwork] = []
        hosts: list[str] = []
        for raw in entries:
            entry = _normal_host(raw)
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            if "/" in entry or not all(part and len(part) <= 63 for part in entry.split(".")) or any(
                not (ch.isalnum() or ch in "-_") for ch in entry.replace(".", "")
            ):
                raise ValueError(f"{raw!r} is neither an address, a network (CIDR) nor a host name")
            hosts.append(entry)
        return cls(tuple(networks), tuple(hosts))

    def host_allowed(self, host: str) -> bool:
        return _normal_host(host) in self.allowed_hosts

    def address_allowed(self, ip: IPAddress) -> bool:
        return address_public(ip) or any(ip in net or _embedded_ipv4(ip) in net for net in self.allowed_networks)

    def blocked_reason(self, host: str, addresses: Iterable[str]) -> str | None:
        """Why connecting to ``host`` (resolved to ``addresses``) is refused, or None when it is allowed."""
        if self.host_allowed(host):
            return None
        for address in addresses:
            ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
            if not self.address_allowed(ip):
                shown = _normal_host(host)
                via = "" if shown == str(ip) else f" resolves to {ip}, which"
                return (f"{shown}{via} is a private, loopback, link-local or otherwise non-public address; "
                        "this server does not connect there unless the operator allows it")
        return None

    def static_reason(self, host: str) -> str | None:
        """The refusal that needs no DNS: an address literal, or a ``localhost`` name (checked when saved)."""
        name = _normal_host(host)
        if self.host_allowed(name):
            return None
        if name == "localhost" or name.endswith(".localhost"):
            return self.blocked_reason(name, ["127.0.0.1"])
        try:
            ipaddress.ip_address(name.split("%", 1)[0])
        except ValueError:
            return None
        return self.blocked_reason(name, [name])


def system_resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (IPv4 and IPv6), in the resolver's order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: list[str] = []
    for *_, sockaddr in infos:
        address = str(sockaddr[0])
        if address not in seen:
            seen.append(address)
    return seen


class GuardedBackend(httpcore.SyncBackend):
    """httpcore's socket backend, resolving the host itself: every address is checked against the policy
    and the socket connects to a checked address (never resolving the name a second time)."""

    def __init__(self, policy: NetworkPolicy, resolve: Resolver = system_resolve) -> None:
        self.policy = policy
        self.resolve = resolve

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[typing.Any] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            addresses = self.resolve(host, port)
        except (OSError, UnicodeError) as exc:
            raise httpcore.ConnectError(f"could not resolve {host}: {exc}") from exc
        if not addresses:
            raise httpcore.ConnectError(f"{host} resolves to no address")
        reason = self.policy.blocked_reason(host, addresses)
        if reason is not None:
            raise AddressBlocked(reason)
        last: Exception | None = None
        for address in addresses:
            try:
                return super().connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last


def guarded_transport(policy: NetworkPolicy, *, resolve: Resolver = system_resolve, **options: typing.Any
                      ) -> httpx.HTTPTransport:
    """An httpx transport whose connections pass ``policy`` (``options``: HTTPTransport's, e.g. verify)."""
    transport = httpx.HTTPTransport(**options)
    # httpx builds its httpcore pool itself and takes no network backend: ours goes into that pool (a
    # private attribute, checked here and by tests/workers/runtime/test_net_guard.py against real sockets).
    pool = transport._pool
    assert isinstance(pool, httpcore.ConnectionPool), "guarded transports take no proxy"
    assert hasattr(pool, "_network_backend"), "httpcore's pool no longer holds its backend there"
    pool._network_backend = GuardedBackend(policy, resolve)
    return transport


def blocked_message(exc: BaseException) -> str | None:
    """The policy's reason when ``exc`` (an httpx error) comes from a refused address, else None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, AddressBlocked):
            return str(current)
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
