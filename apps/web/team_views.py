"""Team pages: members and roles, invitation links, API keys."""

from __future__ import annotations

from datetime import timedelta

from django.contrib import messages
from django.contrib.auth import login
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from apps.accounts import selectors as account_selectors
from apps.accounts import services as account_services
from apps.accounts.middleware import SESSION_KEY
from apps.accounts.models import ApiKey, Invitation, Membership, Role
from apps.core.errors import ServiceError
from apps.core.scoping import team_object_or_404
from apps.web.access import can, team_view
from apps.web.forms import ApiKeyForm, InvitationForm, RoleForm, SignUpForm

# One-time secrets (a new API key, an invitation link) travel from the POST to the page it redirects to
# in the session, and are popped on that first GET: a reload (or the back button) shows the page without
# them and creates nothing (POST-redirect-GET). The entry names its team, so switching teams in between
# shows nothing.
FLASH_API_KEY = "parsimony.flash.api_key"
FLASH_INVITATION = "parsimony.flash.invitation"


def _flash_set(request, key: str, **values) -> None:
    request.session[key] = {"team_id": request.team.pk, **values}


def _flash_pop(request, key: str) -> dict | None:
    flash = request.session.pop(key, None)
    if not isinstance(flash, dict) or flash.get("team_id") != request.team.pk:
        return None
    return flash


def _no_store(response: HttpResponse) -> HttpResponse:
    response["Cache-Control"] = "no-store"
    return response


def _members_page(request, *, invite_form=None, status=200) -> HttpResponse:
    manage = can(request, Role.ADMIN)
    is_owner = can(request, Role.OWNER)
    members = account_selectors.team_members(team=request.team).order_by("user__username")
    role_choices = [c for c in Role.choices if is_owner or c[0] != Role.OWNER]
    context = {
        "members": members,
        "manage": manage,
        "is_owner": is_owner,
        "role_choices": role_choices,
        "invite_form": invite_form or InvitationForm(can_invite_owner=is_owner),
        "invitations": account_selectors.team_invitations(team=request.team)[:30] if manage else [],
        "created_invitation": None,
        "invite_url": "",
    }
    flash = _flash_pop(request, FLASH_INVITATION) if request.method == "GET" and manage else None
    if flash:
        invitation = Invitation.objects.filter(team=request.team, pk=flash.get("invitation_id")).first()
        if invitation is not None:
            context["created_invitation"] = {"invitation": invitation}
            context["invite_url"] = request.build_absolute_uri(reverse("invitation-accept", args=[flash["token"]]))
    return _no_store(render(request, "web/members.html", context, status=status))


@team_view()
def members(request: HttpRequest) -> HttpResponse:
    return _members_page(request)


@team_view(Role.ADMIN)
@require_POST
def member_role(request: HttpRequest, membership_id: int) -> HttpResponse:
    membership = team_object_or_404(Membership, request.team, pk=membership_id)
    form = RoleForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose a valid role.")
        return redirect("members")
    try:
        account_services.membership_role_change(
            membership=membership, role=form.cleaned_data["role"], acting=request.membership
        )
    except ServiceError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"{membership.user.username} is now {form.cleaned_data['role']}.")
    return redirect("members")


@team_view()
@require_POST
def member_remove(request: HttpRequest, membership_id: int) -> HttpResponse:
    membership = team_object_or_404(Membership, request.team, pk=membership_id)
    leaving = membership.pk == request.membership.pk
    try:
        account_services.membership_remove(membership=membership, acting=request.membership)
    except ServiceError as exc:
        messages.error(request, exc.message)
        return redirect("members")
    if leaving:
        request.session.pop(SESSION_KEY, None)
        messages.success(request, f"You left {request.team.name}.")
        return redirect("home")
    messages.success(request, f"{membership.user.username} was removed from the team.")
    return redirect("members")


@team_view(Role.ADMIN)
@require_POST
def invitation_create(request: HttpRequest) -> HttpResponse:
    form = InvitationForm(request.POST, can_invite_owner=can(request, Role.OWNER))
    if not form.is_valid():
        return _members_page(request, invite_form=form, status=400)
    try:
        created = account_services.invitation_create(
            team=request.team,
            role=form.cleaned_data["role"],
            note=form.cleaned_data["note"],
            acting=request.membership,
            ttl=timedelta(days=form.cleaned_data["valid_days"]),
        )
    except ServiceError as exc:
        form.add_error(None, exc.message)
        return _members_page(request, invite_form=form, status=exc.http_status)
    # The link is shown on the next page only: it is never stored in a readable form.
    _flash_set(request, FLASH_INVITATION, invitation_id=created.invitation.pk, token=created.token)
    return redirect("members")


