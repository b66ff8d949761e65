"""The console's own code against the Azure emulator, configured only through its settings and
the AZURE_* variables (opsportal/providers/azure_cloud.py): the inventory sync, the Azure
provider as the jobs build it, and one journey of jobs that each consume what the last stored
(deploy -> rotate -> cost -> delete), with keys published to the emulator's Key Vault."""

from datetime import timedelta

import pytest
from azure.ai.ml.entities import ManagedOnlineDeployment, ManagedOnlineEndpoint
from azure.identity import ClientSecretCredential
from django.utils import timezone

from opsportal.costs.models import CostDaily
from opsportal.costs.services import azure_costs_pull
from opsportal.dataplane.probe import endpoint_probe
from opsportal.emulator.world import PAID_SUBSCRIPTION, TRIAL_SUBSCRIPTION
from opsportal.inventory.models import (
    CloudAccount,
    ComputeQuota,
    Endpoint,
    MarketplaceSubscription,
    VmSize,
    Workspace,
)
from opsportal.jobs.models import Job
from opsportal.jobs.services import job_execute
from opsportal.keys.models import SecretVersion
from opsportal.keys.store import keyvault_secret_name, secret_value
from opsportal.providers import azure_cloud, for_workspace, keyvault
from opsportal.providers.azure import AzureProvider
from opsportal.sync.services import inventory_sync_azure
from tests.emulator_support import RunningEmulator, emulator_fresh, running_emulator

LLAMA_SLUG = "meta-llama-3-8b-instruct"


@pytest.fixture(scope="module")
def emulator():
    with running_emulator() as running:
        yield running


@pytest.fixture
def azure(emulator, monkeypatch, settings, catalog) -> RunningEmulator:
    settings.OPSPORTAL_JOB_POLL_SECONDS = 0
    settings.OPSPORTAL_JOB_BACKOFF_SECONDS = 0
    return emulator_fresh(emulator, monkeypatch, settings)


def real_credential(azure: RunningEmulator) -> ClientSecretCredential:
    env = azure.env
    return ClientSecretCredential(
        env["AZURE_TENANT_ID"],
        env["AZURE_CLIENT_ID"],
        env["AZURE_CLIENT_SECRET"],
        **azure_cloud.credential_kwargs(),
    )


def test_the_inventory_sync_fills_the_database_from_the_emulator(azure):
    cred = real_credential(azure)
    ws = Workspace(account=CloudAccount(subscription_id=PAID_SUBSCRIPTION))
    ws.resource_group, ws.name, ws.region = "rg-ml-eastus2", "ws-eastus2", "eastus2"
    provider = AzureProvider(ws, credential=cred, offering_slugs={})
    provider.subscription_create(offering_slug=LLAMA_SLUG)
    provider.endpoint_create(name="llama-chat", kind="serverless", offering_slug=LLAMA_SLUG)
    provider.ml.online_endpoints.begin_create_or_update(
        ManagedOnlineEndpoint(name="llama-managed", auth_mode="key")
    ).result()
    provider.ml.online_deployments.begin_create_or_update(
        ManagedOnlineDeployment(
            name="blue",
            endpoint_name="llama-managed",
            model="azureml://registries/azureml-meta/models/Meta-Llama-3-8B-Instruct",
            instance_type="Standard_NC24ads_A100_v4",
            instance_count=2,
        )
    ).result()

    report = inventory_sync_azure(credential=cred)

    assert (report.subscriptions, report.workspaces_ok, report.workspaces_failed) == (2, 4, [])
    accounts = dict(CloudAccount.objects.values_list("subscription_id", "display_name"))
    assert accounts == {
        PAID_SUBSCRIPTION: "Contoso ML Production",
        TRIAL_SUBSCRIPTION: "Contoso Free Trial",
    }
    assert set(Workspace.objects.values_list("name", "region")) == {
        ("ws-eastus2", "eastus2"),
        ("ws-westus3", "westus3"),
        ("ws-westeurope", "westeurope"),
        ("ws-trial-eastus2", "eastus2"),
    }
    chat = Endpoint.objects.get(name="llama-chat")
    assert (chat.kind, chat.offering.slug, chat.provisioning_state) == (
        "serverless",
        LLAMA_SLUG,
        "Succeeded",
    )
    assert chat.scoring_uri.startswith(f"{azure.base_url}/endpoints/serverless/eastus2/")
    managed = Endpoint.objects.get(name="llama-managed")
    assert [(d.name, d.instance_count, d.traffic_percent) for d in managed.deployments.all()] == [
        ("blue", 2, 0)
    ]
    assert MarketplaceSubscription.objects.get().offering.slug == LLAMA_SLUG
    paid = CloudAccount.objects.get(subscription_id=PAID_SUBSCRIPTION)
    gpu = ComputeQuota.objects.get(
        account=paid, region="eastus2", family="standardNCADSA100v4Family"
    )
    assert (gpu.used, gpu.limit) == (48, 48)
    assert (
        VmSize.objects.get(account=paid, region="eastus2", name="Standard_NC24ads_A100_v4").cores
        == 24
    )
    assert not VmSize.objects.filter(region="westeurope", name="Standard_NC24ads_A100_v4").exists()
    # Every request carried the sync's token; none went unanswered or unmodelled.
    statuses = {r["status"] for r in azure.control.requests()}
    assert statuses <= {200, 201, 202, 204, 401}, statuses


