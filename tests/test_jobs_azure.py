"""The deploy, rotation and delete jobs on an Azure workspace: the same job code as on the local
runtime, through the Azure provider and the SDK's real HTTP pipeline, answered with Azure's
published examples (tests/azure_support.py lists the adaptations). The endpoint's own data plane
answers the smoke test and the key checks in the seed's chat completions shape."""

import copy
import json

import pytest
import responses

from opsportal.core.models import AuditEvent
from opsportal.inventory.models import CloudAccount, Endpoint, MarketplaceSubscription, Workspace
from opsportal.jobs.models import Job
from opsportal.jobs.services import job_execute
from opsportal.keys.models import SecretVersion
from opsportal.keys.store import secret_value
from opsportal.providers import azure_cloud
from tests.azure_support import (
    LOC,
    RG,
    SUB,
    WS,
    FakeCredential,
    W,
    body_of,
    calls_to,
    example,
    url,
    without_next_link,
)
from tests.factories import offering

pytestmark = pytest.mark.production_path
SCORING = "https://www.contoso.com/example"  # inferenceEndpoint.uri of the published examples
ANSWER = {
    "id": "cmpl-1",
    "object": "chat.completion",
    "model": "Meta-Llama-3-8B-Instruct",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Hello!"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6},
}


@pytest.fixture
def arm(monkeypatch, settings):
    settings.OPSPORTAL_JOB_POLL_SECONDS = 0
    settings.OPSPORTAL_JOB_BACKOFF_SECONDS = 0
    monkeypatch.setattr(azure_cloud, "credential", FakeCredential)
    # The SDK's own retries and LRO waits off: the job's retry is what is exercised.
    monkeypatch.setattr(azure_cloud, "CLIENT_DEFAULTS", {"retry_total": 0, "polling_interval": 0})
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rs:
        yield rs


@pytest.fixture
def workspace(catalog):
    account = CloudAccount.objects.create(
        provider="azure", subscription_id=SUB, display_name="Contoso"
    )
    return Workspace.objects.create(
        account=account, name=WS, resource_group=RG, region="eastus2", provider="azure"
    )


def succeeded(body: dict) -> dict:
    done = copy.deepcopy(body)
    done["properties"]["provisioningState"] = "Succeeded"
    return done


def endpoint_body(name: str) -> dict:
    body = example("serverless/Get.json")  # provisioningState Succeeded, as published
    body["name"] = name
    return body


def deploy_job(workspace) -> Job:
    return Job.objects.create(
        kind="deploy",
        workspace=workspace,
        target_label="llama-chat",
        params={
            "workspace_id": workspace.pk,
            "offering": "meta-llama-3-8b-instruct",
            "kind": "serverless",
            "name": "llama-chat",
            "terms_accepted": True,
            "content_safety": True,
        },
    )


def arm_calls(rs) -> list:
    return [c for c in rs.calls if c.request.url.startswith("https://management.azure.com")]