@team_view(Role.ADMIN)
@require_POST
def invitation_revoke(request: HttpRequest, invitation_id: int) -> HttpResponse:
    invitation = team_object_or_404(Invitation.objects.select_related("team"), request.team, pk=invitation_id)
    try:
        account_services.invitation_revoke(invitation=invitation, acting=request.membership)
    except ServiceError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, "The invitation link no longer works.")
    return redirect("members")


@never_cache
def invitation_accept(request: HttpRequest, token: str) -> HttpResponse:
    """An invitation link: join as the logged-in user, or sign up and join at once."""
    invitation = account_services.invitation_from_token(token=token)
    if invitation is None or not invitation.is_usable:
        state = "invalid" if invitation is None else invitation.state
        return render(request, "web/invitation.html", {"invitation": invitation, "state": state}, status=404 if
                      invitation is None else 410)
    form = None
    if request.method == "POST":
        if request.user.is_authenticated:
            user = request.user
        else:
            form = SignUpForm(request.POST)
            if not form.is_valid():
                return render(
                    request,
                    "web/invitation.html",
                    {"invitation": invitation, "state": "pending", "form": form},
                )
            user = account_services.user_create(
                username=form.cleaned_data["username"],
                password=form.cleaned_data["password1"],
                email=form.cleaned_data.get("email") or "",
            )
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        try:
            membership = account_services.invitation_accept(invitation=invitation, user=user)
        except ServiceError as exc:
            messages.error(request, exc.message)
            return redirect("home")
        request.session[SESSION_KEY] = membership.team_id
        messages.success(request, f"Welcome to {membership.team.name}: you are {membership.role}.")
        return redirect("home")
    if not request.user.is_authenticated:
        form = SignUpForm()
    return render(request, "web/invitation.html", {"invitation": invitation, "state": "pending", "form": form})


# --------------------------------------------------------------------------- API keys


def _api_keys_page(request, *, form=None, status=200) -> HttpResponse:
    manage = can(request, Role.ADMIN)
    context = {
        "keys": account_selectors.team_api_keys(team=request.team),
        "manage": manage,
        "form": form or ApiKeyForm(),
        "created": None,
        "now": timezone.now(),
    }
    flash = _flash_pop(request, FLASH_API_KEY) if request.method == "GET" and manage else None
    if flash:
        api_key = ApiKey.objects.filter(team=request.team, pk=flash.get("api_key_id")).first()
        if api_key is not None:
            context["created"] = {"api_key": api_key, "raw_key": flash["raw_key"]}
    return _no_store(render(request, "web/api_keys.html", context, status=status))


@team_view()
def api_keys(request: HttpRequest) -> HttpResponse:
    return _api_keys_page(request)


@team_view(Role.ADMIN)
@require_POST
def api_key_create(request: HttpRequest) -> HttpResponse:
    form = ApiKeyForm(request.POST)
    if not form.is_valid():
        return _api_keys_page(request, form=form, status=400)
    days = form.cleaned_data.get("expires_in_days")
    try:
        created = account_services.api_key_create(
            team=request.team,
            name=form.cleaned_data["name"],
            scopes=form.cleaned_data["scopes"],
            created_by=request.user,
            expires_at=timezone.now() + timedelta(days=days) if days else None,
        )
    except ServiceError as exc:
        form.add_error(None, exc.message)
        return _api_keys_page(request, form=form, status=exc.http_status)
    # The secret is shown on the next page only; a reload shows the list without it.
    _flash_set(request, FLASH_API_KEY, api_key_id=created.api_key.pk, raw_key=created.raw_key)
    return redirect("api-keys")


@team_view(Role.ADMIN)
@require_POST
def api_key_revoke(request: HttpRequest, key_id: int) -> HttpResponse:
    api_key = team_object_or_404(ApiKey, request.team, pk=key_id)
    account_services.api_key_revoke(api_key=api_key)
    messages.success(request, f"Key {api_key.name} ({api_key.prefix}…) is revoked.")
    return redirect("api-keys")