def test_an_azure_provider_built_as_the_jobs_build_it_creates_a_serverless_endpoint(azure):
    account = CloudAccount.objects.create(provider="azure", subscription_id=PAID_SUBSCRIPTION)
    workspace = Workspace.objects.create(
        account=account,
        name="ws-eastus2",
        resource_group="rg-ml-eastus2",
        region="eastus2",
        provider="azure",
    )
    provider = for_workspace(workspace, correlation_id="corr-7")  # no test-only arguments
    assert provider.subscription_status(offering_slug=LLAMA_SLUG) is None
    provider.subscription_create(offering_slug=LLAMA_SLUG)
    info = provider.endpoint_create(name="llama-chat", kind="serverless", offering_slug=LLAMA_SLUG)
    assert (info.provisioning_state, info.offering_slug) == ("Succeeded", LLAMA_SLUG)
    keys = provider.keys_get(name="llama-chat")
    answer = endpoint_probe(scoring_uri=info.scoring_uri, key=keys.primary)
    assert answer.status == 200 and answer.text
    rotated = provider.key_regenerate(name="llama-chat", slot="secondary")
    assert rotated.secondary != keys.secondary and rotated.primary == keys.primary
    recorded = azure.control.requests(path="/providers/Microsoft.MachineLearningServices/")
    # The job's correlation id on every request, each with a client request id of its own.
    assert {r["correlation_request_id"] for r in recorded} == {"corr-7"}
    assert len({r["client_request_id"] for r in recorded}) > len(recorded) // 2


def job(kind: str, workspace: Workspace, params: dict, endpoint: Endpoint | None = None) -> Job:
    return Job.objects.create(
        kind=kind,
        workspace=workspace,
        endpoint=endpoint,
        target_label=params.get("name", ""),
        params=params,
    )


def test_deploy_rotate_cost_and_delete_as_one_journey(azure):
    inventory_sync_azure(credential=azure_cloud.credential())
    workspace = Workspace.objects.get(name="ws-eastus2")

    deploy = job(
        "deploy",
        workspace,
        {
            "workspace_id": workspace.pk,
            "offering": LLAMA_SLUG,
            "kind": "serverless",
            "name": "llama-chat",
            "terms_accepted": True,
            "content_safety": True,
        },
    )
    assert job_execute(job_id=deploy.pk) == "succeeded", Job.objects.get(pk=deploy.pk).log
    endpoint = Endpoint.objects.get(name="llama-chat", deleted_at__isnull=True)
    published = list(SecretVersion.objects.filter(endpoint=endpoint).order_by("version"))
    assert [(v.slot, v.store) for v in published] == [
        ("secondary", "keyvault"),
        ("primary", "keyvault"),
    ]
    vault = keyvault.client()
    name = keyvault_secret_name(endpoint)
    assert vault.get_secret(name).value == secret_value(published[-1])

    rotate = job("key-rotation", workspace, {"endpoint_id": endpoint.pk}, endpoint)
    assert job_execute(job_id=rotate.pk) == "succeeded", Job.objects.get(pk=rotate.pk).log
    emulated = azure.control.state()["serverless_endpoints"][0]
    latest = {
        v.slot: secret_value(v)
        for v in SecretVersion.objects.filter(endpoint=endpoint).order_by("version")
    }
    assert latest == {"primary": emulated["primary_key"], "secondary": emulated["secondary_key"]}
    assert len(list(vault.list_properties_of_secret_versions(name))) == 4

    azure.control.advance(5 * 3600)  # the smoke test and the rotation's checks are billed
    account = workspace.account
    pull = azure_costs_pull(account=account, credential=azure_cloud.credential(), force=True)
    assert pull.error == ""
    saas = azure.control.state()["saas_resources"][0]["id"].lower()
    meters = dict(
        CostDaily.objects.filter(account=account, resource_id=saas).values_list("meter", "quantity")
    )
    assert set(meters) == {"paygo-inference-input-tokens", "paygo-inference-output-tokens"}
    assert meters["paygo-inference-output-tokens"] > 0
    assert pull.data_as_of >= timezone.localdate() - timedelta(days=1)

    delete = job(
        "delete",
        workspace,
        {"workspace_id": workspace.pk, "name": "llama-chat", "endpoint_id": endpoint.pk},
        endpoint,
    )
    assert job_execute(job_id=delete.pk) == "succeeded", Job.objects.get(pk=delete.pk).log
    assert azure.control.state()["serverless_endpoints"] == []
    assert not SecretVersion.objects.filter(endpoint=endpoint).exists()
    assert Endpoint.objects.get(pk=endpoint.pk).deleted_at is not None


def test_the_test_chat_relay_client_trusts_the_emulators_ca(azure):
    import asyncio

    from opsportal.chat import relay

    account = CloudAccount.objects.create(provider="azure", subscription_id=PAID_SUBSCRIPTION)
    workspace = Workspace.objects.create(
        account=account,
        name="ws-eastus2",
        resource_group="rg-ml-eastus2",
        region="eastus2",
        provider="azure",
    )
    provider = for_workspace(workspace)
    provider.subscription_create(offering_slug=LLAMA_SLUG)
    info = provider.endpoint_create(name="llama-chat", kind="serverless", offering_slug=LLAMA_SLUG)
    key = provider.keys_get(name="llama-chat").primary

    async def ask() -> dict:
        answer = await relay.client().post(
            f"{info.scoring_uri}/chat/completions",
            json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3},
            headers={"Authorization": f"Bearer {key}"},
        )
        return answer.json()

    assert asyncio.run(ask())["usage"]["completion_tokens"] == 3
