"""The deployment wizard: the pre-flight checks, live and on submit, before any provider call."""

import pytest
import responses
from django.urls import reverse

from opsportal.core.models import AuditEvent
from opsportal.inventory.models import ComputeQuota, Endpoint, MarketplaceSubscription, VmSize
from opsportal.jobs.models import Job
from tests.conftest import client_for
from tests.factories import EndpointFactory, WorkspaceFactory, offering

pytestmark = pytest.mark.production_path
LLAMA = "meta-llama-3-8b-instruct"


@pytest.fixture
def no_azure():
    """Any HTTP call from this process fails the test: the checks must not reach a provider."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rs:
        yield rs
        assert len(rs.calls) == 0


def form(world, **fields) -> dict:
    data = {
        "workspace": world.ws_a.pk,
        "offering": offering(LLAMA).pk,
        "kind": "serverless",
        "name": "llama-chat",
    }
    data.update(fields)
    return data


def checks(response) -> dict[str, str]:
    """check key -> status, read from the rendered checklist."""
    import re

    html = response.content.decode()
    return dict(re.findall(r'data-check="([a-z_]+)" data-status="([a-z]+)"', html))


def test_it_refuses_llama_outside_eastus2_and_swedencentral(world, no_azure):
    westus = WorkspaceFactory(team=world.team_a, name="ws-west", region="westus")
    client = client_for(world.operator)
    live = client.get(reverse("deploy_preflight"), form(world, workspace=westus.pk))
    assert checks(live)["region"] == "fail"
    text = live.content.decode()
    assert "eastus2 and swedencentral only" in text and "ws-west is in westus" in text
    submit = client.post(
        reverse("deploy_create"), form(world, workspace=westus.pk, accept_terms="on")
    )
    assert submit.status_code == 422
    assert "eastus2 and swedencentral only" in submit.content.decode()
    assert not Job.objects.exists() and not Endpoint.objects.filter(name="llama-chat").exists()
    assert len(no_azure.calls) == 0


def test_it_refuses_a_second_serverless_deployment_of_a_model(world, no_azure):
    first = EndpointFactory(
        workspace=world.ws_a, name="llama-one", kind="serverless", offering=offering(LLAMA)
    )
    client = client_for(world.operator)
    live = client.get(reverse("deploy_preflight"), form(world, name="llama-two"))
    assert checks(live)["one_per_model"] == "fail"
    assert first.get_absolute_url() in live.content.decode()
    submit = client.post(reverse("deploy_create"), form(world, name="llama-two", accept_terms="on"))
    assert (
        submit.status_code == 422
        and "already has a serverless deployment" in submit.content.decode()
    )
    assert not Job.objects.exists()
    assert len(no_azure.calls) == 0


def test_it_checks_the_name_rules_and_uniqueness_in_the_region(world, no_azure):
    other_ws = WorkspaceFactory(team=world.team_b, name="ws-other", region="eastus2")
    EndpointFactory(workspace=other_ws, name="taken-name", kind="serverless")
    client = client_for(world.operator)
    for name, expected in [
        ("9starts-with-digit", "not a valid endpoint name"),
        ("ends-with-", "not a valid endpoint name"),
        ("ab", "not a valid endpoint name"),
        ("taken-name", "taken in region eastus2"),
    ]:
        live = client.get(reverse("deploy_preflight"), form(world, name=name))
        assert checks(live)["name"] == "fail", name
        assert expected in live.content.decode(), name
    live = client.get(reverse("deploy_preflight"), form(world, name="fresh-name"))
    assert checks(live)["name"] == "ok"


def test_it_needs_the_marketplace_terms_only_for_the_first_deployment(world, no_azure):
    client = client_for(world.operator)
    live = client.get(reverse("deploy_preflight"), form(world))
    assert checks(live)["marketplace"] == "todo"
    text = live.content.decode()
    assert offering(LLAMA).terms_url in text and "Microsoft.SaaS/register/action" in text
    submit = client.post(reverse("deploy_create"), form(world))
    assert submit.status_code == 422 and not Job.objects.exists()
    assert (
        checks(client.get(reverse("deploy_preflight"), form(world, accept_terms="on")))[
            "marketplace"
        ]
        == "ok"
    )
    MarketplaceSubscription.objects.create(
        workspace=world.ws_a, offering=offering(LLAMA), name="llama", state="Succeeded"
    )
    live = client.get(reverse("deploy_preflight"), form(world))
    assert checks(live)["marketplace"] == "ok" and "continue to deploy" in live.content.decode()


def test_it_checks_sku_and_core_quota_for_managed_compute(world, no_azure):
    VmSize.objects.create(
        account=world.ws_a.account, region="eastus2", name="Standard_NC24", cores=24, family="NC"
    )
    ComputeQuota.objects.create(
        account=world.ws_a.account, region="eastus2", family="NC", used=24, limit=48
    )
    managed = {"kind": "managed", "offering": offering("mixtral-8x7b-instruct-v01").pk}
    client = client_for(world.operator)
    base = form(world, **managed, endpoint_mode="new", deployment_name="blue", traffic_percent=100)
    live = client.get(
        reverse("deploy_preflight"), {**base, "vm_sku": "Standard_NC24", "instance_count": 2}
    )
    assert (
        checks(live)["quota"] == "fail"
        and "needs 48 NC cores; 24 of 48 are free" in live.content.decode()
    )
    live = client.get(
        reverse("deploy_preflight"),
        {**base, "vm_sku": "Standard_NC24", "instance_count": 1, "shared_quota": "on"},
    )
    result = checks(live)
    # Shared quota cannot be asked for through the REST API: it is not offered as an option,
    # so the dedicated-core check is the one that counts.
    assert result["quota"] == "ok" and "shared_quota" not in result
    page = client.get(reverse("deploy_new")).content.decode()
    assert 'name="shared_quota"' not in page and 'name="content_safety"' not in page
    assert "the REST API has no field for it" in page


def test_an_azure_region_without_stored_sizes_defers_the_quota_check_to_the_job(world, no_azure):
    managed = {"kind": "managed", "offering": offering("mixtral-8x7b-instruct-v01").pk}
    live = client_for(world.operator).get(
        reverse("deploy_preflight"), form(world, **managed, vm_sku="Standard_X", instance_count=1)
    )
    assert checks(live)["quota"] == "warn"
    assert "The deploy job checks both with Azure" in live.content.decode()


def test_a_valid_submission_starts_a_job_with_plain_parameters(world, no_azure):
    response = client_for(world.operator).post(
        reverse("deploy_create"), form(world, accept_terms="on")
    )
    job = Job.objects.get()
    assert response.status_code == 302 and response.url == job.get_absolute_url()
    assert (
        job.kind == "deploy" and job.workspace == world.ws_a and job.requested_by == world.operator
    )
    assert job.params == {
        "workspace_id": world.ws_a.pk,
        "offering": LLAMA,
        "kind": "serverless",
        "name": "llama-chat",
        "terms_accepted": True,
    }
    event = AuditEvent.objects.get()
    assert (event.action, event.actor, event.correlation_id) == (
        "endpoint.deploy.requested",
        world.operator,
        job.correlation_id,
    )
    assert "terms accepted" in event.detail


def test_the_wizard_offers_only_workspaces_where_the_user_operates(world):
    page = client_for(world.operator).get(reverse("deploy_new")).content.decode()
    assert "ws-alpha" in page and "ws-beta" not in page
    page = client_for(world.viewer).get(reverse("deploy_new")).content.decode()
    assert "needs the operator role" in page
    # An operator cannot deploy into another team's workspace by posting its id.
    response = client_for(world.operator).post(
        reverse("deploy_create"), form(world, workspace=world.ws_b.pk, accept_terms="on")
    )
    assert response.status_code == 422 and not Job.objects.exists()


def test_delete_needs_the_exact_name(world):
    client = client_for(world.operator)
    url = reverse("endpoint_delete", args=[world.endpoint_a.pk])
    page = client.get(reverse("endpoint_delete_confirm", args=[world.endpoint_a.pk]))
    assert "Type <code>ep-alpha</code> to confirm" in page.content.decode()
    wrong = client.post(url, {"confirm": "ep-alph"})
    assert wrong.status_code == 422 and "exactly to confirm" in wrong.content.decode()
    assert not Job.objects.exists()
    right = client.post(url, {"confirm": "ep-alpha"})
    job = Job.objects.get()
    assert right.url == job.get_absolute_url() and job.kind == "delete"
    assert job.params == {
        "workspace_id": world.ws_a.pk,
        "name": "ep-alpha",
        "endpoint_id": world.endpoint_a.pk,
    }
    # Asking twice while the first is queued leads to the same job.
    assert client.post(url, {"confirm": "ep-alpha"}).url == job.get_absolute_url()
    assert Job.objects.count() == 1
