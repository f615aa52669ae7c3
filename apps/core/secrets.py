"""Secrets at rest (model endpoints' API keys): Fernet (AES-128-CBC + HMAC-SHA256) under a key derived
with HKDF-SHA256 from the setting ``PARSIMONY_SECRETS_KEY`` (falling back to ``SECRET_KEY``).

Encrypt with the current key; decrypt with the current key, then each of
``PARSIMONY_SECRETS_KEY_PREVIOUS`` (rotation, docs/operations.md), then ``SECRET_KEY`` when a separate
secrets key is set (values stored before it was). ``manage.py rotate_secrets`` re-encrypts every stored
secret under the current key. Decrypt only where a secret is used (the model client is built).
"""

from __future__ import annotations

import base64
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings

from apps.core.errors import ServiceError

SALT = b"parsimony-secrets-v1"
INFO = b"parsimony: secrets at rest"


class SecretUnreadable(ServiceError):
    """A stored secret that the configured keys cannot decrypt (a changed key, a damaged value)."""

    code = "secret_unreadable"
    http_status = 500


def derive_key(material: str) -> bytes:
    """A Fernet key (urlsafe base64 of 32 bytes) derived from any secret string with HKDF-SHA256."""
    if not material:
        raise ValueError("a secrets key must not be empty")
    raw = HKDF(algorithm=hashes.SHA256(), length=32, salt=SALT, info=INFO).derive(material.encode())
    return base64.urlsafe_b64encode(raw)


def _materials() -> tuple[str, ...]:
    current = getattr(settings, "PARSIMONY_SECRETS_KEY", "") or settings.SECRET_KEY
    previous = [key for key in getattr(settings, "PARSIMONY_SECRETS_KEY_PREVIOUS", []) if key]
    extra = [settings.SECRET_KEY] if current != settings.SECRET_KEY else []
    ordered: list[str] = []
    for key in [current, *previous, *extra]:
        if key not in ordered:
            ordered.append(key)
    return tuple(ordered)


@lru_cache(maxsize=8)
def _fernet(materials: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(derive_key(material)) for material in materials])


def _current() -> MultiFernet:
    return _fernet(_materials())


def secret_encrypt(plaintext: str) -> str:
    """The ciphertext (a Fernet token, ASCII) of ``plaintext`` under the current key."""
    return _current().encrypt(plaintext.encode()).decode("ascii")


def secret_decrypt(token: str, *, what: str = "a stored secret") -> str:
    """The plaintext of a Fernet token; ``SecretUnreadable`` (with what to do) when no key opens it."""
    try:
        return _current().decrypt(token.encode("ascii")).decode()
    except (InvalidToken, UnicodeError, ValueError) as exc:
        raise SecretUnreadable(
            f"{what} cannot be decrypted: PARSIMONY_SECRETS_KEY (or SECRET_KEY) is not the key it was stored "
            "with. Put the old key in PARSIMONY_SECRETS_KEY_PREVIOUS (then run manage.py rotate_secrets), "
            "or enter the secret again.",
        ) from exc


def secret_rotate(token: str, *, what: str = "a stored secret") -> str:
    """The same secret re-encrypted under the current key (any configured key may have stored it)."""
    try:
        return _current().rotate(token.encode("ascii")).decode("ascii")
    except (InvalidToken, UnicodeError, ValueError) as exc:
        raise SecretUnreadable(f"{what} cannot be decrypted with any configured key") from exc


def secret_hint(plaintext: str) -> str:
    """What may be shown of a secret: its first 3 and last 4 characters (``sk-...abcd``), or nothing
    of a short one."""
    value = plaintext.strip()
    if len(value) < 12:
        return "•" * 4
    return f"{value[:3]}...{value[-4:]}"