def test_the_deploy_job_subscribes_creates_waits_reads_keys_and_smoke_tests(arm, workspace):
    arm.add(
        responses.GET,
        url(f"{W}/marketplaceSubscriptions"),
        json=without_next_link(example("marketplace/List.json")),  # another model: not ours
    )
    arm.add(
        responses.PUT,
        url(f"{W}/marketplaceSubscriptions/meta-llama-3-8b-instruct"),
        json=succeeded(example("marketplace/CreateOrUpdate.json")),
    )
    workspace_body = example("workspaces/Workspace_Get.json")
    workspace_body["location"] = "eastus2"
    arm.add(responses.GET, url(W), json=workspace_body)
    # Not there yet, then there (after the create).
    arm.add(
        responses.GET,
        url(f"{W}/serverlessEndpoints/llama-chat"),
        status=404,
        json={"error": {"code": "ResourceNotFound", "message": "not found"}},
    )
    arm.add(
        responses.GET, url(f"{W}/serverlessEndpoints/llama-chat"), json=endpoint_body("llama-chat")
    )
    # ARM throttles the create once; the job waits as asked and tries again.
    arm.add(
        responses.PUT,
        url(f"{W}/serverlessEndpoints/llama-chat"),
        status=429,
        headers={"Retry-After": "0"},
        json={"error": {"code": "TooManyRequests", "message": "slow down"}},
    )
    status_url = f"{LOC}/mfeOperationsStatus/op-1"
    arm.add(
        responses.PUT,
        url(f"{W}/serverlessEndpoints/llama-chat"),
        status=201,
        json=example("serverless/CreateOrUpdate.json", "201"),
        headers={"Azure-AsyncOperation": status_url, "Retry-After": "0"},
    )
    arm.add(responses.GET, url(status_url), json={"status": "Succeeded"})
    arm.add(
        responses.POST,
        url(f"{W}/serverlessEndpoints/llama-chat/listKeys"),
        json=example("serverless/ListKeys.json"),
    )
    arm.add(responses.POST, f"{SCORING}/v1/chat/completions", json=ANSWER)

    job = deploy_job(workspace)
    assert job_execute(job_id=job.pk) == "succeeded", Job.objects.get(pk=job.pk).log
    job.refresh_from_db()
    log = " ".join(job.log)
    assert "Trying again" in log and "Subscribing" in log and "answered" in log

    puts = calls_to(arm, "PUT", "serverlessEndpoints/llama-chat")
    assert len(puts) == 2  # the throttled one and the retry
    assert body_of(puts[-1])["properties"]["modelSettings"]["modelId"] == (
        offering("meta-llama-3-8b-instruct").registry_model_id
    )
    # Every ARM request carried the job's correlation id, and client request ids of their own
    # (a request the SDK sends again keeps its id); every call that changed something is in
    # the job's log with ARM's request id.
    calls = arm_calls(arm)
    ids = {c.request.headers.get("x-ms-correlation-request-id") for c in calls}
    assert ids == {str(job.correlation_id)}
    client_ids = [c.request.headers.get("x-ms-client-request-id") for c in calls]
    assert None not in client_ids and str(job.correlation_id) not in client_ids
    assert len(set(client_ids)) > len(calls) // 2
    assert any(line.endswith("x-ms-request-id -") and "Azure PUT" in line for line in job.log)
    # The smoke test used the key Azure returned, and nothing else saw it.
    probe = calls_to(arm, "POST", "/v1/chat/completions")[0]
    assert (
        probe.request.headers["Authorization"]
        == "Bearer " + example("serverless/ListKeys.json")["primaryKey"]
    )
    assert json.loads(probe.request.body)["max_tokens"] == 8

    endpoint = Endpoint.objects.get(workspace=workspace, name="llama-chat")
    assert (endpoint.provisioning_state, endpoint.scoring_uri) == ("Succeeded", SCORING)
    assert job.endpoint == endpoint
    assert MarketplaceSubscription.objects.filter(workspace=workspace).count() == 1
    assert SecretVersion.objects.filter(endpoint=endpoint).count() == 2
    actions = set(AuditEvent.objects.filter(job=job).values_list("action", flat=True))
    assert {"marketplace.subscribe", "endpoint.create", "key.publish", "endpoint.deploy"} <= actions


def test_a_failed_marketplace_subscription_stops_the_deploy_before_any_endpoint(arm, workspace):
    arm.add(
        responses.GET,
        url(f"{W}/marketplaceSubscriptions"),
        json=without_next_link(example("marketplace/List.json")),
    )
    arm.add(  # as published: provisioningState Failed
        responses.PUT,
        url(f"{W}/marketplaceSubscriptions/meta-llama-3-8b-instruct"),
        json=example("marketplace/CreateOrUpdate.json"),
    )
    job = deploy_job(workspace)
    assert job_execute(job_id=job.pk) == "failed"
    job.refresh_from_db()
    assert "The Marketplace subscription ended Failed" in job.error
    assert "payment method" in job.error
    assert not calls_to(arm, "PUT", "serverlessEndpoints")
    assert not Endpoint.objects.filter(name="llama-chat").exists()


