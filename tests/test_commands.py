import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from opsportal.accounts.models import Membership, Role, Team
from opsportal.inventory.models import CloudAccount, Endpoint, Workspace
from tests.factories import EndpointFactory


def test_it_bootstraps_the_local_workspace_once(db, capsys):
    call_command("bootstrap")
    call_command("bootstrap")
    workspace = Workspace.objects.get(provider="local")
    assert workspace.region == "local"
    assert workspace.team.name == "Local"
    assert "create_admin --email" in capsys.readouterr().out


def test_it_creates_the_first_admin_from_the_environment(db, settings):
    settings.OPSPORTAL_ADMIN_EMAIL = "boss@example.com"
    settings.OPSPORTAL_ADMIN_PASSWORD = "a-long-enough-password"
    call_command("bootstrap")
    user = get_user_model().objects.get(username="boss@example.com")
    assert user.is_superuser and user.check_password("a-long-enough-password")
    assert Membership.objects.get(user=user).role == Role.ADMIN
    # A second run leaves a changed password alone.
    user.set_password("changed-later-by-the-admin")
    user.save()
    call_command("bootstrap")
    user.refresh_from_db()
    assert user.check_password("changed-later-by-the-admin")


def test_it_creates_an_admin_with_a_generated_password(db, capsys):
    call_command("create_admin", email="ops@example.com")
    out = capsys.readouterr().out
    password = out.split("Generated password (shown once): ")[1].strip()
    assert get_user_model().objects.get(username="ops@example.com").check_password(password)


def test_it_refuses_a_weak_admin_password(db):
    with pytest.raises(CommandError, match="too short"):
        call_command("create_admin", email="ops@example.com", password="abc")


@pytest.mark.production_path
def test_it_seeds_demo_data_apart_and_removes_only_it(db):
    real = EndpointFactory(name="real-endpoint")
    call_command("seed_demo_inventory", subscriptions=3, workspaces=12, endpoints=120, teams=4)
    demo = CloudAccount.objects.filter(is_demo=True)
    assert demo.count() == 3
    assert Endpoint.objects.filter(workspace__account__is_demo=True).count() == 120
    assert Team.objects.filter(is_demo=True).count() == 4
    assert all(
        n.startswith("demo-")
        for n in Endpoint.objects.exclude(pk=real.pk).values_list("name", flat=True)
    )
    with pytest.raises(CommandError, match="exists already"):
        call_command("seed_demo_inventory", subscriptions=1, workspaces=1, endpoints=1)
    call_command("seed_demo_inventory", delete=True)
    assert not CloudAccount.objects.filter(is_demo=True).exists()
    assert list(Endpoint.objects.values_list("name", flat=True)) == ["real-endpoint"]
