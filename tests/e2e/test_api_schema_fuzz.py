"""schemathesis against our OpenAPI schema on a live server: every operation exercised, no request may produce
a 5xx, every response matches its documented schema."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from xml.etree import ElementTree

import pytest

from apps.costs import metering
from workers.runtime.meter import EchoTarget

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_schemathesis_finds_no_server_errors_and_no_response_off_its_schema(live_key, monkeypatch, settings, tmp_path):
    key, _ = live_key
    settings.DATA_ROOT = tmp_path
    monkeypatch.setattr(metering, "_target_override", lambda endpoint: EchoTarget(name=endpoint.name, reply="ok"))
    # The per-key rate limit would answer most fuzzed requests with 429 before they reach a view.
    from apps.api.throttling import ApiKeyRateThrottle

    monkeypatch.setattr(ApiKeyRateThrottle, "THROTTLE_RATES", {"api_key": "1000000/min"})
    url = _live_url(live_key)
    junit, har = tmp_path / "schemathesis.junit.xml", tmp_path / "schemathesis.har"
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("schemathesis")), "run", f"{url}/api/schema/",
            "--url", url,
            "-H", f"Authorization: Bearer {key.raw_key}",
            "--checks", "not_a_server_error,response_schema_conformance",
            "--max-examples", "4",
            "--phases", "examples,coverage,fuzzing",
            "--request-timeout", "60",
            "--report", "junit,har", "--report-junit-path", str(junit), "--report-har-path", str(har),
            "--seed", "1",
        ],
        capture_output=True, text=True, timeout=900,
    )
    # On a failure, show schemathesis' failures (with their replay commands), not its warnings.
    failures = result.stdout[result.stdout.find("FAILURES"):] if "FAILURES" in result.stdout else result.stdout
    output = failures[:8000] + result.stderr[-2000:]
    assert result.returncode == 0, output
    # Every operation of the schema was exercised, and none failed a check (no 5xx, every response
    # matches its documented schema).
    cases = list(ElementTree.parse(junit).getroot().iter("testcase"))
    operations = {case.get("name") for case in cases}
    failed = [case.get("name") for case in cases if case.find("failure") is not None or case.find("error") is not None]
    assert failed == [], output
    schema = json.loads(urllib.request.urlopen(f"{url}/api/schema/?format=json").read())
    documented = sum(len([m for m in item if m in HTTP_METHODS]) for item in schema["paths"].values())
    assert len(operations) >= documented > 10, (sorted(operations), documented)
    # The responses themselves: no server error, and most reached a view (authenticated, not 401s).
    statuses = [entry["response"]["status"] for entry in json.loads(har.read_text())["log"]["entries"]]
    assert statuses and max(statuses) < 500
    assert sum(200 <= status < 300 for status in statuses) >= 10
    assert statuses.count(401) < len(statuses) / 10


HTTP_METHODS = {"get", "put", "post", "patch", "delete", "head", "options"}


def _live_url(live_key) -> str:
    return live_key[1].removesuffix("/v1")
