"""Inventory sync over a canned ARM (Azure's published examples through the SDK pipeline)."""

import copy
import json
import re

import pytest
import responses
from django.urls import reverse

from opsportal.inventory.models import (
    CloudAccount,
    ComputeQuota,
    Endpoint,
    MarketplaceSubscription,
    VmSize,
    Workspace,
)
from opsportal.jobs.models import Job
from opsportal.providers import azure_cloud
from opsportal.sync.services import TokenBucket, inventory_sync_azure
from tests.azure_support import ARM, SUB, FakeCredential, example, url, without_next_link

WS_PATH = f"{ARM}/subscriptions/{SUB}/providers/Microsoft.MachineLearningServices/workspaces"
LLAMA = "azureml://registries/azureml-meta/models/Meta-Llama-3-8B-Instruct"


PLAN = {"publisherId": "metagenai", "offerId": "meta-llama-3-8b-instruct-offer", "planId": "paygo"}
SAAS_ID = (
    f"/subscriptions/{SUB}/resourceGroups/rg1/providers/Microsoft.SaaS/resources/"
    "meta-llama-3-8b-instruct-offer-1b2c"
)


def saas_page(*plans: dict) -> dict:
    """The SaaS provider's list by resource group (specification/saas, 2026-04-01 example),
    one resource per plan."""
    item = example_spec_saas()
    page = []
    for i, plan in enumerate(plans or (PLAN,)):
        one = copy.deepcopy(item)
        one["id"] = SAAS_ID if i == 0 else f"{SAAS_ID}-{i}"
        one["name"] = one["id"].rsplit("/", 1)[1]
        one["properties"].update(
            publisherName=plan["publisherId"], offerName=plan["offerId"], planName=plan["planId"]
        )
        page.append(one)
    return {"value": page, "nextLink": None}


def example_spec_saas() -> dict:
    # As published in SaasListByResourceGroup.json (2026-04-01): the fields the sync reads.
    return {
        "id": "",
        "name": "",
        "type": "Microsoft.SaaS/resources",
        "location": "global",
        "tags": {},
        "properties": {
            "subscriptionId": "e24b5b6b-2dfc-41ea-c457-46d0c42494af",
            "status": "Subscribed",
            "publisherName": "",
            "planName": "",
            "offerName": "",
            "storeFront": "AzurePortal",
        },
    }


def ws_path(rg: str, name: str) -> str:
    return (
        f"{ARM}/subscriptions/{SUB}/resourceGroups/{rg}/providers/"
        f"Microsoft.MachineLearningServices/workspaces/{name}"
    )


def canned_arm(rs, *, endpoints=("llama-chat",), broken=False, rg_tags=None) -> None:
    rs.add(
        responses.GET,
        url(f"{ARM}/subscriptions"),
        json={
            "value": [
                {
                    "id": f"/subscriptions/{SUB}",
                    "subscriptionId": SUB,
                    "displayName": "Contoso",
                    "tenantId": "t1",
                    "state": "Enabled",
                }
            ]
        },
    )
    page = without_next_link(example("workspaces/Workspace_ListBySubscription.json"))
    template = page["value"][0]
    page["value"] = []
    for name in ("ws-good", "ws-broken"):
        w = copy.deepcopy(template)
        w["name"], w["location"] = name, "eastus2"
        w["id"] = ws_path("rg1", name).removeprefix(ARM)
        page["value"].append(w)
    rs.add(responses.GET, url(WS_PATH), json=page)

    good = ws_path("rg1", "ws-good")
    subs = without_next_link(example("marketplace/List.json"))
    subs["value"][0].update({"name": "llama-sub"})
    subs["value"][0]["properties"].update(
        {"modelId": LLAMA, "marketplaceSubscriptionStatus": "Subscribed", "marketplacePlan": PLAN}
    )
    rg = f"{ARM}/subscriptions/{SUB}/resourceGroups/rg1"
    # The resources SDK spells the segment "resourcegroups".
    rs.add(
        responses.GET,
        re.compile(re.escape(rg) + r"(\?.*)?$", re.IGNORECASE),
        json={"id": rg.removeprefix(ARM), "name": "rg1", "location": "eastus2", "tags": rg_tags},
    )
    rs.add(responses.GET, url(f"{rg}/providers/Microsoft.SaaS/resources"), json=saas_page())
    rs.add(responses.GET, url(f"{good}/marketplaceSubscriptions"), json=subs)
    serverless = without_next_link(example("serverless/List.json"))
    item = serverless["value"][0]
    serverless["value"] = []
    for name, model in zip(endpoints, (LLAMA, LLAMA.replace("8B-Instruct", "8B")), strict=False):
        e = copy.deepcopy(item)
        e["name"] = name
        e["properties"]["modelSettings"]["modelId"] = model  # one endpoint per model
        e["properties"]["provisioningState"] = "Succeeded"
        serverless["value"].append(e)
    rs.add(responses.GET, url(f"{good}/serverlessEndpoints"), json=serverless)
    rs.add(responses.GET, url(f"{good}/onlineEndpoints"), json={"value": []})
    loc = f"{ARM}/subscriptions/{SUB}/providers/Microsoft.MachineLearningServices/locations/eastus2"
    rs.add(
        responses.GET,
        url(f"{loc}/usages"),
        json=without_next_link(example("quota/Usages_List.json")),
    )
    rs.add(
        responses.GET, url(f"{loc}/vmSizes"), json=example("quota/VirtualMachineSizes_List.json")
    )
    status = 500 if broken else 200
    bad = ws_path("rg1", "ws-broken")
    for path in ("marketplaceSubscriptions", "serverlessEndpoints", "onlineEndpoints"):
        rs.add(
            responses.GET,
            url(f"{bad}/{path}"),
            status=status if status != 200 else 403,
            json={"error": {"code": "Boom", "message": "workspace is down"}},
        )


