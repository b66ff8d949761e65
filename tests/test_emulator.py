"""The Azure emulator through the real SDK clients (azure-ai-ml, azure-mgmt-*, Key Vault) and a
real azure-identity credential, over TLS with the emulator's own CA."""

import base64
import json
from datetime import UTC, datetime

import jwt
import pytest
import requests
from azure.ai.ml._restclient.arm_ml_service.models import RegenerateEndpointKeysRequest
from azure.ai.ml.entities import (
    ManagedOnlineDeployment,
    ManagedOnlineEndpoint,
    MarketplaceSubscription,
    ServerlessEndpoint,
)
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    IncompleteReadError,
    ResourceNotFoundError,
    ServiceResponseError,
)
from azure.core.pipeline.policies import HeadersPolicy
from azure.core.rest import HttpRequest
from azure.identity import ClientSecretCredential
from azure.keyvault.secrets import SecretClient
from azure.mgmt.costmanagement import CostManagementClient
from azure.mgmt.resource.subscriptions import SubscriptionClient

from opsportal.emulator.world import PAID_SUBSCRIPTION, TRIAL_SUBSCRIPTION
from opsportal.providers import azure_cloud
from opsportal.providers.azure_arm import ml_client, subscriptions_list
from opsportal.providers.azure_costs import cost_query, cost_query_body
from opsportal.providers.azure_errors import translate
from opsportal.providers.base import ErrorCode
from tests.emulator_support import RunningEmulator, emulator_fresh, running_emulator

LLAMA = "azureml://registries/azureml-meta/models/Meta-Llama-3-8B-Instruct"
MISTRAL = "azureml://registries/azureml-mistral/models/Mistral-large"
GPU = "Standard_NC24ads_A100_v4"


@pytest.fixture(scope="module")
def emulator():
    with running_emulator() as running:
        yield running


@pytest.fixture
def azure(emulator, monkeypatch, settings) -> RunningEmulator:
    return emulator_fresh(emulator, monkeypatch, settings)


def credential(azure: RunningEmulator, secret: str | None = None) -> ClientSecretCredential:
    env = azure.env
    return ClientSecretCredential(
        env["AZURE_TENANT_ID"],
        env["AZURE_CLIENT_ID"],
        secret or env["AZURE_CLIENT_SECRET"],
        authority=env["AZURE_AUTHORITY_HOST"],
        disable_instance_discovery=True,
        connection_verify=azure.ca,
        timeout=30,
    )


def ml(azure: RunningEmulator, ws: str = "ws-eastus2", rg: str = "rg-ml-eastus2", **kw):
    sub = kw.pop("sub", PAID_SUBSCRIPTION)
    return ml_client(credential(azure), sub, rg, ws, retry_total=0, **kw)


def subscribe(client, model_id: str = LLAMA, name: str = "llama") -> MarketplaceSubscription:
    return client.marketplace_subscriptions.begin_create_or_update(
        MarketplaceSubscription(name=name, model_id=model_id)
    ).result()


def serverless(client, name: str, model_id: str = LLAMA) -> ServerlessEndpoint:
    return client.serverless_endpoints.begin_create_or_update(
        ServerlessEndpoint(name=name, model_id=model_id)
    ).result()


def chat(azure: RunningEmulator, uri: str, key: str, route: str = "/v1/chat/completions", **body):
    body = body or {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 6}
    return requests.post(
        uri + route,
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        verify=azure.ca,
        timeout=120,
    )


def arm_get(azure: RunningEmulator, path: str, api_version: str):
    """A raw ARM read through an SDK client's own pipeline (token, TLS, retries)."""
    client = SubscriptionClient(credential(azure), **azure_cloud.mgmt_client_kwargs())
    url = f"{azure_cloud.resource_manager_url()}{path}?api-version={api_version}"
    return client._client.send_request(HttpRequest("GET", url))


# --- identity -----------------------------------------------------------------------------------


