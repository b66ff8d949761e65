"""Teams are made in the console (superusers), not only in /admin/."""

from django.urls import reverse

from opsportal.accounts.models import Membership, Team
from opsportal.core.models import AuditEvent
from tests.conftest import client_for
from tests.factories import UserFactory


def test_a_superuser_creates_a_team_and_becomes_its_admin(world):
    root = UserFactory(username="root@example.com", is_superuser=True)
    client = client_for(root)
    assert "Create team" in client.get(reverse("teams")).content.decode()
    response = client.post(reverse("team_create"), {"name": "Gamma Ops", "slug": ""})
    team = Team.objects.get(name="Gamma Ops")
    assert response.status_code == 302 and response.url == team.get_absolute_url()
    assert team.slug == "gamma-ops"
    assert Membership.objects.get(team=team).user == root
    assert AuditEvent.objects.filter(action="team.create", object_label="Gamma Ops").exists()
    again = client.post(reverse("team_create"), {"name": "gamma ops", "slug": "other"})
    assert again.status_code == 422 and "A team named gamma ops exists" in again.content.decode()
    assert client.post(reverse("team_create"), {"name": "X", "slug": "alpha"}).status_code == 422
    # Team admins of other teams cannot.
    assert client_for(world.admin).post(reverse("team_create"), {"name": "Z"}).status_code == 403
    assert "Create team" not in client_for(world.admin).get(reverse("teams")).content.decode()


def test_every_membership_change_is_audited(world):
    client = client_for(world.admin)
    newcomer = UserFactory(username="new@example.com")
    client.post(
        reverse("member_add", args=["alpha"]), {"email": "new@example.com", "role": "viewer"}
    )
    member = Membership.objects.get(user=newcomer)
    client.post(reverse("member_update", args=["alpha", member.pk]), {"role": "admin"})
    client.post(reverse("member_remove", args=["alpha", member.pk]))
    events = list(
        AuditEvent.objects.filter(object_type="team").order_by("pk").values_list("action", "detail")
    )
    assert events == [
        ("member.add", "viewer"),
        ("member.change", "viewer -> admin"),
        ("member.remove", "admin"),
    ]
    assert all(e.actor == world.admin for e in AuditEvent.objects.filter(object_type="team"))
    # Refused changes (the last admin) are not recorded as done.
    me = Membership.objects.get(user=world.admin)
    client.post(reverse("member_remove", args=["alpha", me.pk]))
    assert AuditEvent.objects.filter(action="member.remove").count() == 1