def sync(**kw):
    return inventory_sync_azure(
        credential=FakeCredential(), client_kwargs={"retry_total": 0, **kw.pop("client", {})}, **kw
    )


@pytest.mark.production_path
def test_it_pulls_everything_and_records_a_failing_workspace(catalog):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rs:
        canned_arm(rs, broken=True)
        report = sync()
        rs_calls = list(rs.calls)
    account = CloudAccount.objects.get(subscription_id=SUB)
    assert (account.display_name, account.tenant_id, account.status) == ("Contoso", "t1", "ok")
    assert set(Workspace.objects.values_list("name", flat=True)) == {"ws-good", "ws-broken"}
    endpoint = Endpoint.objects.get(name="llama-chat")
    assert (endpoint.kind, endpoint.offering.slug, endpoint.provisioning_state) == (
        "serverless",
        "meta-llama-3-8b-instruct",
        "Succeeded",
    )
    sub = MarketplaceSubscription.objects.get()
    assert (sub.name, sub.state, sub.offering.slug) == (
        "llama-sub",
        "Succeeded",
        "meta-llama-3-8b-instruct",
    )
    assert report.workspaces_ok == 1
    ((name, error),) = report.workspaces_failed
    assert name == "ws-broken" and "Azure failed (500)" in error
    assert "Azure failed (500)" in Workspace.objects.get(name="ws-broken").sync_error
    assert Workspace.objects.get(name="ws-good").last_sync_at is not None
    # VM sizes and core quota of the region, read once for both workspaces, for the pre-flight.
    size = example("quota/VirtualMachineSizes_List.json")["value"][0]
    stored = VmSize.objects.get(account=account, region="eastus2", name=size["name"])
    assert (stored.cores, stored.family) == (size["vCPUs"], size["family"])
    quota = ComputeQuota.objects.get(account=account, region="eastus2", family="standardNCFamily")
    assert (quota.used, quota.limit) == (12, 24)  # the subscription's NC family, as published
    assert ComputeQuota.objects.filter(account=account).count() == 10
    assert sum("/usages" in c.request.url for c in rs_calls) == 1


@pytest.mark.production_path
def test_it_is_idempotent_and_marks_vanished_resources_deleted(catalog):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rs:
        canned_arm(rs, endpoints=("llama-chat", "llama-two"))
        sync()
        sync()
    assert Endpoint.objects.filter(deleted_at__isnull=True).count() == 2
    assert MarketplaceSubscription.objects.count() == 1
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rs:
        canned_arm(rs, endpoints=("llama-chat",))
        report = sync()
    gone = Endpoint.objects.get(name="llama-two")
    assert gone.deleted_at is not None  # kept for history
    assert report.marked_deleted >= 1
    assert Endpoint.objects.filter(deleted_at__isnull=True).count() == 1


def test_it_sends_the_correlation_id_and_a_fresh_client_request_id_per_request(catalog):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rs:
        canned_arm(rs)
        sync(correlation_id="job-1234")
        calls = [c for c in rs.calls if "/workspaces/" in c.request.url]
    assert {c.request.headers.get("x-ms-correlation-request-id") for c in calls} == {"job-1234"}
    client_ids = [c.request.headers.get("x-ms-client-request-id") for c in calls]
    assert len(calls) > 3 and len(set(client_ids)) == len(calls) and None not in client_ids


def test_it_keeps_to_the_bucket_rate():
    bucket = TokenBucket(capacity=5, refill_per_s=50)
    import time

    started = time.monotonic()
    for _ in range(15):
        bucket.take()
    elapsed = time.monotonic() - started
    # 5 at once, then 10 more at 50/s: at least 0.2 s.
    assert elapsed >= 0.18
    assert bucket.taken == 15 and bucket.waited_s > 0