def test_a_registered_client_gets_a_signed_token_through_openid_discovery(azure):
    token = credential(azure).get_token(f"{azure.base_url}/.default")
    tenant = azure.env["AZURE_TENANT_ID"]
    discovery = requests.get(
        f"{azure.base_url}/{tenant}/v2.0/.well-known/openid-configuration",
        verify=azure.ca,
        timeout=30,
    ).json()
    keys = requests.get(discovery["jwks_uri"], verify=azure.ca, timeout=30).json()["keys"]
    public = jwt.algorithms.RSAAlgorithm.from_jwk(json.dumps(keys[0]))
    claims = jwt.decode(
        token.token,
        public,
        algorithms=["RS256"],
        audience=azure.base_url,
        issuer=discovery["issuer"],
    )
    assert (claims["tid"], claims["appid"]) == (tenant, azure.env["AZURE_CLIENT_ID"])
    assert discovery["token_endpoint"] == f"{azure.base_url}/{tenant}/oauth2/v2.0/token"
    calls = [r["operation"] for r in azure.control.requests()]
    assert calls[:2] == ["Entra.OpenIdConfiguration", "Entra.Token"]


def test_the_console_credential_signs_in_from_the_azure_variables(azure):
    # DefaultAzureCredential -> EnvironmentCredential (AZURE_TENANT_ID, _CLIENT_ID, _SECRET).
    token = azure_cloud.credential().get_token(azure_cloud.arm_scope())
    assert jwt.decode(token.token, options={"verify_signature": False})["aud"] == azure.base_url


def test_a_wrong_secret_is_refused_with_entras_error(azure):
    with pytest.raises(ClientAuthenticationError, match="AADSTS7000215"):
        credential(azure, secret="not-the-secret").get_token(f"{azure.base_url}/.default")


def test_arm_refuses_a_missing_a_forged_and_an_expired_token(azure):
    url = f"{azure.base_url}/subscriptions?api-version=2022-12-01"
    missing = requests.get(url, verify=azure.ca, timeout=30)
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "AuthenticationFailed"
    assert missing.headers["WWW-Authenticate"].startswith("Bearer authorization_uri=")
    forged = jwt.encode(
        {"aud": azure.base_url}, "not-the-emulator-signing-key-at-all", algorithm="HS256"
    )
    expired = azure.control.token(audience="arm", lifetime=-60)
    codes = [
        requests.get(
            url, headers={"Authorization": f"Bearer {t}"}, verify=azure.ca, timeout=30
        ).json()["error"]["code"]
        for t in (forged, expired)
    ]
    assert codes == ["InvalidAuthenticationToken", "ExpiredAuthenticationToken"]
    vault_token = azure.control.token(audience="keyvault")
    wrong_audience = requests.get(
        url, headers={"Authorization": f"Bearer {vault_token}"}, verify=azure.ca, timeout=30
    )
    assert wrong_audience.json()["error"]["code"] == "InvalidAuthenticationTokenAudience"


# --- subscriptions and workspaces ---------------------------------------------------------------


def test_it_lists_subscriptions_with_their_offer_and_workspaces_in_several_regions(azure):
    cred = credential(azure)
    client = SubscriptionClient(cred, **azure_cloud.mgmt_client_kwargs())
    policies = {
        s.subscription_id: s.subscription_policies.quota_id for s in client.subscriptions.list()
    }
    assert policies == {
        PAID_SUBSCRIPTION: "PayAsYouGo_2014-09-01",
        TRIAL_SUBSCRIPTION: "FreeTrial_2014-09-01",
    }
    assert {s.state for s in subscriptions_list(cred)} == {"Enabled"}
    workspaces = {
        w.name: (w.location, w.tags)
        for w in ml_client(cred, PAID_SUBSCRIPTION).workspaces.list(scope="subscription")
    }
    assert workspaces == {
        "ws-eastus2": ("eastus2", {"opsportal-team": "alpha"}),
        "ws-westus3": ("westus3", {"opsportal-team": "beta"}),
        "ws-westeurope": ("westeurope", {}),
    }
    group = arm_get(
        azure, f"/subscriptions/{PAID_SUBSCRIPTION}/resourceGroups/rg-ml-eastus2", "2022-09-01"
    )
    assert group.json()["tags"] == {"cost-center": "4711"}


# --- Marketplace --------------------------------------------------------------------------------


