import pytest
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from opsportal.accounts.models import Membership, Role
from opsportal.core.models import AuditEvent
from opsportal.jobs.models import Job
from opsportal.keys.models import RotationSchedule, SecretVersion
from tests.conftest import client_for
from tests.factories import EndpointFactory, MembershipFactory, UserFactory

pytestmark = pytest.mark.production_path


def mutation_url_names() -> set[str]:
    """Every URL whose view is marked as a mutation (see accounts.permissions.mutation)."""
    names: set[str] = set()

    def walk(patterns: list) -> None:
        for p in patterns:
            if isinstance(p, URLResolver):
                walk(p.url_patterns)
            elif isinstance(p, URLPattern) and hasattr(p.callback, "mutation_role"):
                names.add(p.name)

    walk(get_resolver().url_patterns)
    return names


def mutation_urls(world) -> dict[str, str]:
    membership = Membership.objects.get(user=world.operator, team=world.team_a)
    managed = EndpointFactory(workspace=world.ws_a, name="ep-managed", kind="managed")
    job = Job.objects.get_or_create(
        kind="deploy",
        workspace=world.ws_a,
        target_label="perm-test",
        defaults={"status": Job.Status.FAILED, "params": {"name": "perm-test"}},
    )[0]
    return {
        "member_add": reverse("member_add", args=[world.team_a.slug]),
        "member_update": reverse("member_update", args=[world.team_a.slug, membership.pk]),
        "member_remove": reverse("member_remove", args=[world.team_a.slug, membership.pk]),
        "chat_turn_create": reverse("chat_turn_create", args=[world.endpoint_a.pk]),
        "chat_clear": reverse("chat_clear", args=[world.endpoint_a.pk]),
        "chat_compare_create": reverse("chat_compare_create"),
        "azure_sync_start": reverse("azure_sync_start"),
        "deploy_create": reverse("deploy_create"),
        "endpoint_delete": reverse("endpoint_delete", args=[world.endpoint_a.pk]),
        "key_rotate": reverse("key_rotate", args=[world.endpoint_a.pk]),
        "key_schedule": reverse("key_schedule", args=[world.endpoint_a.pk]),
        "key_reveal": reverse("key_reveal", args=[world.endpoint_a.pk]),
        "keys_rotate_bulk": reverse("keys_rotate_bulk"),
        "job_cancel": reverse("job_cancel", args=[job.pk]),
        "job_retry": reverse("job_retry", args=[job.pk]),
        "budget_set": reverse("budget_set", args=[world.team_a.slug]),
        "deployment_scale": reverse("deployment_scale", args=[managed.pk, "blue"]),
        "deployment_remove": reverse("deployment_remove", args=[managed.pk, "blue"]),
        "endpoint_traffic": reverse("endpoint_traffic", args=[managed.pk]),
        "workspace_team": reverse("workspace_team", args=[world.ws_a.pk]),
        "team_create": reverse("team_create"),
    }


def test_it_covers_every_mutation(world):
    # A new mutation view must be added to mutation_urls, so the 403 test below sees it.
    assert mutation_url_names() == set(mutation_urls(world))


def test_it_forbids_every_mutation_to_a_viewer(world):
    client = client_for(world.viewer)
    before = list(Membership.objects.order_by("pk").values_list("pk", "role"))
    for name, url in mutation_urls(world).items():
        response = client.post(
            url,
            {
                "email": "viewer@example.com",
                "role": "admin",
                "message": "hi",
                "left": world.endpoint_a.pk,
                "right": world.endpoint_a.pk,
                "workspace": world.ws_a.pk,
                "endpoint": world.endpoint_a.pk,
                "confirm": world.endpoint_a.name,
                "slot": "primary",
                "every_days": 3,
                "monthly_amount": "100",
                "currency": "USD",
                "warn_percent": "80",
            },
        )
        assert response.status_code == 403, name
    assert list(Membership.objects.order_by("pk").values_list("pk", "role")) == before
    # Nothing was started, scheduled, revealed or cancelled.
    assert list(Job.objects.values_list("kind", "status")) == [("deploy", "failed")]
    assert not RotationSchedule.objects.exists() and not SecretVersion.objects.exists()
    assert not AuditEvent.objects.exists()


