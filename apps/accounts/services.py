"""Writes for teams, memberships and API keys."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core import signing
from django.db import transaction
from django.utils import timezone
from django.utils.text import slugify

from apps.accounts.models import ROLE_RANK, ApiKey, Invitation, Membership, Role, Scope, Team
from apps.core.errors import PermissionDenied, ValidationFailed

KEY_PREFIX = "psk"
# Updating last_used_at on every request would turn every read into a write.
LAST_USED_RESOLUTION = timedelta(seconds=60)


def _unique_slug(name: str) -> str:
    base = slugify(name)[:100] or "team"
    slug, n = base, 1
    while Team.objects.filter(slug=slug).exists():
        n += 1
        slug = f"{base}-{n}"
    return slug


@transaction.atomic
def team_create(*, name: str, owner=None) -> Team:
    name = name.strip()
    if not name:
        raise ValidationFailed("a team needs a name")
    team = Team.objects.create(name=name, slug=_unique_slug(name))
    if owner is not None:
        Membership.objects.create(user=owner, team=team, role=Role.OWNER)
    return team


def membership_set(*, team: Team, user, role: str, acting: Membership | None = None) -> Membership:
    """Add ``user`` to ``team`` or change their role. ``acting`` (when given) must be admin or owner."""
    if role not in Role.values:
        raise ValidationFailed(f"unknown role {role!r} (valid: {', '.join(Role.values)})")
    if acting is not None:
        if acting.team_id != team.pk or not acting.has_role(Role.ADMIN):
            raise PermissionDenied("only the team's owners and admins change roles")
        if role == Role.OWNER and not acting.has_role(Role.OWNER):
            raise PermissionDenied("only an owner can make another owner")
    membership, _ = Membership.objects.update_or_create(user=user, team=team, defaults={"role": role})
    return membership


def user_create(*, username: str, password: str, email: str = "", is_superuser: bool = False):
    User = get_user_model()
    if is_superuser:
        return User.objects.create_superuser(username=username, password=password, email=email)
    return User.objects.create_user(username=username, password=password, email=email)


def _digest(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


@dataclass(frozen=True)
class CreatedApiKey:
    api_key: ApiKey
    raw_key: str  # shown once to the creator, never stored


def api_key_create(*, team: Team, name: str, scopes: list[str], created_by=None, expires_at=None) -> CreatedApiKey:
    unknown = sorted(set(scopes) - set(Scope.values))
    if unknown:
        raise ValidationFailed(f"unknown scopes {unknown} (valid: {', '.join(Scope.values)})")
    if not scopes:
        raise ValidationFailed("an API key needs at least one scope")
    prefix = secrets.token_hex(4)
    raw_key = f"{KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
    api_key = ApiKey.objects.create(
        team=team,
        name=name.strip() or "key",
        prefix=prefix,
        secret_hash=_digest(raw_key),
        scopes=sorted(set(scopes)),
        created_by=created_by if getattr(created_by, "pk", None) else None,
        expires_at=expires_at,
    )
    return CreatedApiKey(api_key=api_key, raw_key=raw_key)


def api_key_revoke(*, api_key: ApiKey) -> ApiKey:
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])
    return api_key


def api_key_authenticate(*, raw_key: str) -> ApiKey | None:
    """The active key matching ``raw_key``, or None. Compares digests in constant time."""
    # The random part may itself contain "_": split at most twice.
    parts = raw_key.strip().split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX:
        return None
    api_key = ApiKey.objects.select_related("team", "created_by").filter(prefix=parts[1]).first()
    if api_key is None or not hmac.compare_digest(api_key.secret_hash, _digest(raw_key.strip())):
        return None
    if not api_key.is_active:
        return None
    now = timezone.now()
    if api_key.last_used_at is None or now - api_key.last_used_at > LAST_USED_RESOLUTION:
        ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
        api_key.last_used_at = now
    return api_key


# --------------------------------------------------------------------------- roles and invitations

INVITATION_SALT = "parsimony.accounts.invitation"
INVITATION_TTL = timedelta(days=7)


def _check_can_manage(*, team: Team, acting: Membership, role: str) -> None:
    if acting.team_id != team.pk or not acting.has_role(Role.ADMIN):
        raise PermissionDenied("only the team's owners and admins manage members")
    if role not in Role.values:
        raise ValidationFailed(f"unknown role {role!r} (valid: {', '.join(Role.values)})")
    if role == Role.OWNER and not acting.has_role(Role.OWNER):
        raise PermissionDenied("only an owner can make another owner")


def _other_owners(membership: Membership) -> bool:
    return Membership.objects.filter(team_id=membership.team_id, role=Role.OWNER).exclude(pk=membership.pk).exists()


@transaction.atomic
def membership_role_change(*, membership: Membership, role: str, acting: Membership) -> Membership:
    """Change a member's role: admins and owners only; only owners touch owners; a team keeps an owner."""
    membership = Membership.objects.select_for_update().select_related("team", "user").get(pk=membership.pk)
    _check_can_manage(team=membership.team, acting=acting, role=role)
    if membership.role == Role.OWNER and not acting.has_role(Role.OWNER):
        raise PermissionDenied("only an owner can change an owner's role")
    if membership.role == Role.OWNER and role != Role.OWNER and not _other_owners(membership):
        raise ValidationFailed("a team needs at least one owner: make someone else owner first")
    return membership_set(team=membership.team, user=membership.user, role=role, acting=acting)


