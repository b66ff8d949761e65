"""Deploy, rotate and delete for real: the console's views, a Celery worker in its own process,
the broker of the phase (the embedded SQLite broker, then Redis), and the local runtime with
the real model. Then the worker is killed in the middle of a deploy."""

import signal

import httpx
import pytest
from django.urls import reverse

from opsportal.accounts.models import Role
from opsportal.core.models import AuditEvent
from opsportal.inventory.models import Endpoint, ProvisioningState
from opsportal.jobs.models import Job
from opsportal.jobs.services import job_create, jobs_reap
from opsportal.keys.models import SecretVersion
from opsportal.keys.store import secret_current, secret_value
from opsportal.runtime.models import LocalKey
from tests.conftest import client_for
from tests.factories import MembershipFactory, UserFactory, offering
from tests.runtime_support import SMOL, free_port, start_runtime
from tests.worker_support import start_worker, stop_worker, wait_job

pytestmark = pytest.mark.production_path
CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}


def chat(uri: str, key: str) -> int:
    return httpx.post(
        f"{uri}/v1/chat/completions",
        json=CHAT,
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    ).status_code


@pytest.fixture
def stack(transactional_db, catalog, settings):
    running, stop = start_runtime(settings)
    worker = start_worker(OPSPORTAL_RUNTIME_URL=running.url)
    operator = UserFactory(username="deployer@example.com")
    MembershipFactory(user=operator, team=running.workspace.team, role=Role.OPERATOR)
    yield running, worker, operator
    stop_worker(worker)
    stop()