def test_subscribing_creates_the_saas_billing_resource_and_its_status_can_change(azure):
    client = ml(azure)
    sub = subscribe(client)
    assert (sub.status, sub.provisioning_state) == ("subscribed", "succeeded")
    assert sub.marketplace_plan.publisher_id == "metagenai"
    rg = f"/subscriptions/{PAID_SUBSCRIPTION}/resourceGroups/rg-ml-eastus2"
    listed = arm_get(azure, f"{rg}/providers/Microsoft.SaaS/resources", "2026-04-01").json()[
        "value"
    ]
    assert len(listed) == 1
    saas = listed[0]
    assert saas["type"] == "Microsoft.SaaS/resources"
    assert saas["name"].startswith("Meta-Llama-3-8B-Instruct-offer-")
    assert saas["properties"]["status"] == "Subscribed"
    assert arm_get(azure, saas["id"], "2026-04-01").json()["name"] == saas["name"]
    azure.control.marketplace(
        subscription=PAID_SUBSCRIPTION,
        resource_group="rg-ml-eastus2",
        workspace="ws-eastus2",
        name="llama",
        status="Suspended",
    )
    assert client.marketplace_subscriptions.get("llama").status == "suspended"
    assert arm_get(azure, saas["id"], "2026-04-01").json()["properties"]["status"] == "Suspended"
    with pytest.raises(HttpResponseError) as second:
        subscribe(client, name="llama-again")
    assert second.value.status_code == 409
    client.marketplace_subscriptions.begin_delete("llama").result()
    assert list(client.marketplace_subscriptions.list()) == []
    left = arm_get(azure, saas["id"], "2026-04-01").json()
    assert left["properties"]["status"] == "Unsubscribed", "the billing resource stays"


# --- serverless endpoints -----------------------------------------------------------------------


def test_a_serverless_endpoint_from_create_to_chat_to_regenerate_to_delete(azure):
    client = ml(azure)
    subscribe(client)
    poller = client.serverless_endpoints.begin_create_or_update(
        ServerlessEndpoint(name="llama-chat", model_id=LLAMA)
    )
    created = poller.result()
    assert created.provisioning_state == "succeeded"
    put = azure.control.requests(method="PUT", path="serverlessEndpoints/llama-chat$")[0]
    assert put["status"] == 201 and put["api_version"] == "2024-01-01-preview"
    assert azure.control.requests(operation="Operations.Status"), "the SDK polled the operation"
    endpoint = client.serverless_endpoints.get("llama-chat")
    assert endpoint.model_id == LLAMA
    keys = client.serverless_endpoints.get_keys("llama-chat")
    assert keys.primary_key != keys.secondary_key

    for key in (keys.primary_key, keys.secondary_key):
        answer = chat(azure, endpoint.scoring_uri, key)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["content"]
        assert (
            body["usage"]["completion_tokens"]
            == 6
            == body["usage"]["total_tokens"] - body["usage"]["prompt_tokens"]
        )
    assert chat(azure, endpoint.scoring_uri, "wrong-key").status_code == 401
    completion = chat(
        azure,
        endpoint.scoring_uri,
        keys.primary_key,
        "/completions",
        prompt="Once upon",
        max_tokens=3,
    )
    assert completion.json()["object"] == "text_completion"

    # azure-ai-ml's own regenerate raises TypeError (NOTES.md §7.1): the generated client,
    # as the console does.
    client._service_client_01_2024_preview_arm.serverless_endpoints.begin_regenerate_keys(
        resource_group_name="rg-ml-eastus2",
        workspace_name="ws-eastus2",
        name="llama-chat",
        body=RegenerateEndpointKeysRequest(key_type="Primary"),
    ).result()
    fresh = client.serverless_endpoints.get_keys("llama-chat")
    assert fresh.primary_key != keys.primary_key and fresh.secondary_key == keys.secondary_key
    assert chat(azure, endpoint.scoring_uri, keys.primary_key).status_code == 401
    assert chat(azure, endpoint.scoring_uri, fresh.primary_key).status_code == 200
    swagger = requests.get(
        f"{endpoint.scoring_uri}/swagger.json",
        headers={"Authorization": f"Bearer {fresh.primary_key}"},
        verify=azure.ca,
        timeout=30,
    )
    assert set(swagger.json()["paths"]) == {
        "/v1/chat/completions",
        "/chat/completions",
        "/v1/completions",
        "/completions",
    }

    client.serverless_endpoints.begin_delete("llama-chat").result()
    with pytest.raises(ResourceNotFoundError):
        client.serverless_endpoints.get("llama-chat")
    assert chat(azure, endpoint.scoring_uri, fresh.primary_key).status_code == 404