def test_a_refused_subscription_names_the_permission(arm, workspace):
    arm.add(
        responses.GET,
        url(f"{W}/marketplaceSubscriptions"),
        json=without_next_link(example("marketplace/List.json")),
    )
    arm.add(
        responses.PUT,
        url(f"{W}/marketplaceSubscriptions/meta-llama-3-8b-instruct"),
        status=403,
        json={"error": {"code": "AuthorizationFailed", "message": "no"}},
    )
    job = deploy_job(workspace)
    assert job_execute(job_id=job.pk) == "failed"
    job.refresh_from_db()
    assert "Microsoft.SaaS/register/action" in job.error
    assert len(calls_to(arm, "PUT", "marketplaceSubscriptions")) == 1  # a 403 is not retried


def test_the_rotation_job_regenerates_verifies_and_publishes_secondary_then_primary(arm, workspace):
    endpoint = Endpoint.objects.create(
        workspace=workspace,
        kind="serverless",
        name="llama-chat",
        offering=offering("meta-llama-3-8b-instruct"),
        scoring_uri=SCORING,
        provisioning_state="Succeeded",
    )
    arm.add(
        responses.POST,
        url(f"{W}/serverlessEndpoints/llama-chat/regenerateKeys"),
        json=example("serverless/RegenerateKeys.json"),
    )
    # The published example answers "string" for both keys; distinct values here (adapted) show
    # which key each step used.
    arm.add(
        responses.POST,
        url(f"{W}/serverlessEndpoints/llama-chat/listKeys"),
        json={"primaryKey": "old-primary", "secondaryKey": "new-secondary"},
    )
    arm.add(
        responses.POST,
        url(f"{W}/serverlessEndpoints/llama-chat/listKeys"),
        json={"primaryKey": "new-primary", "secondaryKey": "new-secondary"},
    )
    arm.add(responses.POST, f"{SCORING}/v1/chat/completions", json=ANSWER)
    job = Job.objects.create(
        kind="key-rotation",
        workspace=workspace,
        endpoint=endpoint,
        target_label="llama-chat",
        params={"endpoint_id": endpoint.pk},
    )
    assert job_execute(job_id=job.pk) == "succeeded", Job.objects.get(pk=job.pk).log
    regens = calls_to(arm, "POST", "regenerateKeys")
    assert [body_of(c) for c in regens] == [{"keyType": "Secondary"}, {"keyType": "Primary"}]
    probes = calls_to(arm, "POST", "/v1/chat/completions")
    assert [c.request.headers["Authorization"] for c in probes] == [
        "Bearer new-secondary",
        "Bearer new-primary",
    ]
    versions = list(SecretVersion.objects.filter(endpoint=endpoint).order_by("version"))
    assert [(v.slot, secret_value(v)) for v in versions] == [
        ("secondary", "new-secondary"),
        ("primary", "new-primary"),
    ]
    job.refresh_from_db()
    assert "new-primary" not in str(job.log) and "new-secondary" not in str(job.log)


