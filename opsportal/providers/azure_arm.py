"""What the Azure sync reads above one workspace (subscriptions, workspaces, resource groups and
their SaaS billing resources), the HTTP policies every Azure client here carries, and the
vocabulary that turns the SDK's values into the console's (states, statuses, model ids)."""

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from azure.core.pipeline.policies import SansIOHTTPPolicy
from azure.core.rest import HttpRequest
from azure.mgmt.resource.resources import ResourceManagementClient
from azure.mgmt.resource.subscriptions import SubscriptionClient

from opsportal.inventory.models import Offering, ProvisioningState
from opsportal.providers import azure_cloud
from opsportal.providers.azure_errors import translate
from opsportal.providers.base import CallNote, MarketplaceStatus, ProviderError


def vm_family_key(name: str) -> str:
    """A quota's family in the VM sizes' spelling: "Standard NC Family Cluster Dedicated vCPUs"
    and size family "standardNCFamily" are the same cores."""
    base = re.sub(r"\s+Cluster\s+Dedicated\s+vCPUs$|\s+Dedicated\s+vCPUs$", "", name.strip())
    compact = base.replace(" ", "")
    return compact[:1].lower() + compact[1:]


def state_of(value: Any) -> str:
    """Serverless states arrive as snake_case text, online ones as enums: one vocabulary."""
    text = str(getattr(value, "value", value) or "").replace("_", "").lower()
    for state in ProvisioningState:
        if state.value.lower() == text:
            return state.value
    return ProvisioningState.UNKNOWN.value


# --- subscription and workspace discovery ------------------------------------------------------


@dataclass(frozen=True)
class SubscriptionInfo:
    subscription_id: str
    display_name: str
    tenant_id: str
    state: str
    quota_id: str = ""  # subscriptionPolicies.quotaId: the offer type (pay-as-you-go, trial...)


@dataclass(frozen=True)
class WorkspaceInfo:
    name: str
    resource_group: str
    region: str
    resource_id: str
    tags: dict[str, str] = field(default_factory=dict)


def marketplace_status(value: Any) -> str:
    """The SDK's snake_case status (subscribed, pending_fulfillment_start...) in Azure's words."""
    text = str(getattr(value, "value", value) or "").replace("_", "").lower()
    for status in MarketplaceStatus:
        if text.startswith(status.value.lower()):
            return status.value
    return MarketplaceStatus.PENDING.value


def subscriptions_list(credential: Any, **client_kwargs: Any) -> list[SubscriptionInfo]:
    client_kwargs = {**azure_cloud.CLIENT_DEFAULTS, **client_kwargs}
    try:
        client = SubscriptionClient(
            credential, **{**azure_cloud.mgmt_client_kwargs(), **client_kwargs}
        )
        return [
            SubscriptionInfo(
                s.subscription_id,
                s.display_name or s.subscription_id,
                s.tenant_id or "",
                str(getattr(s.state, "value", s.state) or ""),
                quota_id=getattr(s.subscription_policies, "quota_id", None) or "",
            )
            for s in client.subscriptions.list()
        ]
    except Exception as exc:
        raise translate(exc, what="listing subscriptions") from exc


def ml_client(
    credential: Any,
    subscription_id: str,
    resource_group: str | None = None,
    workspace: str | None = None,
    **client_kwargs: Any,
) -> Any:
    # Late: azure-ai-ml takes about 1.7 s to import, paid only by processes that talk to Azure.
    from azure.ai.ml import MLClient

    client_kwargs = {**azure_cloud.ml_client_kwargs(), **client_kwargs}
    client_kwargs.setdefault("enable_telemetry", False)
    return MLClient(credential, subscription_id, resource_group, workspace, **client_kwargs)


def workspaces_list(
    credential: Any, subscription_id: str, **client_kwargs: Any
) -> list[WorkspaceInfo]:
    client_kwargs = {**azure_cloud.CLIENT_DEFAULTS, **client_kwargs}
    try:
        ml = ml_client(credential, subscription_id, **client_kwargs)
        return [
            WorkspaceInfo(
                w.name,
                w.resource_group,
                (w.location or "").lower(),
                w.id or "",
                tags=dict(w.tags or {}),
            )
            for w in ml.workspaces.list(scope="subscription")
        ]
    except Exception as exc:
        raise translate(exc, what=f"workspaces of {subscription_id}") from exc