def test_it_lets_an_operator_rotate_but_only_an_admin_reveal(world):
    client = client_for(world.operator)
    url = reverse("key_reveal", args=[world.endpoint_a.pk])
    assert client.post(url, {"slot": "primary"}).status_code == 403
    assert not AuditEvent.objects.filter(action="key.reveal").exists()


def test_it_forbids_member_management_to_an_operator(world):
    response = client_for(world.operator).post(
        reverse("member_add", args=["alpha"]), {"email": "viewer@example.com", "role": "admin"}
    )
    assert response.status_code == 403
    assert Membership.objects.get(user=world.viewer).role == Role.VIEWER


def test_it_hides_another_teams_objects(world):
    client = client_for(world.outsider)
    for url in [
        reverse("workspace_detail", args=[world.ws_a.pk]),
        reverse("endpoint_detail", args=[world.endpoint_a.pk]),
        reverse("team_detail", args=["alpha"]),
        reverse("member_add", args=["alpha"]),
    ]:
        method = client.post if "members" in url else client.get
        assert method(url).status_code == 404, url


def test_it_lists_only_own_team_objects(world):
    client = client_for(world.viewer)
    body = client.get(reverse("endpoints")).content.decode()
    assert "ep-alpha" in body
    assert "ep-beta" not in body
    body = client.get(reverse("workspaces")).content.decode()
    assert "ws-alpha" in body
    assert "ws-beta" not in body


def test_it_shows_everything_to_a_superuser(world):
    root = UserFactory(username="root@example.com", is_superuser=True, is_staff=True)
    body = client_for(root).get(reverse("endpoints")).content.decode()
    assert "ep-alpha" in body
    assert "ep-beta" in body


def test_it_requires_login_everywhere(world):
    from django.test import Client

    client = Client()
    for url in [reverse("dashboard"), reverse("endpoints"), reverse("offerings"), reverse("jobs")]:
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("login"))


def test_it_lets_a_team_admin_manage_members(world):
    client = client_for(world.admin)
    newcomer = UserFactory(username="new@example.com")
    response = client.post(
        reverse("member_add", args=["alpha"]), {"email": "NEW@example.com", "role": "operator"}
    )
    assert response.status_code == 302
    assert Membership.objects.get(user=newcomer, team=world.team_a).role == Role.OPERATOR

    viewer = Membership.objects.get(user=world.viewer)
    client.post(reverse("member_update", args=["alpha", viewer.pk]), {"role": "operator"})
    viewer.refresh_from_db()
    assert viewer.role == Role.OPERATOR

    client.post(reverse("member_remove", args=["alpha", viewer.pk]))
    assert not Membership.objects.filter(pk=viewer.pk).exists()


def test_it_explains_an_unknown_user_with_a_field_error(world):
    response = client_for(world.admin).post(
        reverse("member_add", args=["alpha"]), {"email": "ghost@example.com", "role": "viewer"}
    )
    assert response.status_code == 400
    assert "No user with that email or username." in response.content.decode()


def test_it_keeps_the_last_admin(world):
    me = Membership.objects.get(user=world.admin)
    client = client_for(world.admin)
    client.post(reverse("member_update", args=["alpha", me.pk]), {"role": "viewer"})
    client.post(reverse("member_remove", args=["alpha", me.pk]))
    me.refresh_from_db()
    assert me.role == Role.ADMIN


def test_it_refuses_get_on_a_mutation(world):
    response = client_for(world.admin).get(reverse("member_add", args=["alpha"]))
    assert response.status_code == 405


def test_it_gives_a_role_on_one_team_nothing_on_another(world):
    MembershipFactory(team=world.team_b, user=world.viewer, role=Role.VIEWER)
    membership = Membership.objects.get(user=world.outsider)
    response = client_for(world.viewer).post(
        reverse("member_update", args=["beta", membership.pk]), {"role": "viewer"}
    )
    assert response.status_code == 403