def test_a_key_that_does_not_work_stops_the_rotation_before_the_primary(arm, workspace):
    endpoint = Endpoint.objects.create(
        workspace=workspace,
        kind="serverless",
        name="llama-chat",
        offering=offering("meta-llama-3-8b-instruct"),
        scoring_uri=SCORING,
        provisioning_state="Succeeded",
    )
    arm.add(
        responses.POST,
        url(f"{W}/serverlessEndpoints/llama-chat/regenerateKeys"),
        json=example("serverless/RegenerateKeys.json"),
    )
    arm.add(
        responses.POST,
        url(f"{W}/serverlessEndpoints/llama-chat/listKeys"),
        json=example("serverless/ListKeys.json"),
    )
    arm.add(
        responses.POST,
        f"{SCORING}/v1/chat/completions",
        status=401,
        json={"error": {"code": "Unauthorized", "message": "bad key"}},
    )
    job = Job.objects.create(
        kind="key-rotation",
        workspace=workspace,
        endpoint=endpoint,
        target_label="llama-chat",
        params={"endpoint_id": endpoint.pk},
    )
    assert job_execute(job_id=job.pk) == "failed"
    job.refresh_from_db()
    assert "refused the key (401)" in job.error
    # The primary key was never touched and nothing unverified was published.
    assert [body_of(c) for c in calls_to(arm, "POST", "regenerateKeys")] == [
        {"keyType": "Secondary"}
    ]
    assert not SecretVersion.objects.filter(endpoint=endpoint).exists()


def test_the_delete_job_waits_for_the_operation_then_forgets_the_row(arm, workspace):
    endpoint = Endpoint.objects.create(
        workspace=workspace,
        kind="serverless",
        name="llama-chat",
        offering=offering("meta-llama-3-8b-instruct"),
        scoring_uri=SCORING,
        provisioning_state="Succeeded",
    )
    poll = f"{LOC}/mfeOperationResults/op-2"
    arm.add(
        responses.DELETE,
        url(f"{W}/serverlessEndpoints/llama-chat"),
        status=202,
        headers={"Location": poll, "Retry-After": "0"},
    )
    arm.add(responses.GET, url(poll), status=204)
    arm.add(
        responses.GET,
        url(f"{W}/serverlessEndpoints/llama-chat"),
        status=404,
        json={"error": {"code": "ResourceNotFound", "message": "gone"}},
    )
    job = Job.objects.create(
        kind="delete",
        workspace=workspace,
        endpoint=endpoint,
        target_label="llama-chat",
        params={"workspace_id": workspace.pk, "name": "llama-chat", "endpoint_id": endpoint.pk},
    )
    assert job_execute(job_id=job.pk) == "succeeded", Job.objects.get(pk=job.pk).log
    endpoint.refresh_from_db()
    assert endpoint.deleted_at is not None
    assert len(calls_to(arm, "DELETE", "serverlessEndpoints/llama-chat")) == 1