def test_deploy_rotate_delete_end_to_end(stack):
    running, _, operator = stack
    client = client_for(operator)
    response = client.post(
        reverse("deploy_create"),
        {
            "workspace": running.workspace.pk,
            "offering": offering(SMOL).pk,
            "kind": "serverless",
            "name": "e2e-smol",
            "accept_terms": "on",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    deploy = wait_job(Job.objects.get(kind="deploy"))
    assert deploy.status == Job.Status.SUCCEEDED, (deploy.error, deploy.log)
    steps = " ".join(deploy.log)
    for expected in ("Subscribing", "Creating endpoint", "Provisioning", "Smoke test", "answered"):
        assert expected in steps, expected
    endpoint = Endpoint.objects.get(name="e2e-smol", deleted_at__isnull=True)
    assert endpoint.provisioning_state == ProvisioningState.SUCCEEDED
    assert deploy.endpoint == endpoint
    published = secret_current(endpoint=endpoint)
    assert published.slot == "primary"
    old_primary = secret_value(published)
    old_secondary = running.provider.keys_get(name="e2e-smol").secondary
    assert chat(endpoint.scoring_uri, old_primary) == 200
    # No key in the job: not in its parameters, state, log or error.
    assert old_primary not in str([deploy.params, deploy.state, deploy.log, deploy.error])

    response = client.post(reverse("key_rotate", args=[endpoint.pk]))
    rotation = wait_job(Job.objects.get(kind="key-rotation"))
    assert rotation.status == Job.Status.SUCCEEDED, (rotation.error, rotation.log)
    keys = running.provider.keys_get(name="e2e-smol")
    assert keys.primary != old_primary and keys.secondary != old_secondary
    assert chat(endpoint.scoring_uri, old_primary) == 401
    assert chat(endpoint.scoring_uri, old_secondary) == 401
    assert chat(endpoint.scoring_uri, keys.primary) == 200
    assert chat(endpoint.scoring_uri, keys.secondary) == 200
    # Secondary was published before the primary was regenerated; the primary is current.
    versions = list(SecretVersion.objects.filter(endpoint=endpoint).order_by("version"))
    assert [v.slot for v in versions] == ["secondary", "primary", "secondary", "primary"]
    assert secret_value(versions[-1]) == keys.primary
    assert secret_value(versions[-2]) == keys.secondary
    actions = list(
        AuditEvent.objects.filter(job=rotation).order_by("pk").values_list("action", "detail")
    )
    assert [a for a, _ in actions] == [
        "key.rotate.requested",
        "key.regenerate",
        "key.verify",
        "key.publish",
        "key.regenerate",
        "key.verify",
        "key.publish",
        "key.rotate",
    ]
    assert [d for a, d in actions if a == "key.regenerate"] == ["secondary", "primary"]
    for text in [str(rotation.log), str(list(AuditEvent.objects.values_list("detail")))]:
        assert keys.primary not in text and keys.secondary not in text

    client.post(reverse("endpoint_delete", args=[endpoint.pk]), {"confirm": "e2e-smol"})
    delete = wait_job(Job.objects.get(kind="delete"))
    assert delete.status == Job.Status.SUCCEEDED, (delete.error, delete.log)
    endpoint.refresh_from_db()
    assert endpoint.deleted_at is not None
    assert chat(endpoint.scoring_uri, keys.primary) in (401, 404)
    assert not SecretVersion.objects.filter(endpoint=endpoint).exists()
    assert not LocalKey.objects.filter(endpoint=endpoint).exists()


def test_a_worker_killed_mid_deploy_leaves_exactly_one_endpoint(
    transactional_db, catalog, settings
):
    from opsportal.inventory.services import local_workspace_ensure

    workspace = local_workspace_ensure()
    # The runtime is not up yet: the deploy waits in "Provisioning" until it is.
    port = free_port()
    runtime_url = f"http://127.0.0.1:{port}"
    first = start_worker(OPSPORTAL_RUNTIME_URL=runtime_url)
    try:
        job = job_create(
            kind="deploy",
            target_label="kill-smol",
            workspace=workspace,
            params={
                "workspace_id": workspace.pk,
                "offering": SMOL,
                "kind": "serverless",
                "name": "kill-smol",
                "terms_accepted": True,
                "content_safety": True,
            },
        )
        job = wait_job(job, timeout=90, until=lambda j: "Provisioning" in j.step)
        assert job.state.get("endpoint_created") and job.status == Job.Status.RUNNING
    finally:
        stop_worker(first, signal.SIGKILL)
    assert first.returncode == -signal.SIGKILL
    job.refresh_from_db()
    assert job.status == Job.Status.RUNNING  # nobody told the console: the reaper must notice

    _running, stop = start_runtime(settings, port=port)
    second = start_worker(OPSPORTAL_RUNTIME_URL=runtime_url)
    try:
        requeued = wait_job(
            job, timeout=30, until=lambda j: bool(jobs_reap(stale_after=3)) or j.attempts > 1
        )
        assert requeued.pk == job.pk
        job = wait_job(job, timeout=180)
    finally:
        stop_worker(second)
        stop()
    assert job.status == Job.Status.SUCCEEDED, (job.error, job.log)
    assert job.attempts == 2
    assert any("stopped" in line for line in job.log)
    assert Endpoint.objects.filter(name="kill-smol").count() == 1
    assert Job.objects.filter(kind="deploy").count() == 1
    assert LocalKey.objects.filter(endpoint__name="kill-smol").count() == 2


def test_cancel_while_provisioning_leaves_a_tracked_endpoint(transactional_db, catalog, settings):
    from opsportal.inventory.services import local_workspace_ensure
    from opsportal.jobs.services import job_cancel

    workspace = local_workspace_ensure()
    worker = start_worker(OPSPORTAL_RUNTIME_URL=f"http://127.0.0.1:{free_port()}")  # no runtime
    try:
        job = job_create(
            kind="deploy",
            target_label="cancel-smol",
            workspace=workspace,
            params={
                "workspace_id": workspace.pk,
                "offering": SMOL,
                "kind": "serverless",
                "name": "cancel-smol",
                "terms_accepted": True,
                "content_safety": True,
            },
        )
        job = wait_job(job, timeout=90, until=lambda j: "Provisioning" in j.step)
        job_cancel(job=job, user=None)
        job = wait_job(job, timeout=30)
    finally:
        stop_worker(worker)
    assert job.status == Job.Status.CANCELLED
    assert "cancel-smol was created: it exists and is tracked" in job.error
    endpoint = Endpoint.objects.get(name="cancel-smol", deleted_at__isnull=True)
    assert job.endpoint == endpoint  # the console knows exactly what the job left behind
    assert not any("Smoke test" in line for line in job.log)


def test_a_managed_deployment_through_the_wizard(stack):
    running, _, operator = stack
    response = client_for(operator).post(
        reverse("deploy_create"),
        {
            "workspace": running.workspace.pk,
            "offering": offering(SMOL).pk,
            "kind": "managed",
            "endpoint_mode": "new",
            "name": "smol-managed",
            "deployment_name": "blue",
            "vm_sku": "Local_1T_2K",
            "instance_count": "1",
            "traffic_percent": "100",
            "content_safety": "on",
        },
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    job = wait_job(Job.objects.get(kind="deploy"))
    assert job.status == Job.Status.SUCCEEDED, (job.error, job.log)
    log = " ".join(job.log)
    assert "cores needed, within quota" in log and "Deployment blue is provisioned" in log
    assert "Marketplace" not in log  # managed compute: no Marketplace subscription
    endpoint = Endpoint.objects.get(name="smol-managed", deleted_at__isnull=True)
    (deployment,) = endpoint.deployments.filter(deleted_at__isnull=True)
    assert (deployment.name, deployment.vm_sku, deployment.traffic_percent) == (
        "blue",
        "Local_1T_2K",
        100,
    )
    key = secret_value(secret_current(endpoint=endpoint))
    assert chat(endpoint.scoring_uri, key) == 200
