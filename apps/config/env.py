"""Typed readers for settings that come from the environment.

Every helper fails loudly: a malformed value stops start-up with a message that
names the variable, instead of silently falling back to a default.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse


class ImproperlyConfiguredEnv(RuntimeError):
    """A setting read from the environment is missing or malformed."""


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str | None = None, *, required: bool = False) -> str | None:
    value = os.environ.get(name)
    if value is None or value == "":
        if required:
            raise ImproperlyConfiguredEnv(f"environment variable {name} is required")
        return default
    return value


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfiguredEnv(f"{name}={raw!r} is not a boolean (use one of 1/0, true/false, yes/no, on/off)")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ImproperlyConfiguredEnv(f"{name}={raw!r} is not an integer") from exc
    if minimum is not None and value < minimum:
        raise ImproperlyConfiguredEnv(f"{name}={value} is below the minimum {minimum}")
    return value


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ImproperlyConfiguredEnv(f"{name}={raw!r} is not a number") from exc


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return list(default)
    return [item.strip() for item in raw.split(",") if item.strip()]


_LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST_NAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")


def env_private_networks(name: str) -> list[str]:
    """A comma-separated list of addresses, networks (CIDR) or host names (the outbound network policy's
    exceptions, workers/runtime/net_guard.py); each entry checked here so a typo stops start-up."""
    entries = env_list(name, [])
    for entry in entries:
        try:
            ipaddress.ip_network(entry.strip("[]"), strict=False)
        except ValueError:
            if not _HOST_NAME.match(entry.lower().rstrip(".")):
                raise ImproperlyConfiguredEnv(
                    f"{name}: {entry!r} is neither an address, a network (CIDR, e.g. 10.0.0.0/8) nor a host name"
                ) from None
    return entries


def env_path(name: str, default: Path) -> Path:
    raw = os.environ.get(name)
    return Path(raw).expanduser().resolve() if raw else default


def database_from_url(url: str, *, base_dir: Path) -> dict:
    """Turn a DATABASE_URL into a Django DATABASES entry.

    Supported: ``postgres://``/``postgresql://`` (psycopg 3) and ``sqlite:///path``
    (relative paths are resolved against ``base_dir``).
    """
    parsed = urlparse(url)
    scheme = parsed.scheme.lower()
    options = {key: values[-1] for key, values in parse_qs(parsed.query).items()}
    if scheme in {"postgres", "postgresql", "pgsql"}:
        name = unquote(parsed.path.lstrip("/"))
        if not name:
            raise ImproperlyConfiguredEnv(f"DATABASE_URL {url!r} names no database")
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": name,
            "USER": unquote(parsed.username or ""),
            "PASSWORD": unquote(parsed.password or ""),
            "HOST": parsed.hostname or "",
            "PORT": str(parsed.port or ""),
            "CONN_MAX_AGE": int(options.pop("conn_max_age", 60)),
            "CONN_HEALTH_CHECKS": True,
            "OPTIONS": options,
        }
    if scheme == "sqlite":
        raw_path = unquote(parsed.path)
        # sqlite:///relative/path and sqlite:////absolute/path, as dj-database-url reads them.
        if raw_path.startswith("//"):
            path = Path(raw_path[1:])
        else:
            path = Path(raw_path.lstrip("/"))
            path = path if path.is_absolute() else base_dir / path
        path.parent.mkdir(parents=True, exist_ok=True)
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(path),
            # WAL lets the in-process worker thread write while requests read.
            "OPTIONS": {"init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;", "timeout": 20},
            "TEST": {"NAME": str(path.with_name(path.stem + "-test.sqlite3"))},
        }
    raise ImproperlyConfiguredEnv(f"DATABASE_URL scheme {scheme!r} is not supported (use postgresql:// or sqlite:///)")


def secret_key_from_env_or_file(*, production: bool, key_file: Path) -> str:
    """SECRET_KEY from the environment; in the embedded default, generated once and kept on disk."""
    value = os.environ.get("SECRET_KEY")
    if value:
        return value
    if production:
        raise ImproperlyConfiguredEnv("SECRET_KEY is required when PARSIMONY_ENV=production")
    if key_file.exists():
        return key_file.read_text().strip()
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(50)
    tmp = key_file.with_suffix(".tmp")
    tmp.write_text(key)
    os.chmod(tmp, 0o600)
    os.replace(tmp, key_file)
    return key
