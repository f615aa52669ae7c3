"""Members, roles, invitation links and API keys in the browser."""

from __future__ import annotations

import re

import pytest
from django.test import Client

from apps.accounts.models import ApiKey, Invitation, Membership, Role

pytestmark = pytest.mark.django_db


def _invite(client, role="member", days=7) -> str:
    response = client.post("/team/invitations/", {"role": role, "valid_days": days, "note": "for Nora"})
    assert response.status_code == 302 and response.url == "/team/members/"
    page = client.get(response.url)
    return re.search(r'value="(http://testserver/invite/[^"]+)"', page.content.decode()).group(1)


def test_it_lists_members_read_only_for_viewers(viewer_client, alice):
    page = viewer_client.get("/team/members/")
    assert page.status_code == 200
    assert b"alice" in page.content and b"victor" in page.content
    assert b"Change role" not in page.content
    assert b"Create invitation link" not in page.content


def test_it_lets_owners_change_roles(owner_client, team_a):
    victor = Membership.objects.get(team=team_a, user__username="victor")
    page = owner_client.get("/team/members/")
    assert b"Change role" in page.content
    response = owner_client.post(f"/team/members/{victor.pk}/role/", {"role": "admin"})
    assert response.status_code == 302
    victor.refresh_from_db()
    assert victor.role == Role.ADMIN


def test_viewers_and_members_cannot_change_roles(viewer_client, member_client, team_a):
    alice = Membership.objects.get(team=team_a, user__username="alice")
    assert viewer_client.post(f"/team/members/{alice.pk}/role/", {"role": "viewer"}).status_code == 403
    assert member_client.post(f"/team/members/{alice.pk}/role/", {"role": "viewer"}).status_code == 403
    alice.refresh_from_db()
    assert alice.role == Role.OWNER


def test_an_admin_cannot_touch_an_owner_or_make_one(admin_client_a, team_a, viewer):
    alice = Membership.objects.get(team=team_a, user__username="alice")
    admin_client_a.post(f"/team/members/{alice.pk}/role/", {"role": "viewer"})
    alice.refresh_from_db()
    assert alice.role == Role.OWNER
    victor = Membership.objects.get(team=team_a, user=viewer)
    page = admin_client_a.post(f"/team/members/{victor.pk}/role/", {"role": "owner"}, follow=True)
    assert b"only an owner can make another owner" in page.content
    victor.refresh_from_db()
    assert victor.role == Role.VIEWER


def test_the_last_owner_keeps_the_team(owner_client, team_a):
    alice = Membership.objects.get(team=team_a, user__username="alice")
    page = owner_client.post(f"/team/members/{alice.pk}/role/", {"role": "member"}, follow=True)
    assert b"at least one owner" in page.content
    alice.refresh_from_db()
    assert alice.role == Role.OWNER


def test_an_invitation_link_lets_a_logged_in_user_join(owner_client, make_user, team_a):
    link = _invite(owner_client, role="viewer")
    assert Invitation.objects.get().note == "for Nora"
    nora = make_user("nora")
    client = Client()
    client.force_login(nora)
    page = client.get(link)
    assert page.status_code == 200 and b"Join Team A" in page.content
    response = client.post(link)
    assert response.status_code == 302
    assert Membership.objects.get(team=team_a, user=nora).role == Role.VIEWER
    # Used once: the link no longer works.
    again = Client().get(link)
    assert again.status_code == 410 and b"accepted" in again.content


def test_an_invitation_link_lets_a_new_person_sign_up_and_join(owner_client, team_a):
    link = _invite(owner_client, role="member")
    client = Client()
    page = client.get(link)
    assert b'<label for="id_username">' in page.content
    response = client.post(
        link,
        {
            "username": "newbie",
            "email": "",
            "password1": "a-very-long-pass-phrase",
            "password2": "a-very-long-pass-phrase",
        },
    )
    assert response.status_code == 302
    assert Membership.objects.get(team=team_a, user__username="newbie").role == Role.MEMBER
    assert b"Team A" in client.get("/").content  # logged in, in the new team


def test_a_sign_up_with_mismatched_passwords_shows_the_error(owner_client):
    link = _invite(owner_client)
    page = Client().post(
        link, {"username": "x1", "password1": "a-very-long-pass-phrase", "password2": "other-pass-phrase-9"}
    )
    assert page.status_code == 200
    assert b"didn" in page.content or b"match" in page.content
    assert not Membership.objects.filter(user__username="x1").exists()


