"""schemathesis against our OpenAPI schema on a live server: no request may produce a 5xx."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from apps.costs import metering
from workers.runtime.meter import EchoTarget

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_schemathesis_finds_no_server_errors(live_key, monkeypatch, settings, tmp_path):
    key, _ = live_key
    settings.DATA_ROOT = tmp_path
    monkeypatch.setattr(metering, "_target_override", lambda endpoint: EchoTarget(name=endpoint.name, reply="ok"))
    # The per-key rate limit would answer most fuzzed requests with 429 before they reach a view.
    from apps.api.throttling import ApiKeyRateThrottle

    monkeypatch.setattr(ApiKeyRateThrottle, "THROTTLE_RATES", {"api_key": "1000000/min"})
    url = _live_url(live_key)
    report = tmp_path / "schemathesis.junit.xml"
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("schemathesis")), "run", f"{url}/api/schema/",
            "--url", url,
            "-H", f"Authorization: Bearer {key.raw_key}",
            "--checks", "not_a_server_error",
            "--max-examples", "4",
            "--phases", "examples,coverage,fuzzing",
            "--request-timeout", "60",
            "--report", "junit", "--report-junit-path", str(report),
            "--seed", "1",
        ],
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    print(result.stdout[-3000:])
    # It really ran against our operations, authenticated (not just 401s).
    assert "API Operations" in result.stdout or "operations" in result.stdout.lower()


def _live_url(live_key) -> str:
    return live_key[1].removesuffix("/v1")
