"""The secret store (database, and Azure Key Vault over the SDK's real pipeline), schedules,
and the keys tab: masked everywhere, revealed only to admins, and audited."""

import json
from datetime import timedelta

import pytest
import responses
from django.urls import reverse
from django.utils import timezone

from opsportal.core.models import AuditEvent
from opsportal.jobs.models import Job
from opsportal.keys.models import RotationSchedule, SecretVersion
from opsportal.keys.services import rotations_due_start
from opsportal.keys.store import secret_current, secret_publish, secret_value, secrets_forget
from opsportal.providers import azure_cloud
from tests.azure_support import FakeCredential
from tests.conftest import client_for

pytestmark = pytest.mark.production_path
VAULT = "https://opsportal-test.vault.azure.net"


def test_each_publish_is_a_new_encrypted_version(world):
    ep = world.endpoint_a
    first = secret_publish(endpoint=ep, slot="secondary", value="key-one")
    second = secret_publish(endpoint=ep, slot="primary", value="key-two")
    assert (first.version, second.version) == (1, 2)
    assert "key-one" not in first.encrypted and secret_value(first) == "key-one"
    assert secret_current(endpoint=ep) == second
    assert "key-two" not in repr(second) and "key-two" not in str(second)
    assert secrets_forget(endpoint=ep) == 2
    assert secret_current(endpoint=ep) is None


def test_the_keys_tab_shows_fingerprints_only(world):
    secret_publish(endpoint=world.endpoint_a, slot="primary", value="super-secret-primary")
    for user in (world.viewer, world.operator, world.admin):
        page = client_for(user).get(world.endpoint_a.get_absolute_url() + "?tab=keys")
        html = page.content.decode()
        assert "super-secret-primary" not in html
        assert SecretVersion.objects.get().fingerprint in html
        assert ("Reveal" in html) == (user == world.admin)
        assert ("Rotate keys now" in html) == (user != world.viewer)


def test_an_admin_reveals_a_key_and_it_is_audited(world):
    secret_publish(endpoint=world.endpoint_a, slot="primary", value="super-secret-primary")
    response = client_for(world.admin).post(
        reverse("key_reveal", args=[world.endpoint_a.pk]), {"slot": "primary"}
    )
    assert response.status_code == 200
    assert "super-secret-primary" in response.content.decode()
    assert "no-store" in response["Cache-Control"]
    event = AuditEvent.objects.get(action="key.reveal")
    assert (event.actor, event.endpoint, event.detail) == (
        world.admin,
        world.endpoint_a,
        "primary key, version 1",
    )
    bad = client_for(world.admin).post(
        reverse("key_reveal", args=[world.endpoint_a.pk]), {"slot": "tertiary"}
    )
    assert bad.status_code == 422 and "primary or the secondary" in bad.content.decode()


def test_the_schedule_is_kept_shown_and_validated(world):
    client = client_for(world.operator)
    url = reverse("key_schedule", args=[world.endpoint_a.pk])
    page = client.post(url, {"every_days": "30"})
    schedule = RotationSchedule.objects.get()
    assert schedule.enabled and schedule.every_days == 30
    expected = timezone.now() + timedelta(days=30)
    assert abs((schedule.next_run_at - expected).total_seconds()) < 60
    assert f"next rotation <strong>{schedule.next_run_at:%Y-%m-%d}" in page.content.decode()
    bad = client.post(url, {"every_days": "0"})
    assert bad.status_code == 422 and "greater than or equal to 1" in bad.content.decode()
    client.post(url, {"every_days": ""})
    schedule.refresh_from_db()
    assert not schedule.enabled and schedule.next_run_at is None
    assert AuditEvent.objects.filter(action="key.schedule").count() == 2


def test_due_schedules_start_one_rotation_each(world, django_capture_on_commit_callbacks):
    now = timezone.now()
    RotationSchedule.objects.create(
        endpoint=world.endpoint_a, every_days=7, next_run_at=now - timedelta(minutes=1)
    )
    RotationSchedule.objects.create(
        endpoint=world.endpoint_b, every_days=7, next_run_at=now + timedelta(days=1)
    )
    with django_capture_on_commit_callbacks(execute=False):
        started = rotations_due_start(now=now)
        again = rotations_due_start(now=now)  # a second beat tick in the same minute
    job = Job.objects.get()
    assert started == [job.pk] and again == []
    assert (job.kind, job.endpoint, job.requested_by) == ("key-rotation", world.endpoint_a, None)
    schedule = RotationSchedule.objects.get(endpoint=world.endpoint_a)
    assert schedule.next_run_at == now + timedelta(days=7)


def test_bulk_rotation_starts_a_job_per_endpoint_the_user_operates(world):
    from tests.factories import EndpointFactory

    second = EndpointFactory(workspace=world.ws_a, name="ep-alpha-2")
    response = client_for(world.operator).post(
        reverse("keys_rotate_bulk"),
        {"endpoint": [world.endpoint_a.pk, second.pk, world.endpoint_b.pk]},
    )
    assert response.url == reverse("jobs") + "?kind=key-rotation"
    assert set(Job.objects.values_list("endpoint__name", flat=True)) == {"ep-alpha", "ep-alpha-2"}
    # Asking again while they are queued adds nothing.
    client_for(world.operator).post(reverse("keys_rotate_bulk"), {"endpoint": [second.pk]})
    assert Job.objects.count() == 2
    empty = client_for(world.operator).post(reverse("keys_rotate_bulk"), {})
    assert empty.status_code == 302 and Job.objects.count() == 2


def test_key_vault_gets_a_new_secret_version_per_publish(world, settings, monkeypatch):
    settings.OPSPORTAL_KEYVAULT_URL = VAULT
    monkeypatch.setattr(azure_cloud, "credential", FakeCredential)
    secret_id = f"{VAULT}/secrets/opsportal-ws-alpha-ep-alpha/4387e9f3d6e14c459867679a90fd0f79"
    with responses.RequestsMock() as rs:
        # Key Vault's challenge: the first request is answered 401 with where to get a token.
        rs.add(
            responses.PUT,
            f"{VAULT}/secrets/opsportal-ws-alpha-ep-alpha",
            status=401,
            headers={
                "WWW-Authenticate": 'Bearer authorization="https://login.microsoftonline.com/'
                '00000000-1111-2222-3333-444444444444", resource="https://vault.azure.net"'
            },
        )
        # The SetSecret example of the Key Vault REST reference.
        rs.add(
            responses.PUT,
            f"{VAULT}/secrets/opsportal-ws-alpha-ep-alpha",
            json={
                "value": "vault-key-1",
                "id": secret_id,
                "contentType": "text/plain",
                "attributes": {
                    "enabled": True,
                    "created": 1493938410,
                    "updated": 1493938410,
                    "recoveryLevel": "Recoverable+Purgeable",
                },
                "tags": {"slot": "primary", "endpoint": "ep-alpha"},
            },
        )
        version = secret_publish(
            endpoint=world.endpoint_a, slot="primary", value="vault-key-1", retry_total=0
        )
        sent = json.loads(rs.calls[-1].request.body)
        assert sent["value"] == "vault-key-1" and sent["tags"]["slot"] == "primary"
        assert rs.calls[-1].request.headers["Authorization"] == "Bearer fake-token"
    assert (version.store, version.store_version) == ("keyvault", secret_id.rsplit("/", 1)[1])
    assert secret_value(version) == "vault-key-1"