@dataclass(frozen=True)
class SaasResourceInfo:
    """A Microsoft.SaaS/resources billing resource: what Cost Management bills Marketplace model
    usage on. Its plan is how it is matched with the Marketplace subscription that made it."""

    resource_id: str
    name: str
    publisher: str
    offer: str
    plan: str
    status: str


@dataclass(frozen=True)
class ResourceGroupInfo:
    name: str
    tags: dict[str, str]
    saas: list[SaasResourceInfo]


# The SaaS resource provider's own list (it returns each resource's publisher, offer and plan);
# no Python SDK wraps it. specification/saas/.../stable/2026-04-01 (SaasListByResourceGroup).
SAAS_API_VERSION = "2026-04-01"


def resource_group_read(
    credential: Any, subscription_id: str, resource_group: str, **client_kwargs: Any
) -> ResourceGroupInfo:
    """A resource group's tags and the SaaS billing resources in it."""
    client_kwargs = {**azure_cloud.CLIENT_DEFAULTS, **client_kwargs}
    try:
        client = ResourceManagementClient(
            credential, subscription_id, **{**azure_cloud.mgmt_client_kwargs(), **client_kwargs}
        )
        tags = dict(client.resource_groups.get(resource_group).tags or {})
        path = (
            f"/subscriptions/{subscription_id}/resourceGroups/{resource_group}"
            f"/providers/Microsoft.SaaS/resources?api-version={SAAS_API_VERSION}"
        )
        saas: list[SaasResourceInfo] = []
        url: str | None = path
        while url:
            response = client.send_request(HttpRequest("GET", url))
            response.raise_for_status()
            page = response.json()
            for item in page.get("value") or []:
                props = item.get("properties") or {}
                saas.append(
                    SaasResourceInfo(
                        resource_id=item.get("id", ""),
                        name=item.get("name", ""),
                        publisher=props.get("publisherName") or "",
                        offer=props.get("offerName") or "",
                        plan=props.get("planName") or "",
                        status=props.get("status") or "",
                    )
                )
            url = page.get("nextLink")
        return ResourceGroupInfo(resource_group, tags, saas)
    except ProviderError:
        raise
    except Exception as exc:
        raise translate(exc, what=f"resource group {resource_group}") from exc


def offering_slugs_by_model() -> dict[str, str]:
    return {
        unversioned(model_id): slug
        for slug, model_id in Offering.objects.exclude(registry_model_id="").values_list(
            "slug", "registry_model_id"
        )
    }


class CorrelationPolicy(SansIOHTTPPolicy):
    """Ties every request to a job: a fresh x-ms-client-request-id per request (the SDK's
    clients here send none), the job's correlation id as ARM's x-ms-correlation-request-id, and
    a line per request that changes something, with ARM's x-ms-request-id, for the job's log, so
    a support case can name the operation."""

    def __init__(self, correlation_id: str | None, note: CallNote | None) -> None:
        self.correlation_id, self.note = correlation_id, note

    def on_request(self, request: Any) -> None:
        headers = request.http_request.headers
        if not headers.get("x-ms-client-request-id"):
            headers["x-ms-client-request-id"] = str(uuid.uuid4())
        if self.correlation_id:
            headers["x-ms-correlation-request-id"] = self.correlation_id

    def on_response(self, request: Any, response: Any) -> None:
        http = request.http_request
        if self.note is None or http.method in ("GET", "HEAD"):
            return
        path = urlsplit(http.url).path
        headers = response.http_response.headers
        self.note(
            f"Azure {http.method} {path}: {response.http_response.status_code}, "
            f"x-ms-request-id {headers.get('x-ms-request-id', '-')}"
        )


class BucketPolicy(SansIOHTTPPolicy):
    """Calls `take` before each HTTP request the SDK sends, retries included (the sync's
    per-subscription token bucket, which keeps it within ARM's read limits)."""

    def __init__(self, take: Callable[[], None]) -> None:
        self.take = take

    def on_request(self, request: Any) -> None:
        self.take()


def client_policies(
    correlation_id: str | None = None, note: CallNote | None = None
) -> dict[str, Any]:
    """Keyword arguments that put the correlation policy into an Azure SDK client."""
    return {"per_call_policies": [CorrelationPolicy(correlation_id, note)]}


def unversioned(model_id: str) -> str:
    """A registry model id without its version, lower case: how the catalog names models."""
    return re.sub(r"/versions/[^/]+$", "", (model_id or "").strip()).lower()