def test_a_streamed_answer_and_the_content_filter_markers(azure):
    client = ml(azure)
    subscribe(client)
    endpoint = serverless(client, "llama-stream")
    key = client.serverless_endpoints.get_keys("llama-stream").primary_key
    streamed = chat(
        azure,
        endpoint.scoring_uri,
        key,
        messages=[{"role": "user", "content": "Count."}],
        max_tokens=4,
        stream=True,
    )
    events = [line for line in streamed.text.split("\n\n") if line]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert chunks[-1]["usage"]["completion_tokens"] == 4
    reasons = [
        chat(
            azure,
            endpoint.scoring_uri,
            key,
            messages=[{"role": "user", "content": f"Tell me something {marker}"}],
            max_tokens=8,
        ).json()["choices"][0]["finish_reason"]
        for marker in ("[[content_filter]]", "[[content_filter_error]]")
    ]
    assert reasons == ["content_filter", "content_filter_error"]


def test_serverless_refusals_use_the_rules_azure_applies(azure):
    eastus2, westus3, westeurope = (
        ml(azure),
        ml(azure, "ws-westus3", "rg-ml-westus3"),
        ml(azure, "ws-westeurope", "rg-ml-westeurope"),
    )

    def refusal(client, name, model_id=LLAMA):
        with pytest.raises(HttpResponseError) as caught:
            serverless(client, name, model_id)
        return caught.value.status_code, caught.value.error.code

    assert refusal(eastus2, "llama-nosub") == (400, "MarketplaceSubscriptionRequired")
    subscribe(westus3)
    assert refusal(westus3, "llama-west") == (400, "ServerlessModelNotAvailableInRegion")
    subscribe(westeurope, MISTRAL, "mistral")
    assert refusal(westeurope, "mistral-eu", MISTRAL) == (
        400,
        "ServerlessModelNotAvailableInRegion",
    )
    subscribe(eastus2)
    serverless(eastus2, "llama-one")
    assert refusal(eastus2, "llama-two") == (409, "Conflict")

    trial = ml(azure, "ws-trial-eastus2", "rg-trial", sub=TRIAL_SUBSCRIPTION)
    subscribe(trial, MISTRAL, "mistral")
    serverless(trial, "shared-name", MISTRAL)
    subscribe(eastus2, MISTRAL, "mistral")
    assert refusal(eastus2, "shared-name", MISTRAL) == (409, "EndpointNameNotAvailable")
    # The console names the region rule in plain words.
    with pytest.raises(HttpResponseError) as caught:
        serverless(westus3, "llama-west")
    assert translate(caught.value).service_code == "ServerlessModelNotAvailableInRegion"
    assert translate(caught.value).code == ErrorCode.NOT_IN_REGION


def test_a_long_operation_runs_on_the_emulator_clock(azure):
    client = ml(azure)
    subscribe(client)
    azure.control.clock(speed=0)  # frozen: nothing finishes until the clock moves
    client.serverless_endpoints.begin_create_or_update(
        ServerlessEndpoint(name="slow", model_id=LLAMA)
    )
    assert client.serverless_endpoints.get("slow").provisioning_state == "creating"
    azure.control.advance(29)
    assert client.serverless_endpoints.get("slow").provisioning_state == "creating"
    azure.control.advance(2)
    assert client.serverless_endpoints.get("slow").provisioning_state == "succeeded"


# --- managed online endpoints -------------------------------------------------------------------


def family_usage(client, family: str = "Standard NCADSA100v4 Family Cluster Dedicated vCPUs"):
    for usage in client.compute.list_usage(location="eastus2"):
        if usage.__dict__["name"]["value"] == family:
            return usage.__dict__["currentValue"], usage.__dict__["limit"]
    raise AssertionError(f"no usage for {family}")