def test_the_deploy_job_on_managed_compute_checks_quota_then_creates_and_routes_traffic(
    arm, workspace
):
    from tests.azure_support import ARM as ARM_HOST

    workspace_body = example("workspaces/Workspace_Get.json")
    workspace_body["location"] = "eastus2"
    arm.add(responses.GET, url(W), json=workspace_body)
    arm.add(
        responses.GET, url(f"{LOC}/vmSizes"), json=example("quota/VirtualMachineSizes_List.json")
    )
    arm.add(
        responses.GET,
        url(f"{LOC}/usages"),
        json=without_next_link(example("quota/Usages_List.json")),
    )
    endpoint = example("online/OnlineEndpoint_CreateOrUpdate.json", "200")
    endpoint["name"] = "mixtral"
    endpoint["location"] = "eastus2"
    endpoint["properties"]["traffic"] = {}
    endpoint["properties"]["scoringUri"] = "https://mixtral.eastus2.inference.ml.azure.com/score"
    endpoint["properties"]["authMode"] = "Key"  # adapted: the console creates key-auth endpoints
    arm.add(  # not there yet
        responses.GET,
        url(f"{W}/onlineEndpoints/mixtral"),
        status=404,
        json={"error": {"code": "ResourceNotFound", "message": "not found"}},
    )
    done = copy.deepcopy(endpoint)
    done["properties"]["provisioningState"] = "Succeeded"

    def put_endpoint(request):  # type: ignore[no-untyped-def]
        # The resource as Azure keeps it: the traffic of the latest PUT.
        done["properties"]["traffic"] = json.loads(request.body)["properties"].get("traffic", {})
        return 200, {}, json.dumps(endpoint)

    arm.add_callback(
        responses.GET, url(f"{W}/onlineEndpoints/mixtral"), lambda r: (200, {}, json.dumps(done))
    )
    arm.add_callback(responses.PUT, url(f"{W}/onlineEndpoints/mixtral"), put_endpoint)
    deployment = example("online/OnlineDeployment_CreateOrUpdate.json", "200")
    deployment["id"] = f"{W.removeprefix(ARM_HOST)}/onlineEndpoints/mixtral/deployments/blue"
    deployment["name"] = "blue"
    ready = copy.deepcopy(deployment)
    ready["properties"]["provisioningState"] = "Succeeded"
    # The endpoint lists no deployment until blue is created (the SDK also lists them when it
    # reads the endpoint, so the answer follows the PUT rather than a call count).
    created: list[bool] = []

    def put_deployment(request):  # type: ignore[no-untyped-def]
        created.append(True)
        return 200, {}, json.dumps(deployment)

    def list_deployments(request):  # type: ignore[no-untyped-def]
        return 200, {}, json.dumps({"value": [ready] if created else []})

    arm.add_callback(
        responses.PUT, url(f"{W}/onlineEndpoints/mixtral/deployments/blue"), put_deployment
    )
    arm.add(responses.GET, url(f"{W}/onlineEndpoints/mixtral/deployments/blue"), json=ready)
    arm.add_callback(
        responses.GET, url(f"{W}/onlineEndpoints/mixtral/deployments"), list_deployments
    )
    arm.add(
        responses.GET,
        url("https://eastus.api.azureml.ms/registrymanagement/v1.0/registries/azureml/discovery"),
        status=404,
    )
    arm.add(
        responses.POST,
        url(f"{W}/onlineEndpoints/mixtral/listKeys"),
        json=example("online/OnlineEndpoint_ListKeys.json"),
    )
    # A managed online endpoint answers in the model's scoring contract, not chat completions.
    arm.add(
        responses.POST,
        "https://mixtral.eastus2.inference.ml.azure.com/score",
        json={"output": "Hello!"},
    )
    size = example("quota/VirtualMachineSizes_List.json")["value"][0]
    job = Job.objects.create(
        kind="deploy",
        workspace=workspace,
        target_label="mixtral",
        params={
            "workspace_id": workspace.pk,
            "offering": "mixtral-8x7b-instruct-v01",
            "kind": "managed",
            "name": "mixtral",
            "terms_accepted": False,
            "content_safety": False,
            "endpoint_mode": "new",
            "deployment_name": "blue",
            "vm_sku": size["name"],
            "instance_count": 1,
            "traffic_percent": 100,
            "shared_quota": False,
        },
    )
    assert job_execute(job_id=job.pk) == "succeeded", Job.objects.get(pk=job.pk).log
    job.refresh_from_db()
    log = " ".join(job.log)
    assert "within quota" in log and "Deployment blue is provisioned" in log
    assert not calls_to(arm, "PUT", "marketplaceSubscriptions")  # managed: no Marketplace
    put_dep = calls_to(arm, "PUT", "deployments/blue")[0]
    assert body_of(put_dep)["properties"]["instanceType"] == size["name"]
    traffic = calls_to(arm, "PUT", "onlineEndpoints/mixtral?")[-1]
    assert body_of(traffic)["properties"]["traffic"] == {"blue": 100}
    row = Endpoint.objects.get(workspace=workspace, name="mixtral")
    (dep,) = row.deployments.filter(deleted_at__isnull=True)
    assert (row.kind, row.provisioning_state, dep.name, dep.traffic_percent) == (
        "managed",
        "Succeeded",
        "blue",
        100,
    )
    (score,) = calls_to(arm, "POST", "/score")  # the smoke test reached the scoring URI
    sent = body_of(score)["input_data"]  # in the model's contract
    assert sent["input_string"][-1]["role"] == "user" and sent["parameters"]["max_new_tokens"]