def test_it_says_azure_is_not_configured_and_runs_on(db, monkeypatch, settings):
    from opsportal.jobs.services import job_execute

    for name in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "IDENTITY_ENDPOINT", "MSI_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", "/nonexistent")
    job = Job.objects.create(kind="azure-sync", target_label="all")
    job_execute(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == "failed"
    assert job.error.startswith("Azure is not configured")


def test_it_shows_the_sync_on_the_subscriptions_page(
    world, monkeypatch, django_capture_on_commit_callbacks
):
    from tests.conftest import client_for
    from tests.factories import UserFactory

    root = UserFactory(username="root@example.com", is_superuser=True, is_staff=True)
    page = client_for(root).get(reverse("accounts")).content.decode()
    assert "Azure is not configured" in page or "Azure: " in page
    with django_capture_on_commit_callbacks() as callbacks:
        response = client_for(root).post(reverse("azure_sync_start"))
    assert response.status_code == 302
    job = Job.objects.get(kind="azure-sync")
    assert response["Location"] == job.get_absolute_url()
    assert len(callbacks) == 1  # enqueued once the job row is committed
    assert client_for(world.admin).post(reverse("azure_sync_start")).status_code == 403


def test_it_shows_per_workspace_results_on_the_job_page(catalog, monkeypatch):
    from opsportal.jobs.services import job_execute
    from tests.conftest import client_for
    from tests.factories import UserFactory

    monkeypatch.setenv("AZURE_TENANT_ID", "t1")
    monkeypatch.setenv("AZURE_CLIENT_ID", "console")
    monkeypatch.setattr(azure_cloud, "credential", FakeCredential)
    monkeypatch.setattr(azure_cloud, "CLIENT_DEFAULTS", {"retry_total": 0})
    job = Job.objects.create(kind="azure-sync", target_label="all Azure subscriptions")
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rs:
        canned_arm(rs, broken=True)
        job_execute(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == "failed" and job.error.startswith("Some workspaces failed: ws-broken")
    root = UserFactory(username="root@example.com", is_superuser=True, is_staff=True)
    page = client_for(root).get(job.get_absolute_url()).content.decode()
    assert "ws-good: 1 endpoints, 1 Marketplace subscriptions" in page
    assert "ws-broken: FAILED: Azure failed (500)" in page
    assert str(job.correlation_id) in page
    assert 'hx-trigger="every 2s"' not in page  # finished: the page stops polling


def test_a_workspace_takes_the_team_its_azure_tag_names_unless_assigned_by_hand(world):
    from tests.conftest import client_for
    from tests.factories import UserFactory

    def sync_tagged(tag: str) -> Workspace:
        with responses.RequestsMock(assert_all_requests_are_fired=False) as rs:
            canned_arm(rs)
            page = rs.registered()[1]  # the workspaces list
            body = json.loads(page.body)
            body["value"][0]["tags"] = {"OpsPortal-Team": tag}
            page.body = json.dumps(body)
            report = sync()
        return Workspace.objects.get(name="ws-good"), report

    workspace, _ = sync_tagged("alpha")
    assert (workspace.team, workspace.team_source) == (world.team_a, "tag")
    workspace, report = sync_tagged("no-such-team")
    assert workspace.team is None
    assert any("names no team of the console" in line for line in report.lines)
    # A superuser's assignment sticks through later syncs; "follow the tag" hands it back.
    root = UserFactory(username="root@example.com", is_superuser=True, is_staff=True)
    client = client_for(root)
    url = reverse("workspace_team", args=[workspace.pk])
    assert client.post(url, {"team": world.team_b.pk}).status_code == 302
    workspace, _ = sync_tagged("alpha")
    assert (workspace.team, workspace.team_source) == (world.team_b, "manual")
    client.post(url, {"team": ""})
    workspace, _ = sync_tagged("alpha")
    assert (workspace.team, workspace.team_source) == (world.team_a, "tag")
    page = client_for(world.viewer).get(reverse("workspace_detail", args=[workspace.pk]))
    assert page.status_code == 200 and 'data-testid="team-form"' not in page.content.decode()
    assert client_for(world.admin).post(url, {"team": ""}).status_code == 403


def test_it_links_each_marketplace_subscription_to_its_saas_billing_resource(catalog):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rs:
        canned_arm(rs)
        report = sync()
    sub = MarketplaceSubscription.objects.get()
    # The ARM id of the subscription resource, and the SaaS resource Cost Management bills.
    assert (
        sub.azure_resource_id.endswith("/marketplaceSubscriptions/string") or sub.azure_resource_id
    )
    assert sub.saas_resource_id == SAAS_ID
    assert (sub.publisher_id, sub.offer_id, sub.plan_id) == ("metagenai", PLAN["offerId"], "paygo")
    assert not [line for line in report.lines if "Resource group" in line]


def test_a_workspace_without_a_tag_of_its_own_takes_its_resource_groups(world):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rs:
        canned_arm(rs, rg_tags={"opsportal-team": "Beta"})
        sync()
    assert {
        w.name: (w.team, w.team_source)
        for w in Workspace.objects.filter(name__in=["ws-good", "ws-broken"])
    } == {"ws-good": (world.team_b, "tag"), "ws-broken": (world.team_b, "tag")}
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rs:
        canned_arm(rs, rg_tags={})
        sync()
    # The tag is gone: so is the team it gave.
    assert not Workspace.objects.filter(name="ws-good", team__isnull=False).exists()
