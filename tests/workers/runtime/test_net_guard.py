"""The outbound network policy: non-public addresses refused when the connection is made (names resolved
by the guard itself, every address checked, redirects checked too), the operator's exceptions allowed."""

from __future__ import annotations

import ipaddress
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from tests.support.fake_openai import FakeOpenAIServer
from workers.agent.http_tool import HttpToolError, http_call
from workers.runtime.net_guard import NetworkPolicy, address_public, guarded_transport
from workers.runtime.openai_compat import EndpointError, OpenAICompatClient, OpenAICompatConfig

NON_PUBLIC = ["127.0.0.1", "127.8.9.10", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "0.0.0.0",
              "100.64.0.1", "224.0.0.1", "255.255.255.255", "::1", "fe80::1", "fd00::1", "::ffff:127.0.0.1",
              "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe", "2002:7f00:1::"]
PUBLIC = ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"]


@pytest.mark.parametrize("address", NON_PUBLIC)
def test_it_refuses_every_non_public_address(address):
    assert not address_public(ipaddress.ip_address(address))
    assert NetworkPolicy().blocked_reason("host.test", [address]) is not None


@pytest.mark.parametrize("address", PUBLIC)
def test_it_lets_public_addresses_pass(address):
    assert address_public(ipaddress.ip_address(address))
    assert NetworkPolicy().blocked_reason("host.test", [address]) is None


def test_the_operator_s_exceptions_are_networks_addresses_or_exact_host_names():
    policy = NetworkPolicy.from_entries(["10.0.5.0/24", "127.0.0.1", "LLM.Internal.", "[::1]"])
    assert policy.blocked_reason("a.test", ["10.0.5.7"]) is None
    assert policy.blocked_reason("a.test", ["10.0.6.7"]) is not None
    assert policy.blocked_reason("a.test", ["127.0.0.1"]) is None and policy.blocked_reason("a.test", ["::1"]) is None
    assert policy.blocked_reason("llm.internal", ["192.168.9.9"]) is None
    assert policy.blocked_reason("x.llm.internal", ["192.168.9.9"]) is not None
    # One private address among public ones is enough to refuse the name.
    assert "resolves to 10.0.0.9" in NetworkPolicy().blocked_reason("mixed.test", ["8.8.8.8", "10.0.0.9"])
    with pytest.raises(ValueError, match="neither an address"):
        NetworkPolicy.from_entries(["10.0.0.0/33x"])


def test_the_static_check_needs_no_dns():
    policy = NetworkPolicy()
    for host in ("169.254.169.254", "[::1]", "::1", "localhost", "api.localhost", "10.0.0.1"):
        assert policy.static_reason(host) is not None, host
    assert policy.static_reason("api.openai.com") is None and policy.static_reason("8.8.8.8") is None
    assert NetworkPolicy.from_entries(["localhost"]).static_reason("localhost") is None


class _Handler(BaseHTTPRequestHandler):
    hits: list[str] = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        type(self).hits.append(self.path)
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{self.server.server_address[1]}/secret")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b'{"secret": "metadata"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def loopback_server():
    _Handler.hits = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _resolver(table):
    return lambda host, port: table[host]


def test_a_name_that_resolves_to_a_private_address_is_refused_before_connecting(loopback_server):
    port = loopback_server
    transport = guarded_transport(NetworkPolicy(), resolve=_resolver({"rebind.test": ["127.0.0.1"]}))
    with httpx.Client(transport=transport) as client, pytest.raises(httpx.ConnectError, match="resolves to 127.0.0.1"):
        client.get(f"http://rebind.test:{port}/secret")
    assert _Handler.hits == []
    allowed = guarded_transport(NetworkPolicy.from_entries(["127.0.0.0/8"]),
                                resolve=_resolver({"rebind.test": ["127.0.0.1"]}))
    with httpx.Client(transport=allowed) as client:
        assert client.get(f"http://rebind.test:{port}/secret").json() == {"secret": "metadata"}
    assert _Handler.hits == ["/secret"]


def test_a_redirect_to_a_private_address_is_refused_even_when_followed(loopback_server):
    port = loopback_server
    # The first host is allowed by name; the redirect's target, a bare private address, is not.
    transport = guarded_transport(NetworkPolicy.from_entries(["allowed.test"]),
                                  resolve=_resolver({"allowed.test": ["127.0.0.1"], "127.0.0.1": ["127.0.0.1"]}))
    with httpx.Client(transport=transport, follow_redirects=True) as client, pytest.raises(
        httpx.ConnectError, match="127.0.0.1 is a private"
    ):
        client.get(f"http://allowed.test:{port}/redirect")
    assert _Handler.hits == ["/redirect"]


def test_the_openai_client_with_a_policy_refuses_loopback_and_does_not_retry():
    with FakeOpenAIServer() as server:
        config = OpenAICompatConfig(base_url=server.base_url, model="gpt-4o-mini", network_policy=NetworkPolicy())
        with OpenAICompatClient(config) as client, pytest.raises(EndpointError) as caught:
            client.chat([{"role": "user", "content": "hi"}], max_tokens=4)
        assert caught.value.blocked and not caught.value.retryable
        assert "refused by the network policy: 127.0.0.1 is a private" in caught.value.message
        with OpenAICompatClient(config) as client, pytest.raises(EndpointError, match="network policy"):
            client.chat_stream([{"role": "user", "content": "hi"}], max_tokens=4)
        assert server.requests == 0
        allowed = OpenAICompatConfig(base_url=server.base_url, model="gpt-4o-mini",
                                     network_policy=NetworkPolicy.from_entries(["127.0.0.1"]))
        with OpenAICompatClient(allowed) as client:
            assert client.chat([{"role": "user", "content": "hi"}], max_tokens=4).text
        assert server.requests == 1


def test_an_http_tool_with_a_policy_cannot_reach_an_allow_listed_private_host(loopback_server):
    port = loopback_server
    with pytest.raises(HttpToolError, match="refused by the network policy: 127.0.0.1 is a private"):
        http_call(url=f"http://127.0.0.1:{port}/secret", method="GET", arguments={}, allowed_hosts=["127.0.0.1"],
                  timeout_s=2, max_bytes=1000, network_policy=NetworkPolicy())
    assert _Handler.hits == []
    assert http_call(url=f"http://127.0.0.1:{port}/secret", method="GET", arguments={}, allowed_hosts=["127.0.0.1"],
                     timeout_s=2, max_bytes=1000,
                     network_policy=NetworkPolicy.from_entries(["127.0.0.1"])) == {"secret": "metadata"}