def deploy(client, name: str, size: str, count: int, endpoint: str = "llama-managed"):
    return client.online_deployments.begin_create_or_update(
        ManagedOnlineDeployment(
            name=name, endpoint_name=endpoint, model=LLAMA, instance_type=size, instance_count=count
        )
    ).result()


def test_an_online_endpoint_with_gpu_quota_traffic_and_scoring(azure):
    client = ml(azure)
    endpoint = client.online_endpoints.begin_create_or_update(
        ManagedOnlineEndpoint(name="llama-managed", auth_mode="key")
    ).result()
    assert family_usage(client) == (0, 48)
    blue = deploy(client, "blue", GPU, 2)
    assert (blue.instance_count, blue.instance_type) == (2, GPU)
    assert family_usage(client) == (48, 48)

    with pytest.raises(HttpResponseError) as refused:
        deploy(client, "blue", GPU, 3)
    assert refused.value.error.code == "OutOfQuota"
    assert "Current usage/limit: 48/48. Additional needed: 24" in refused.value.error.message
    assert translate(refused.value).code == "QuotaExceeded"
    still = client.online_deployments.get("blue", "llama-managed")
    assert (still.instance_count, family_usage(client)) == (2, (48, 48))

    deploy(client, "green", "Standard_DS3_v2", 1)
    current = client.online_endpoints.get("llama-managed")
    current.traffic = {"blue": 70, "green": 20}
    with pytest.raises(HttpResponseError) as bad_split:
        client.online_endpoints.begin_create_or_update(current).result()
    assert bad_split.value.status_code == 400
    current.traffic = {"blue": 80, "green": 20}
    client.online_endpoints.begin_create_or_update(current).result()
    assert client.online_endpoints.get("llama-managed").traffic == {"blue": 80, "green": 20}

    key = client.online_endpoints.get_keys("llama-managed").primary_key
    score = {
        "input_data": {
            "input_string": [{"role": "user", "content": "Hi"}],
            "parameters": {"max_new_tokens": 4},
        }
    }

    def ask(**headers):
        return requests.post(
            endpoint.scoring_uri,
            json=score,
            headers={"Authorization": f"Bearer {key}", **headers},
            verify=azure.ca,
            timeout=120,
        )

    routed = ask(**{"azureml-model-deployment": "green"})
    assert routed.status_code == 200 and routed.json()["output"]
    assert routed.headers["azureml-model-deployment"] == "green"
    assert ask().headers["azureml-model-deployment"] in {"blue", "green"}
    assert (
        requests.post(endpoint.scoring_uri, json=score, verify=azure.ca, timeout=30).status_code
        == 401
    )

    client.online_endpoints.begin_regenerate_keys("llama-managed", key_type="primary").result()
    assert ask().status_code == 401

    deploy(client, "blue", GPU, 1)  # scale in: the instance count and the cores it holds
    assert (
        client.online_deployments.get("blue", "llama-managed").instance_count,
        family_usage(client),
    ) == (1, (24, 48))
    current = client.online_endpoints.get("llama-managed")
    with pytest.raises(HttpResponseError) as routed_away:
        client.online_deployments.begin_delete(name="green", endpoint_name="llama-managed").result()
    assert routed_away.value.status_code == 400, "a deployment taking traffic is not deleted"
    current.traffic = {"blue": 100, "green": 0}
    client.online_endpoints.begin_create_or_update(current).result()
    client.online_deployments.begin_delete(name="green", endpoint_name="llama-managed").result()
    assert [d.name for d in client.online_deployments.list("llama-managed")] == ["blue"]
    quotas = arm_get(
        azure,
        f"/subscriptions/{PAID_SUBSCRIPTION}/providers/Microsoft.MachineLearningServices/locations/eastus2/quotas",
        "2025-12-01",
    ).json()["value"]
    assert {q["name"]["value"]: q["limit"] for q in quotas}[
        "Standard NCADSA100v4 Family Cluster Dedicated vCPUs"
    ] == 48
    client.online_endpoints.begin_delete(name="llama-managed").result()
    assert family_usage(client) == (0, 48)


# --- Cost Management ----------------------------------------------------------------------------


