"""Changes to a managed endpoint's deployments: scale, split the traffic, remove one. Each is
checked before it is queued (quota, shares adding up to 100, no traffic on what is removed, one
change at a time), then run as a job by a real worker against the local runtime."""

import re

import pytest
from django.urls import reverse

from opsportal.accounts.models import Role
from opsportal.core.models import AuditEvent
from opsportal.inventory.models import Endpoint, ManagedDeployment, ProvisioningState
from opsportal.jobs.models import Job
from tests.conftest import client_for
from tests.factories import EndpointFactory, MembershipFactory, UserFactory, offering
from tests.runtime_support import SMOL, start_runtime
from tests.worker_support import start_worker, stop_worker, wait_job

pytestmark = pytest.mark.production_path


def managed(world, **deployments: tuple[int, int]) -> Endpoint:
    endpoint = EndpointFactory(
        workspace=world.ws_a, name="ep-managed", kind="managed", content_safety=False
    )
    for name, (count, traffic) in deployments.items():
        ManagedDeployment.objects.create(
            endpoint=endpoint,
            name=name,
            vm_sku="Standard_NC24",
            instance_count=count,
            traffic_percent=traffic,
            state=ProvisioningState.SUCCEEDED,
        )
    return endpoint


@pytest.fixture
def quota(world):
    from opsportal.inventory.models import ComputeQuota, VmSize

    world.ws_a.region = "eastus2"
    world.ws_a.save()
    VmSize.objects.create(
        account=world.ws_a.account, region="eastus2", name="Standard_NC24", cores=24, family="NC"
    )
    ComputeQuota.objects.create(
        account=world.ws_a.account, region="eastus2", family="NC", used=48, limit=96
    )


def test_scaling_beyond_the_free_cores_is_refused_before_any_job(world, quota):
    endpoint = managed(world, blue=(2, 100))
    client = client_for(world.operator)
    url = reverse("deployment_scale", args=[endpoint.pk, "blue"])
    refused = client.post(url, {"instance_count": 5})
    assert refused.status_code == 422
    page = refused.content.decode()
    assert "needs 72 more NC cores; 48 of 96 are free" in page
    assert 'aria-invalid="true"' in page and 'role="alert"' in page
    assert client.post(url, {"instance_count": "two"}).status_code == 422
    assert not Job.objects.exists()
    accepted = client.post(url, {"instance_count": 4})
    job = Job.objects.get(kind=Job.Kind.SCALE)
    assert accepted.status_code == 302 and accepted.url == job.get_absolute_url()
    assert job.params == {"endpoint_id": endpoint.pk, "deployment": "blue", "instance_count": 4}
    # One change at a time: a second request while it is pending leads to the first.
    again = client.post(reverse("endpoint_traffic", args=[endpoint.pk]), {"traffic-blue": 100})
    assert again.url == job.get_absolute_url() and Job.objects.count() == 1
    assert AuditEvent.objects.get().action == "deployment-scale.requested"


def test_traffic_shares_must_add_up_to_100(world, quota):
    endpoint = managed(world, blue=(1, 100), green=(1, 0))
    client = client_for(world.operator)
    url = reverse("endpoint_traffic", args=[endpoint.pk])
    refused = client.post(url, {"traffic-blue": 80, "traffic-green": 10})
    assert refused.status_code == 422
    assert "add up to 90 %" in refused.content.decode()
    assert 'value="80"' in refused.content.decode()  # what was typed stays
    assert client.post(url, {"traffic-blue": 90, "traffic-nope": 10}).status_code == 422
    assert client.post(url, {"traffic-blue": 90, "traffic-green": 10}).status_code == 302
    assert Job.objects.get().params["traffic"] == {"blue": 90, "green": 10}


def test_a_deployment_that_serves_traffic_is_not_removed(world, quota):
    endpoint = managed(world, blue=(1, 100), green=(1, 0))
    client = client_for(world.operator)
    refused = client.post(reverse("deployment_remove", args=[endpoint.pk, "blue"]))
    assert refused.status_code == 422
    assert "still takes 100 % of the traffic" in refused.content.decode()
    page = client.get(reverse("deployments_manage", args=[endpoint.pk])).content.decode()
    assert "move its traffic first" in page and "Remove green" in page
    assert client.post(reverse("deployment_remove", args=[endpoint.pk, "green"])).status_code == 302


