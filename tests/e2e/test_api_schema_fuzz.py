"""schemathesis against our OpenAPI schema on a live server: every operation exercised, no request may produce
a 5xx, and every response must match what the schema documents for it (status code, content type, headers,
body). Any failure fails the test.

Small by default so the suite stays fast; the environment makes it as big as wanted (docs/reliability.md):
  PARSIMONY_FUZZ_EXAMPLES  cases per operation and phase (default 2)
  PARSIMONY_FUZZ_PHASES    schemathesis phases (default "examples,fuzzing"; add "coverage" for the big run)
  PARSIMONY_FUZZ_SEED      the seed (default 1)
  PARSIMONY_FUZZ_REPORT    a file to write the run's figures to (JSON: cases, failures, statuses)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections import Counter
from pathlib import Path
from xml.etree import ElementTree

import pytest

from apps.costs import metering
from workers.runtime.meter import EchoTarget

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# Every response check schemathesis has for a single response. Left out: positive_data_acceptance (a
# schema-valid body may still name another team's or a missing object: 400/404 by design, docs/api.md) and
# the stateful / auth-probing checks that need links or other credentials.
CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,"
    "response_schema_conformance,negative_data_rejection"
)


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
            "--checks", CHECKS,
            "--max-examples", os.environ.get("PARSIMONY_FUZZ_EXAMPLES", "2"),
            "--phases", os.environ.get("PARSIMONY_FUZZ_PHASES", "examples,fuzzing"),
            "--request-timeout", "60",
            "--report", "junit,har", "--report-junit-path", str(junit), "--report-har-path", str(har),
            "--seed", os.environ.get("PARSIMONY_FUZZ_SEED", "1"),
            "--suppress-health-check", "all",
        ],
        capture_output=True, text=True, timeout=3600,
    )
    # On a failure, show schemathesis' failures (with their replay commands), not its warnings.
    failures = result.stdout[result.stdout.find("FAILURES"):] if "FAILURES" in result.stdout else result.stdout
    output = failures[:12000] + result.stderr[-2000:]
    cases = list(ElementTree.parse(junit).getroot().iter("testcase")) if junit.exists() else []
    failed = [case.get("name") for case in cases if case.find("failure") is not None or case.find("error") is not None]
    entries = json.loads(har.read_text())["log"]["entries"] if har.exists() else []
    statuses = [entry["response"]["status"] for entry in entries]
    if os.environ.get("PARSIMONY_FUZZ_REPORT"):
        Path(os.environ["PARSIMONY_FUZZ_REPORT"]).write_text(json.dumps({
            "cases": len(statuses), "operations": len(cases), "failed_operations": failed,
            "server_errors": sum(status >= 500 for status in statuses),
            "statuses": dict(sorted(Counter(statuses).items())), "returncode": result.returncode,
        }, indent=2))
    assert result.returncode == 0, output
    # Every operation of the schema was exercised, and none failed a check.
    assert failed == [], output
    operations = {case.get("name") for case in cases}
    schema = json.loads(urllib.request.urlopen(f"{url}/api/schema/?format=json").read())
    documented = sum(len([m for m in item if m in HTTP_METHODS]) for item in schema["paths"].values())
    assert len(operations) >= documented > 10, (sorted(operations), documented)
    # The responses themselves: no server error, and many reached a view (authenticated, not 401s).
    assert statuses and max(statuses) < 500
    assert sum(200 <= status < 300 for status in statuses) >= 10
    assert statuses.count(401) < len(statuses) / 10


HTTP_METHODS = {"get", "put", "post", "patch", "delete", "head", "options"}


def _live_url(live_key) -> str:
    return live_key[1].removesuffix("/v1")
