import httpx
import pytest

from workers.agent.http_tool import HttpToolError, check_url, http_call

ALLOWED = ["api.example.com", "*.weather.test"]


def _transport(handler):
    return httpx.MockTransport(handler)


def test_it_refuses_hosts_that_are_not_on_the_allow_list():
    with pytest.raises(HttpToolError, match="'evil.example.org' is not on the allow-list"):
        http_call(url="https://evil.example.org/x", method="GET", arguments={}, allowed_hosts=ALLOWED,
                  timeout_s=1, max_bytes=100, transport=_transport(lambda r: httpx.Response(200)))
    assert check_url("https://eu.weather.test/q", allowed_hosts=ALLOWED) == "eu.weather.test"
    with pytest.raises(HttpToolError):
        check_url("https://weather.test/q", allowed_hosts=ALLOWED)
    with pytest.raises(HttpToolError, match="not an http"):
        check_url("file:///etc/passwd", allowed_hosts=ALLOWED)


def test_it_fills_url_placeholders_and_sends_the_rest_as_query_or_json():
    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["url"] = str(request.url)
        seen["body"] = request.content
        return httpx.Response(200, json={"temp": 21})

    result = http_call(
        url="https://api.example.com/weather/{city}",
        method="GET",
        arguments={"city": "São Paulo", "units": "c"},
        allowed_hosts=ALLOWED,
        timeout_s=1,
        max_bytes=1000,
        transport=_transport(handler),
    )
    assert result == {"temp": 21}
    assert seen["url"] == "https://api.example.com/weather/S%C3%A3o%20Paulo?units=c"
    http_call(url="https://api.example.com/echo", method="POST", arguments={"a": 1}, allowed_hosts=ALLOWED,
              timeout_s=1, max_bytes=1000, transport=_transport(handler))
    assert seen["body"] == b'{"a":1}'


def test_it_caps_the_response_size_and_does_not_follow_redirects():
    big = _transport(lambda r: httpx.Response(200, content=b"x" * 5000))
    with pytest.raises(HttpToolError, match="over the limit of 1000"):
        http_call(url="https://api.example.com/big", method="GET", arguments={}, allowed_hosts=ALLOWED,
                  timeout_s=1, max_bytes=1000, transport=big)
    moved = _transport(lambda r: httpx.Response(302, headers={"location": "https://evil.example.org/"}))
    with pytest.raises(HttpToolError, match="redirects are not followed"):
        http_call(url="https://api.example.com/moved", method="GET", arguments={}, allowed_hosts=ALLOWED,
                  timeout_s=1, max_bytes=1000, transport=moved)


def test_it_reports_timeouts_and_http_errors():
    def slow(request):
        raise httpx.ReadTimeout("slow", request=request)

    with pytest.raises(HttpToolError, match="timed out after 0.5 s"):
        http_call(url="https://api.example.com/slow", method="GET", arguments={}, allowed_hosts=ALLOWED,
                  timeout_s=0.5, max_bytes=1000, transport=_transport(slow))
    with pytest.raises(HttpToolError, match="HTTP 500"):
        http_call(url="https://api.example.com/err", method="GET", arguments={}, allowed_hosts=ALLOWED,
                  timeout_s=1, max_bytes=1000, transport=_transport(lambda r: httpx.Response(500, text="boom")))