def test_a_forged_revoked_or_expired_invitation_does_not_work(owner_client, team_a, make_user):
    link = _invite(owner_client)
    token = link.rstrip("/").rsplit("/", 1)[1]
    assert Client().get(f"/invite/{token[:-3]}xyz/").status_code == 404
    invitation = Invitation.objects.get()
    owner_client.post(f"/team/invitations/{invitation.pk}/revoke/")
    assert Client().get(link).status_code == 410
    link2 = _invite(owner_client)
    from datetime import timedelta

    from django.utils import timezone

    Invitation.objects.exclude(pk=invitation.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    outsider = Client()
    outsider.force_login(make_user("late"))
    assert outsider.post(link2).status_code == 410
    assert not Membership.objects.filter(user__username="late").exists()


def test_members_cannot_invite_and_admins_cannot_invite_owners(member_client, admin_client_a):
    assert member_client.post("/team/invitations/", {"role": "member", "valid_days": 7}).status_code == 403
    page = admin_client_a.post("/team/invitations/", {"role": "owner", "valid_days": 7})
    assert page.status_code == 400
    assert not Invitation.objects.exists()


def test_an_api_key_secret_is_shown_once(owner_client, team_a):
    response = owner_client.post("/team/api-keys/new/", {"name": "ci bot", "scopes": ["read", "query"]})
    assert response.status_code == 302 and response.url == "/team/api-keys/"
    page = owner_client.get(response.url)
    assert page["Cache-Control"] == "no-store"
    secret = re.search(r'value="(psk_[^"]+)"', page.content.decode()).group(1)
    key = ApiKey.objects.get(team=team_a)
    assert key.scopes == ["query", "read"]
    listing = owner_client.get("/team/api-keys/")
    assert secret.encode() not in listing.content
    assert f"psk_{key.prefix}_".encode() in listing.content
    assert b"never" in listing.content  # last used
    # The secret works against the API.
    assert Client().get("/api/v1/me", HTTP_AUTHORIZATION=f"Bearer {secret}").status_code == 200


def test_an_api_key_can_be_revoked_and_needs_a_scope(owner_client, team_a):
    assert owner_client.post("/team/api-keys/new/", {"name": "x"}).status_code == 400
    owner_client.post("/team/api-keys/new/", {"name": "x", "scopes": ["read"]})
    key = ApiKey.objects.get(team=team_a)
    owner_client.post(f"/team/api-keys/{key.pk}/revoke/")
    key.refresh_from_db()
    assert key.revoked_at is not None
    assert b"revoked" in owner_client.get("/team/api-keys/").content


def test_viewers_and_members_see_keys_but_cannot_create_or_revoke(viewer_client, member_client, team_a, make_api_key):
    created = make_api_key(team_a)
    for client in (viewer_client, member_client):
        page = client.get("/team/api-keys/")
        assert page.status_code == 200 and b"test key" in page.content and b"Create key" not in page.content
        assert client.post("/team/api-keys/new/", {"name": "x", "scopes": ["read"]}).status_code == 403
        assert client.post(f"/team/api-keys/{created.api_key.pk}/revoke/").status_code == 403


def test_another_teams_member_gets_404_for_team_objects(outsider_client, team_a, make_api_key, owner_client):
    key = make_api_key(team_a)
    _invite(owner_client)
    invitation = Invitation.objects.get()
    victor = Membership.objects.get(team=team_a, user__username="victor")
    assert outsider_client.post(f"/team/api-keys/{key.api_key.pk}/revoke/").status_code == 404
    assert outsider_client.post(f"/team/invitations/{invitation.pk}/revoke/").status_code == 404
    assert outsider_client.post(f"/team/members/{victor.pk}/role/", {"role": "admin"}).status_code == 404
    assert outsider_client.post(f"/team/members/{victor.pk}/remove/").status_code == 404
    assert b"test key" not in outsider_client.get("/team/api-keys/").content
    assert b"victor" not in outsider_client.get("/team/members/").content


def test_a_member_can_leave_but_the_last_owner_cannot(member_client, owner_client, team_a, member):
    mine = Membership.objects.get(team=team_a, user=member)
    assert member_client.post(f"/team/members/{mine.pk}/remove/").status_code == 302
    assert not Membership.objects.filter(pk=mine.pk).exists()
    alice = Membership.objects.get(team=team_a, user__username="alice")
    page = owner_client.post(f"/team/members/{alice.pk}/remove/", follow=True)
    assert b"at least one owner" in page.content


def test_reloading_after_creating_a_key_creates_no_second_one_and_hides_the_secret(owner_client, team_a):
    response = owner_client.post("/team/api-keys/new/", {"name": "ci bot", "scopes": ["read"]}, follow=True)
    assert response.redirect_chain == [("/team/api-keys/", 302)]
    secret = re.search(r'value="(psk_[^"]+)"', response.content.decode()).group(1)
    assert b"Copy the secret now" in response.content
    reload = owner_client.get("/team/api-keys/")  # what a browser's reload does after the redirect
    assert secret.encode() not in reload.content and b"Copy the secret now" not in reload.content
    assert ApiKey.objects.filter(team=team_a).count() == 1


def test_reloading_after_creating_an_invitation_creates_no_second_one(owner_client, team_a):
    link = _invite(owner_client)
    reload = owner_client.get("/team/members/")
    assert link.encode() not in reload.content and b"Invitation link created" not in reload.content
    assert Invitation.objects.filter(team=team_a).count() == 1


def test_a_flashed_secret_is_not_shown_in_another_team(owner_client, team_a, alice, make_team):
    from apps.accounts.services import membership_set

    other = make_team("Team C")
    membership_set(team=other, user=alice, role=Role.OWNER)
    owner_client.post("/team/api-keys/new/", {"name": "ci bot", "scopes": ["read"]})
    owner_client.post("/team/switch/", {"team_id": other.pk})
    page = owner_client.get("/team/api-keys/")
    assert page.context["active_team"] == other
    assert b"psk_" not in page.content and b"Copy the secret now" not in page.content
