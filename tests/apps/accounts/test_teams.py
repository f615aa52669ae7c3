import pytest

from apps.accounts.models import Role
from apps.accounts.services import membership_set
from apps.core.errors import PermissionDenied

pytestmark = pytest.mark.django_db


def test_a_user_can_belong_to_several_teams_and_switch_between_them(client, team_a, team_b, alice):
    membership_set(team=team_b, user=alice, role=Role.MEMBER)
    client.force_login(alice)
    assert client.get("/").context["active_team"] == team_a
    client.post("/team/switch/", {"team_id": team_b.pk})
    page = client.get("/")
    assert page.context["active_team"] == team_b
    assert page.context["active_membership"].role == Role.MEMBER


def test_a_user_cannot_switch_to_a_team_they_are_not_in(client, team_a, team_b, alice):
    client.force_login(alice)
    client.post("/team/switch/", {"team_id": team_b.pk})
    assert client.get("/").context["active_team"] == team_a


def test_only_admins_and_owners_change_roles(team_a, make_user):
    viewer = team_a.memberships.get(role=Role.VIEWER)
    with pytest.raises(PermissionDenied):
        membership_set(team=team_a, user=make_user("mallory"), role=Role.ADMIN, acting=viewer)
    owner = team_a.memberships.get(role=Role.OWNER)
    assert membership_set(team=team_a, user=viewer.user, role=Role.MEMBER, acting=owner).role == Role.MEMBER
