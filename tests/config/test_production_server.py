"""The production setup agrees with itself: server timeout above the sync query wait, a shared cache for
rate limits, plain-http test mode cookies, beat everywhere the workers are."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml
from django.conf import settings

ROOT = Path(__file__).resolve().parents[2]


def _gunicorn_conf():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gunicorn_conf", ROOT / "gunicorn.conf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _documented_gunicorn_commands() -> dict[str, str]:
    readme = (ROOT / "README.md").read_text()
    operations = (ROOT / "docs" / "operations.md").read_text()
    dockerfile = (ROOT / "docker" / "web.Dockerfile").read_text()
    commands = {f"README {i}": c for i, c in enumerate(re.findall(r"`(gunicorn [^`]+)`", readme))}
    commands |= {f"operations {i}": c for i, c in enumerate(re.findall(r"`(gunicorn [^`]+)`", operations))}
    cmd = re.search(r"^CMD (\[.*\])$", dockerfile, re.M).group(1)
    commands["web.Dockerfile"] = " ".join(yaml.safe_load(cmd))
    return commands


def test_every_documented_server_command_uses_threads_and_outlasts_the_sync_query_wait():
    conf = _gunicorn_conf()
    commands = _documented_gunicorn_commands()
    assert len(commands) >= 3, commands
    wait = settings.PARSIMONY_SYNC_QUERY_TIMEOUT_S
    for where, command in commands.items():
        worker_class = re.search(r"--worker-class[ =](\S+)", command)
        timeout = re.search(r"--timeout[ =](\d+)", command)
        # A flag left out falls back to gunicorn.conf.py (read from the working directory).
        assert (worker_class.group(1) if worker_class else conf.worker_class) == "gthread", where
        timeout_s = int(timeout.group(1)) if timeout else conf.timeout
        assert conf.timeout_error(timeout_s, wait) is None, (where, timeout_s, wait)
        assert timeout_s > wait


def test_gunicorn_refuses_to_start_with_a_timeout_at_the_sync_query_wait(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in {"PARSIMONY_ENV", "DATABASE_URL"}}
    env |= {"PARSIMONY_VAR_DIR": str(tmp_path), "PARSIMONY_SYNC_QUERY_TIMEOUT_S": "120"}
    result = subprocess.run(
        [str(Path(sys.executable).parent / "gunicorn"), "apps.config.wsgi:application", "--bind", "127.0.0.1:0",
         "--timeout", "120"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "gunicorn --timeout 120 must be at least PARSIMONY_SYNC_QUERY_TIMEOUT_S (120) + 30 s" in result.stderr


def _production(tmp_path, **env: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in {"CACHE_URL", "SECURE_SSL_REDIRECT", "DEBUG"}}
    return base | {"PARSIMONY_ENV": "production", "SECRET_KEY": "x" * 50, "ALLOWED_HOSTS": "127.0.0.1",
                   "PARSIMONY_VAR_DIR": str(tmp_path)} | env


def _python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    script = "import django; django.setup(); from django.conf import settings as s; " + code
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env | {
        "DJANGO_SETTINGS_MODULE": "apps.config.settings"}, capture_output=True, text=True, timeout=60)


def test_production_without_a_shared_cache_fails_the_system_check(tmp_path):
    code = ("from django.core.management import call_command; call_command('check', '--tag', 'caches'); "
            "print('ok')")
    refused = _python(code, _production(tmp_path))
    assert refused.returncode != 0 and "parsimony.E001" in refused.stderr and "set CACHE_URL" in refused.stderr
    accepted = _python(code, _production(tmp_path, CACHE_URL="redis://127.0.0.1:6379/15"))
    assert accepted.returncode == 0 and accepted.stdout.strip().endswith("ok"), accepted.stderr


def test_plain_http_test_mode_keeps_cookies_usable_over_http(tmp_path):
    code = "print(s.SECURE_SSL_REDIRECT, s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE)"
    env = _production(tmp_path, CACHE_URL="redis://127.0.0.1:6379/15")
    assert _python(code, env).stdout.split() == ["True", "True", "True"]
    assert _python(code, env | {"SECURE_SSL_REDIRECT": "0"}).stdout.split() == ["False", "False", "False"]
    # Behind a TLS proxy that redirects itself: no redirect here, cookies still secure.
    explicit = env | {"SECURE_SSL_REDIRECT": "0", "SESSION_COOKIE_SECURE": "1", "CSRF_COOKIE_SECURE": "1"}
    assert _python(code, explicit).stdout.split() == ["False", "True", "True"]


def test_compose_runs_beat_and_gives_every_service_the_shared_cache():
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    beat = services["beat"]["command"]
    assert beat[:4] == ["celery", "-A", "workers", "beat"]
    assert compose["x-app"]["environment"]["CACHE_URL"].startswith("redis://")
    web = services["web"]
    assert "gunicorn" not in " ".join(web.get("command", [])) or "gthread" in " ".join(web["command"])
    assert "celery -A workers beat" in (ROOT / "README.md").read_text()
    assert "celery -A workers beat" in (ROOT / "docs" / "operations.md").read_text()