@transaction.atomic
def membership_remove(*, membership: Membership, acting: Membership) -> None:
    """Remove someone from a team (or leave it yourself); the last owner cannot go."""
    membership = Membership.objects.select_for_update().select_related("team").get(pk=membership.pk)
    if membership.pk != acting.pk:
        _check_can_manage(team=membership.team, acting=acting, role=membership.role)
    if membership.role == Role.OWNER and not _other_owners(membership):
        raise ValidationFailed("a team needs at least one owner: make someone else owner first")
    membership.delete()


@dataclass(frozen=True)
class CreatedInvitation:
    invitation: Invitation
    token: str  # goes into the link; shown to the inviter, never stored


def invitation_create(
    *, team: Team, role: str, acting: Membership, note: str = "", ttl: timedelta = INVITATION_TTL
) -> CreatedInvitation:
    """An invitation link for ``team`` with ``role``, valid for ``ttl``; admins and owners only."""
    _check_can_manage(team=team, acting=acting, role=role)
    if ttl <= timedelta(0):
        raise ValidationFailed("an invitation must be valid for some time")
    nonce = secrets.token_urlsafe(24)
    invitation = Invitation.objects.create(
        team=team,
        role=role,
        note=note.strip()[:200],
        nonce_hash=_digest(nonce),
        created_by=acting.user,
        expires_at=timezone.now() + ttl,
    )
    token = signing.dumps({"i": invitation.pk, "n": nonce}, salt=INVITATION_SALT, compress=True)
    return CreatedInvitation(invitation=invitation, token=token)


def invitation_from_token(*, token: str) -> Invitation | None:
    """The invitation a link's token names, or None when the token is forged or unknown.

    Expired, revoked and used invitations are returned too (``is_usable`` tells), so the
    page can say why the link no longer works.
    """
    try:
        payload = signing.loads(token, salt=INVITATION_SALT)
        invitation_id, nonce = int(payload["i"]), str(payload["n"])
    except (signing.BadSignature, KeyError, TypeError, ValueError):
        return None
    invitation = Invitation.objects.select_related("team", "created_by").filter(pk=invitation_id).first()
    if invitation is None or not hmac.compare_digest(invitation.nonce_hash, _digest(nonce)):
        return None
    return invitation


@transaction.atomic
def invitation_accept(*, invitation: Invitation, user) -> Membership:
    """Join the team with the invitation's role (once). An existing member keeps the higher role."""
    invitation = Invitation.objects.select_for_update().select_related("team").get(pk=invitation.pk)
    if not invitation.is_usable:
        raise ValidationFailed(f"this invitation is {invitation.state}", code=f"invitation_{invitation.state}")
    existing = Membership.objects.filter(team=invitation.team, user=user).first()
    if existing is not None and ROLE_RANK[Role(existing.role)] >= ROLE_RANK[Role(invitation.role)]:
        membership = existing
    else:
        membership = membership_set(team=invitation.team, user=user, role=invitation.role)
    invitation.accepted_at = timezone.now()
    invitation.accepted_by = user
    invitation.save(update_fields=["accepted_at", "accepted_by"])
    return membership


def invitation_revoke(*, invitation: Invitation, acting: Membership) -> Invitation:
    _check_can_manage(team=invitation.team, acting=acting, role=Role.VIEWER)
    if invitation.revoked_at is None and invitation.accepted_at is None:
        invitation.revoked_at = timezone.now()
        invitation.save(update_fields=["revoked_at"])
    return invitation
