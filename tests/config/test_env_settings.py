import os
import subprocess
import sys
from pathlib import Path

import pytest

from apps.config.env import (
    ImproperlyConfiguredEnv,
    database_from_url,
    env_bool,
    env_int,
    env_private_networks,
    secret_key_from_env_or_file,
)

ROOT = Path(__file__).resolve().parents[2]


def test_it_reads_booleans_and_rejects_nonsense(monkeypatch):
    monkeypatch.setenv("X_FLAG", "yes")
    assert env_bool("X_FLAG") is True
    monkeypatch.setenv("X_FLAG", "off")
    assert env_bool("X_FLAG") is False
    monkeypatch.setenv("X_FLAG", "maybe")
    with pytest.raises(ImproperlyConfiguredEnv, match="X_FLAG"):
        env_bool("X_FLAG")


def test_it_rejects_a_non_integer(monkeypatch):
    monkeypatch.setenv("X_NUM", "ten")
    with pytest.raises(ImproperlyConfiguredEnv, match="X_NUM='ten' is not an integer"):
        env_int("X_NUM", 3)


def test_private_network_exceptions_are_addresses_networks_or_host_names(monkeypatch):
    monkeypatch.setenv("X_NETS", "10.0.5.0/24, 127.0.0.1,[::1],llm.internal")
    assert env_private_networks("X_NETS") == ["10.0.5.0/24", "127.0.0.1", "[::1]", "llm.internal"]
    monkeypatch.setenv("X_NETS", "10.0.0.0/8,http://llm.internal")
    with pytest.raises(ImproperlyConfiguredEnv, match="X_NETS: 'http://llm.internal' is neither"):
        env_private_networks("X_NETS")


def test_it_parses_postgres_and_sqlite_urls(tmp_path):
    pg = database_from_url("postgresql://parsimony:s%40cret@db.example:6543/parsimony", base_dir=tmp_path)
    assert (pg["ENGINE"], pg["NAME"], pg["USER"], pg["PASSWORD"], pg["HOST"], pg["PORT"]) == (
        "django.db.backends.postgresql", "parsimony", "parsimony", "s@cret", "db.example", "6543",
    )
    lite = database_from_url("sqlite:///var/x.sqlite3", base_dir=tmp_path)
    assert lite["NAME"] == str(tmp_path / "var" / "x.sqlite3")
    with pytest.raises(ImproperlyConfiguredEnv, match="not supported"):
        database_from_url("mysql://root@localhost/x", base_dir=tmp_path)


def test_it_generates_the_embedded_secret_key_once_and_keeps_it(tmp_path, monkeypatch):
    monkeypatch.delenv("SECRET_KEY", raising=False)
    key_file = tmp_path / "secret_key"
    first = secret_key_from_env_or_file(production=False, key_file=key_file)
    assert len(first) >= 50
    assert secret_key_from_env_or_file(production=False, key_file=key_file) == first
    with pytest.raises(ImproperlyConfiguredEnv, match="SECRET_KEY is required"):
        secret_key_from_env_or_file(production=True, key_file=key_file)


def _manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "ALLOWED_HOSTS", "DEBUG"}}
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env={**base, **env}, capture_output=True, text=True, timeout=120
    )


def test_production_refuses_to_start_without_a_secret_key(tmp_path):
    result = _manage(
        "check", env={"PARSIMONY_ENV": "production", "ALLOWED_HOSTS": "x.example", "DATA_ROOT": str(tmp_path)}
    )
    assert result.returncode != 0
    assert "SECRET_KEY is required" in result.stderr


def test_check_deploy_is_clean_with_production_settings(tmp_path):
    result = _manage(
        "check", "--deploy", "--fail-level", "WARNING",
        env={
            "PARSIMONY_ENV": "production",
            "SECRET_KEY": "p" * 20 + "-Zq8!x_unique-production-secret-value-4Kd9",
            "ALLOWED_HOSTS": "parsimony.example",
            "DATA_ROOT": str(tmp_path),
            # Production requires a shared cache for the rate limit (apps/api/checks.py).
            "CACHE_URL": "redis://127.0.0.1:6379/15",
        },
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout
