"""The project's URLs plus `/bench/stream/?events=N&every=S`: N events S seconds apart through
`apps.api.sse.sse_response`, the same response the streaming endpoints return, with no model work."""

from __future__ import annotations

import time
from collections.abc import Iterator

from django.http import HttpRequest, HttpResponse
from django.urls import include, path

from apps.api.sse import sse_response


def slow_stream(request: HttpRequest) -> HttpResponse:
    events = int(request.GET.get("events", "10"))
    every = float(request.GET.get("every", "0.5"))

    def payloads() -> Iterator[dict | str]:
        for index in range(events):
            if index:
                time.sleep(every)
            yield {"index": index}
        yield "[DONE]"

    return sse_response(payloads(), headers={})


urlpatterns = [path("bench/stream/", slow_stream), path("", include("apps.config.urls"))]