def test_a_viewer_sees_the_deployments_without_the_controls(world, quota):
    endpoint = managed(world, blue=(1, 100))
    page = client_for(world.viewer).get(reverse("deployments_manage", args=[endpoint.pk]))
    assert page.status_code == 200
    text = page.content.decode()
    assert "needs the operator role" in text
    assert "Apply traffic split" not in text and "Scale</button>" not in text
    serverless = EndpointFactory(workspace=world.ws_a, name="ep-serverless", kind="serverless")
    assert (
        client_for(world.operator)
        .get(reverse("deployments_manage", args=[serverless.pk]))
        .status_code
        == 404
    )


@pytest.fixture
def stack(transactional_db, catalog, settings):
    running, stop = start_runtime(settings)
    worker = start_worker(OPSPORTAL_RUNTIME_URL=running.url)
    operator = UserFactory(username="changer@example.com")
    MembershipFactory(user=operator, team=running.workspace.team, role=Role.OPERATOR)
    yield running, operator
    stop_worker(worker)
    stop()


def deploy(client, running, **fields) -> Job:
    before = set(Job.objects.values_list("pk", flat=True))
    response = client.post(
        reverse("deploy_create"),
        {
            "workspace": running.workspace.pk,
            "offering": offering(SMOL).pk,
            "kind": "managed",
            "vm_sku": "Local_1T_2K",
            "instance_count": 1,
            **fields,
        },
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    return wait_job(Job.objects.exclude(pk__in=before).get())


def change(client, url: str, data: dict) -> Job:
    before = set(Job.objects.values_list("pk", flat=True))
    response = client.post(url, data)
    assert response.status_code == 302, response.content.decode()[:3000]
    job = wait_job(Job.objects.exclude(pk__in=before).get())
    assert job.status == Job.Status.SUCCEEDED, (job.error, job.log)
    return job


def test_scale_split_and_remove_on_the_local_runtime(stack):
    running, operator = stack
    client = client_for(operator)
    first = deploy(
        client,
        running,
        endpoint_mode="new",
        name="changes-smol",
        deployment_name="blue",
        traffic_percent=100,
    )
    assert first.status == Job.Status.SUCCEEDED, (first.error, first.log)
    endpoint = Endpoint.objects.get(name="changes-smol", deleted_at__isnull=True)

    # Scale blue to both of this machine's cores, and back.
    change(client, reverse("deployment_scale", args=[endpoint.pk, "blue"]), {"instance_count": 2})
    assert endpoint.deployments.get(name="blue").instance_count == 2
    route = running.wait_route("changes-smol", lambda r: len(r.deployments[0][1]) == 2)
    assert len(route.deployments[0][1]) == 2  # two replicas serve it
    change(client, reverse("deployment_scale", args=[endpoint.pk, "blue"]), {"instance_count": 1})

    # A second deployment, then 90/10 between them; the runtime follows the weights.
    second = deploy(
        client,
        running,
        endpoint_mode="existing",
        existing=endpoint.pk,
        deployment_name="green",
        traffic_percent=0,
    )
    assert second.status == Job.Status.SUCCEEDED, (second.error, second.log)
    url = reverse("endpoint_traffic", args=[endpoint.pk])
    change(client, url, {"traffic-blue": 90, "traffic-green": 10})
    shares = dict(
        endpoint.deployments.filter(deleted_at__isnull=True).values_list("name", "traffic_percent")
    )
    assert shares == {"blue": 90, "green": 10}
    route = running.wait_route(
        "changes-smol", lambda r: sorted(w for w, _ in r.deployments) == [10, 90]
    )

    # No cores left for a second green instance: refused before any job.
    refused = client.post(
        reverse("deployment_scale", args=[endpoint.pk, "green"]), {"instance_count": 2}
    )
    assert refused.status_code == 422
    assert re.search(r"needs 1 more local cores; 0 of \d+ are free", refused.content.decode())

    # Remove green once it serves nothing.
    change(client, url, {"traffic-blue": 100, "traffic-green": 0})
    remove = change(client, reverse("deployment_remove", args=[endpoint.pk, "green"]), {})
    assert not endpoint.deployments.filter(name="green", deleted_at__isnull=True).exists()
    assert "green is removed" in " ".join(remove.log)
    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {"deployment.scale", "endpoint.traffic", "deployment.delete"} <= actions