def today_body(**dataset):
    day = datetime.now(UTC).date().isoformat()
    return {
        "type": "ActualCost",
        "timeframe": "Custom",
        "timePeriod": {"from": f"{day}T00:00:00Z", "to": f"{day}T23:59:59Z"},
        "dataset": {
            "granularity": "Daily",
            "aggregation": {
                "totalCost": {"name": "Cost", "function": "Sum"},
                "totalQuantity": {"name": "UsageQuantity", "function": "Sum"},
            },
            "grouping": [
                {"type": "Dimension", "name": "ResourceId"},
                {"type": "Dimension", "name": "Meter"},
            ],
            **dataset,
        },
    }


def test_cost_rows_appear_after_the_lag_with_qpu_headers_then_the_tenant_is_throttled(azure):
    client = ml(azure)
    subscribe(client)
    endpoint = serverless(client, "llama-billed")
    key = client.serverless_endpoints.get_keys("llama-billed").primary_key
    usage = chat(azure, endpoint.scoring_uri, key).json()["usage"]
    client.online_endpoints.begin_create_or_update(
        ManagedOnlineEndpoint(name="llama-managed", auth_mode="key")
    ).result()
    deploy(client, "blue", GPU, 2)
    cm = CostManagementClient(credential(azure), retry_total=0, **azure_cloud.mgmt_client_kwargs())
    scope = f"/subscriptions/{PAID_SUBSCRIPTION}"

    def query():
        return cm.query.usage(
            scope=scope, parameters=today_body(), cls=lambda r, d, h: (d, r.http_response.headers)
        )

    early, headers = query()
    assert early.properties.rows == []
    assert headers["x-ms-ratelimit-microsoft.costmanagement-qpu-consumed"] == "1"
    azure.control.advance(5 * 3600)  # past the 4 h data lag
    result, headers = query()
    columns = [c.name for c in result.properties.columns]
    assert columns == ["Cost", "UsageQuantity", "ResourceId", "Meter", "UsageDate", "Currency"]
    rows = {(r[2], r[3]): r for r in result.properties.rows}
    saas = azure.control.state()["saas_resources"][0]["id"].lower()
    tokens_in = rows[(saas, "paygo-inference-input-tokens")]
    assert tokens_in[1] == pytest.approx(usage["prompt_tokens"] / 1000)
    assert rows[(saas, "paygo-inference-output-tokens")][1] == pytest.approx(
        usage["completion_tokens"] / 1000
    )
    workspace = (
        f"{scope}/resourcegroups/rg-ml-eastus2"
        "/providers/microsoft.machinelearningservices/workspaces/ws-eastus2"
    )
    vm = rows[(workspace, "NC24ads A100 v4")]
    assert vm[1] > 1.5 and vm[0] == pytest.approx(vm[1] * 3.673)  # 2 instances, over an hour each
    assert tokens_in[4] == int(datetime.now(UTC).strftime("%Y%m%d"))
    assert headers["x-ms-ratelimit-microsoft.costmanagement-qpu-remaining"].startswith(
        "QueriesPer10Sec:"
    )

    azure.control.config(cost={"qpu": {"10": 3, "60": 60, "3600": 600}})
    query(), query(), query()
    with pytest.raises(HttpResponseError) as throttled:
        query()
    assert throttled.value.status_code == 429
    assert (
        int(
            throttled.value.response.headers[
                "x-ms-ratelimit-microsoft.costmanagement-qpu-retry-after"
            ]
        )
        >= 1
    )

    # The console's filter (Marketplace publisher or its resource types) keeps the SaaS rows.
    azure.control.config(cost={"qpu": {"10": 12, "60": 60, "3600": 600}})
    today = datetime.now(UTC).date()
    filtered = cm.query.usage(scope=scope, parameters=cost_query_body(today, today))
    assert {row[2] for row in filtered.properties.rows} == {saas}
    found, waited = cost_query(credential(azure), PAID_SUBSCRIPTION, today.replace(day=1), today)
    assert {r.meter for r in found} >= {
        "paygo-inference-input-tokens",
        "paygo-inference-output-tokens",
    }
    assert waited == 0


# --- Key Vault ----------------------------------------------------------------------------------


def test_key_vault_secrets_with_versions_behind_the_401_challenge(azure):
    vault = SecretClient(
        azure.env["OPSPORTAL_KEYVAULT_URL"], credential(azure), connection_verify=azure.ca
    )
    first = vault.set_secret(
        "endpoint-key", "one", content_type="text/plain", tags={"slot": "primary"}
    )
    second = vault.set_secret("endpoint-key", "two")
    assert vault.get_secret("endpoint-key").value == "two"
    assert vault.get_secret("endpoint-key", first.properties.version).value == "one"
    versions = {p.version for p in vault.list_properties_of_secret_versions("endpoint-key")}
    assert versions == {first.properties.version, second.properties.version}
    challenge = azure.control.requests(operation="KeyVault.SetSecret")[0]
    assert challenge["status"] == 401, "the first call elicits the challenge, unauthenticated"
    vault.begin_delete_secret("endpoint-key").result()
    with pytest.raises(ResourceNotFoundError):
        vault.get_secret("endpoint-key")


# --- faults, throttling, unmodelled calls -------------------------------------------------------


def test_a_regenerate_whose_answer_is_lost_has_still_changed_the_key(azure):
    client = ml(azure)
    subscribe(client)
    endpoint = serverless(client, "llama-keys")
    before = client.serverless_endpoints.get_keys("llama-keys")
    regenerate = (
        client._service_client_01_2024_preview_arm.serverless_endpoints.begin_regenerate_keys
    )
    azure.control.fault(
        method="POST", path="regenerateKeys$", when="after", action="status", status=500
    )
    with pytest.raises(HttpResponseError) as lost:
        regenerate(
            resource_group_name="rg-ml-eastus2",
            workspace_name="ws-eastus2",
            name="llama-keys",
            body=RegenerateEndpointKeysRequest(key_type="Secondary"),
        ).result()
    assert lost.value.status_code == 500
    after = client.serverless_endpoints.get_keys("llama-keys")
    assert after.secondary_key != before.secondary_key, (
        "the state changed though the answer was lost"
    )
    assert chat(azure, endpoint.scoring_uri, before.secondary_key).status_code == 401

    keys = [after.secondary_key]
    for action, error in (("reset", ServiceResponseError), ("drop", IncompleteReadError)):
        azure.control.fault(method="POST", path="regenerateKeys$", when="after", action=action)
        with pytest.raises(error):
            regenerate(
                resource_group_name="rg-ml-eastus2",
                workspace_name="ws-eastus2",
                name="llama-keys",
                body=RegenerateEndpointKeysRequest(key_type="Secondary"),
            ).result()
        keys.append(client.serverless_endpoints.get_keys("llama-keys").secondary_key)
    assert len(set(keys)) == 3, "each lost answer still regenerated the key"


def test_a_fault_before_the_handler_changes_nothing(azure):
    client = ml(azure)
    azure.control.fault(
        method="PUT", path="marketplaceSubscriptions", status=503, retry_after=1, count=1
    )
    with pytest.raises(HttpResponseError) as failed:
        subscribe(client)
    assert failed.value.status_code == 503
    assert list(client.marketplace_subscriptions.list()) == []
    assert subscribe(client).status == "subscribed"  # the fault fired once


def test_a_throttled_call_is_retried_by_the_sdk_after_the_retry_after_it_was_given(azure):
    patient = ml_client(credential(azure), PAID_SUBSCRIPTION, "rg-ml-eastus2", "ws-eastus2")
    azure.control.fault(
        method="GET", path="workspaces/ws-eastus2$", status=429, retry_after=1, count=1
    )
    assert patient.workspaces.get("ws-eastus2").name == "ws-eastus2"
    gets = azure.control.requests(operation="Workspaces.Get")
    assert [g["status"] for g in gets] == [429, 200]
    assert gets[1]["real_time"] - gets[0]["real_time"] >= 1


def test_a_fault_with_a_probability_fires_on_some_calls_only(azure):
    azure.control.fault(method="GET", path="/subscriptions$", status=503, probability=0.5)
    client = SubscriptionClient(
        credential(azure), retry_total=0, **azure_cloud.mgmt_client_kwargs()
    )
    outcomes = []
    for _ in range(20):
        try:
            list(client.subscriptions.list())
            outcomes.append("ok")
        except HttpResponseError as exc:
            outcomes.append(exc.status_code)
    assert set(outcomes) == {"ok", 503}


def test_arm_throttles_reads_per_subscription_with_retry_after(azure):
    azure.control.config(arm_throttle={"reads": [3, 0.2]})
    client = ml(azure)
    for _ in range(3):
        client.workspaces.get("ws-eastus2")
    with pytest.raises(HttpResponseError) as throttled:
        client.workspaces.get("ws-eastus2")
    assert throttled.value.status_code == 429
    assert throttled.value.error.code == "SubscriptionRequestsThrottled"
    assert int(throttled.value.response.headers["Retry-After"]) >= 1
    assert translate(throttled.value).retry_after >= 1
    reads = [
        r for r in azure.control.requests(method="GET") if "workspaces/ws-eastus2" in r["path"]
    ]
    assert [r["status"] for r in reads] == [200, 200, 200, 429]


def test_an_unmodelled_call_answers_501_naming_it(azure):
    with pytest.raises(HttpResponseError) as unmodelled:
        list(ml(azure).compute.list())
    assert unmodelled.value.status_code == 501
    assert "does not model GET /subscriptions/" in unmodelled.value.message
    assert "/computes" in unmodelled.value.message


def test_every_call_is_recorded_with_its_client_and_correlation_ids(azure):
    client = ml(azure)
    tagged = ml_client(
        credential(azure),
        PAID_SUBSCRIPTION,
        "rg-ml-eastus2",
        "ws-eastus2",
        per_call_policies=[HeadersPolicy({"x-ms-client-request-id": "job-42"})],
    )
    tagged.workspaces.get("ws-eastus2")
    client.workspaces.get("ws-eastus2")
    gets = azure.control.requests(operation="Workspaces.Get")
    assert gets[0]["client_request_id"] == "job-42"
    assert gets[1]["client_request_id"] not in (None, "job-42")
    assert all(g["request_id"] and g["correlation_request_id"] for g in gets)
    assert gets[0]["headers"]["authorization"] == "***"
    answer = arm_get(azure, f"/subscriptions/{PAID_SUBSCRIPTION}", "2022-12-01")
    assert answer.headers["x-ms-request-id"] and answer.headers["x-ms-correlation-request-id"]
    assert int(answer.headers["x-ms-ratelimit-remaining-subscription-reads"]) > 0


def test_a_client_secret_sent_as_http_basic_is_accepted(azure):
    tenant, client_id, secret = (
        azure.env[k] for k in ("AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET")
    )
    basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    answer = requests.post(
        f"{azure.base_url}/{tenant}/oauth2/v2.0/token",
        data={"grant_type": "client_credentials", "scope": f"{azure.base_url}/.default"},
        headers={"Authorization": f"Basic {basic}"},
        verify=azure.ca,
        timeout=30,
    )
    assert answer.status_code == 200 and answer.json()["token_type"] == "Bearer"


def test_the_management_command_serves_tls_and_prints_the_console_environment(tmp_path):
    import subprocess
    import sys

    from opsportal.emulator.server import free_port

    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "azure_emulator",
            "--port",
            str(port),
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        printed = []
        for line in process.stdout:
            printed.append(line)
            if line.startswith("Control API"):
                break
        env = dict(
            line.removeprefix("export ").strip().split("=", 1)
            for line in printed
            if line.startswith("export ")
        )
        assert env["AZURE_RESOURCE_MANAGER_URL"] == f"https://127.0.0.1:{port}"
        assert env["OPSPORTAL_KEYVAULT_URL"] == f"https://127.0.0.1:{port + 1}/"
        assert (tmp_path / "console.env").read_text().splitlines()[0].startswith("AZURE_TENANT_ID=")
        health = requests.get(
            f"https://127.0.0.1:{port}/_emulator/health",
            verify=env["OPSPORTAL_CA_BUNDLE"],
            timeout=30,
        )
        assert health.json()["ok"] is True
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(f"https://127.0.0.1:{port}/_emulator/health", verify=True, timeout=30)
    finally:
        process.terminate()
        rest, _ = process.communicate(timeout=30)
    assert "Shutting down" in rest
