"""Azure Machine Learning as a provider, through azure-ai-ml (MLClient), azure-identity and
azure-mgmt-resource-subscriptions. See ../shared/azure-fixtures/NOTES.md for the calls each
method makes; tests/test_azure_contract.py proves them against Azure's published examples.

Three SDK defects of azure-ai-ml 1.35.x are worked around, each in one marked place:
  WORKAROUND(serverless-regenerate)  begin_regenerate_keys raises TypeError;
  WORKAROUND(half-empty-usage)       compute.list_usage entities lose their values;
  WORKAROUND(half-empty-vmsize)      compute.list_sizes entities lose their values.
"""

import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    IncompleteReadError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline.policies import SansIOHTTPPolicy

from opsportal.inventory.models import Endpoint, Offering, Provider, ProvisioningState, Workspace
from opsportal.providers import azure_cloud
from opsportal.providers.base import (
    CallNote,
    CoreUsage,
    DeploymentInfo,
    EndpointInfo,
    EndpointKeys,
    ErrorCode,
    InstanceType,
    MarketplaceStatus,
    ProviderError,
    register,
)

log = logging.getLogger(__name__)
logging.getLogger("azure.ai.ml").setLevel(logging.ERROR)  # "experimental method" on every call

# What each kind of action needs, in the words of DESIGN.md §1.
NEEDS = {
    "subscribe": (
        "Subscribing to a Marketplace offer needs Owner or Contributor on the Azure subscription, "
        "or a custom role with Microsoft.MarketplaceOrdering/agreements/offers/plans/read and "
        ".../plans/sign/action, Microsoft.MarketplaceOrdering/offerTypes/publishers/offers/plans/"
        "agreements/read, Microsoft.Marketplace/offerTypes/publishers/offers/plans/agreements/read "
        "and Microsoft.SaaS/register/action; Microsoft.SaaS/resources/read|write on the resource "
        "group; and Microsoft.MachineLearningServices/workspaces/"
        "marketplaceModelSubscriptions/* on the workspace."
    ),
    "endpoints": (
        "Managing endpoints needs Microsoft.MachineLearningServices/workspaces/"
        "serverlessEndpoints/* (or onlineEndpoints/*) on the workspace: the AzureML Data "
        "Scientist role, or Azure AI Developer on the resource group."
    ),
    "read": "Reading needs at least the Reader role on the subscription or workspace.",
}
QUOTA_CODES = {"QuotaExceeded", "InsufficientQuota", "OutOfQuota", "QuotaLimitExceeded"}


def vm_family_key(name: str) -> str:
    """A quota's family in the VM sizes' spelling: "Standard NC Family Cluster Dedicated vCPUs"
    and size family "standardNCFamily" are the same cores."""
    base = re.sub(r"\s+Cluster\s+Dedicated\s+vCPUs$|\s+Dedicated\s+vCPUs$", "", name.strip())
    compact = base.replace(" ", "")
    return compact[:1].lower() + compact[1:]


# Extra keyword arguments for every Azure client the providers build (the contract tests set
# retry_total=0 and polling_interval=0 here, so the jobs' own retry is what they exercise).
CLIENT_DEFAULTS: dict[str, Any] = {}


def azure_configuration() -> tuple[bool, str]:
    """Whether any credential source is set up (without asking Azure)."""
    if os.environ.get("AZURE_CLIENT_ID") and os.environ.get("AZURE_TENANT_ID"):
        return True, "service principal or workload identity from AZURE_* variables"
    if os.environ.get("IDENTITY_ENDPOINT") or os.environ.get("MSI_ENDPOINT"):
        return True, "managed identity"
    if shutil.which("az") and os.path.isdir(os.path.expanduser("~/.azure")):
        return True, "Azure CLI login (az login)"
    return False, (
        "Azure is not configured: set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET "
        "(or a certificate), run on a managed identity, or sign in with `az login`."
    )


def default_credential() -> Any:
    return azure_cloud.credential()


def translate(exc: Exception, *, action: str = "read", what: str = "") -> ProviderError:
    """An SDK exception in plain words, and whether trying again can help."""
    subject = f" ({what})" if what else ""
    service_code = getattr(getattr(exc, "error", None), "code", None) or ""
    if isinstance(exc, ClientAuthenticationError) and getattr(exc, "status_code", None) != 403:
        return ProviderError(
            f"Azure did not accept the credential{subject}: {_first_line(exc)}. Check the AZURE_* "
            "variables or sign in again.",
            code=ErrorCode.UNAUTHORIZED,
        )
    if isinstance(exc, ResourceNotFoundError):
        return ProviderError(
            f"Not found in Azure{subject}: it was deleted or never existed.",
            code=ErrorCode.NOT_FOUND,
            service_code=service_code,
        )
    if isinstance(exc, ResourceExistsError):
        return ProviderError(
            f"Azure reports a conflict{subject}: {_first_line(exc)}",
            code=ErrorCode.CONFLICT,
            service_code=service_code,
        )
    if isinstance(exc, ServiceRequestError | ServiceResponseError | IncompleteReadError):
        # IncompleteReadError: the connection broke in the middle of Azure's answer.
        return ProviderError(
            f"Could not reach Azure{subject}: {_first_line(exc)}. Will retry.",
            retryable=True,
            code=ErrorCode.CONNECTION_ERROR,
        )
    if isinstance(exc, HttpResponseError):
        return _translate_status(exc, exc.status_code or 0, service_code, action, subject)
    return ProviderError(
        f"Unexpected error from the Azure SDK{subject}: {type(exc).__name__}",
        code=ErrorCode.UNEXPECTED,
    )


def _translate_status(
    exc: HttpResponseError, status: int, service_code: str, action: str, subject: str
) -> ProviderError:
    said = _first_line(exc)
    if service_code == "ServerlessModelNotAvailableInRegion":
        return ProviderError(
            f"This model is not offered as a serverless API in the workspace's region"
            f"{subject}. Use a workspace in a region the catalog lists for it.",
            code=ErrorCode.NOT_IN_REGION,
            service_code=service_code,
        )
    if service_code in QUOTA_CODES or "quota" in said.lower():
        return ProviderError(
            f"Not enough VM core quota{subject}: {said}. Free cores in this region and VM family, "
            "or request a quota increase.",
            code=ErrorCode.QUOTA_EXCEEDED,
            service_code=service_code,
        )
    if status in (401, 403):
        return ProviderError(
            f"Azure refused the action ({status}){subject}. {NEEDS[action]}",
            code=ErrorCode.FORBIDDEN,
            service_code=service_code,
        )
    if status == 404:
        return ProviderError(
            f"Not found in Azure{subject}.", code=ErrorCode.NOT_FOUND, service_code=service_code
        )
    if status == 409:
        return ProviderError(
            f"Azure reports a conflict{subject}: {said}",
            code=ErrorCode.CONFLICT,
            service_code=service_code,
        )
    if status == 429:
        wait = _retry_after(exc)
        wait = 30.0 if wait is None else wait
        return ProviderError(
            f"Azure is throttling requests{subject}; wait {wait:g} s.",
            retryable=True,
            retry_after=wait,
            code=ErrorCode.THROTTLED,
        )
    if status >= 500:
        return ProviderError(
            f"Azure failed ({status}){subject}: {said}. Will retry.",
            retryable=True,
            code=ErrorCode.SERVER_ERROR,
            service_code=service_code,
        )
    return ProviderError(
        f"Azure refused the request ({status}){subject}: {said}",
        code=ErrorCode.BAD_REQUEST,
        service_code=service_code,
    )


def _first_line(exc: Exception) -> str:
    text = getattr(exc, "message", None) or str(exc)
    return text.strip().splitlines()[0][:300] if text else type(exc).__name__


def _retry_after(
    exc: HttpResponseError, names: tuple[str, ...] = ("retry-after", "x-ms-retry-after-ms")
) -> float | None:
    """The wait a throttled answer asked for, in seconds: the first of `names` (case does not
    matter; a name ending in -ms is in milliseconds), or None when it asked for none."""
    headers = getattr(exc.response, "headers", {}) or {}
    lowered = {k.lower(): v for k, v in headers.items()}
    for name in names:
        if name in lowered:
            try:
                value = float(lowered[name])
            except ValueError:
                continue
            return value / 1000 if name.endswith("-ms") else value
    return None


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


@dataclass(frozen=True)
class MarketplaceSubscriptionInfo:
    name: str
    model_id: str
    status: str  # a MarketplaceStatus
    provisioning_state: str
    resource_id: str
    publisher_id: str = ""
    offer_id: str = ""
    plan_id: str = ""


@dataclass(frozen=True)
class MarketplaceBilling:
    subscription: MarketplaceSubscriptionInfo
    saas_resource_id: str  # "" when the resource group holds none, or several alike


def marketplace_status(value: Any) -> str:
    """The SDK's snake_case status (subscribed, pending_fulfillment_start...) in Azure's words."""
    text = str(getattr(value, "value", value) or "").replace("_", "").lower()
    for status in MarketplaceStatus:
        if text.startswith(status.value.lower()):
            return status.value
    return MarketplaceStatus.PENDING.value


def subscriptions_list(credential: Any, **client_kwargs: Any) -> list[SubscriptionInfo]:
    from azure.mgmt.resource.subscriptions import SubscriptionClient

    client_kwargs = {**CLIENT_DEFAULTS, **client_kwargs}
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
    from azure.ai.ml import MLClient

    client_kwargs = {**azure_cloud.ml_client_kwargs(), **client_kwargs}
    client_kwargs.setdefault("enable_telemetry", False)
    return MLClient(credential, subscription_id, resource_group, workspace, **client_kwargs)


def workspaces_list(
    credential: Any, subscription_id: str, **client_kwargs: Any
) -> list[WorkspaceInfo]:
    client_kwargs = {**CLIENT_DEFAULTS, **client_kwargs}
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
    from azure.core.rest import HttpRequest
    from azure.mgmt.resource.resources import ResourceManagementClient

    client_kwargs = {**CLIENT_DEFAULTS, **client_kwargs}
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


# --- one workspace ------------------------------------------------------------------------------


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


@register(Provider.AZURE)
class AzureProvider:
    owns_inventory = False

    def __init__(
        self,
        workspace: Workspace,
        *,
        credential: Any = None,
        client_kwargs: dict[str, Any] | None = None,
        offering_slugs: dict[str, str] | None = None,
        correlation_id: str | None = None,
        note: CallNote | None = None,
    ) -> None:
        """`offering_slugs` (registry model id, lower case -> offering slug) lets callers on
        worker threads avoid the database; by default it is read from the catalog."""
        self.workspace = workspace
        self._slugs = offering_slugs
        kwargs = {**CLIENT_DEFAULTS, **(client_kwargs or {})}
        mine = [p for p in kwargs.get("per_call_policies", []) if isinstance(p, CorrelationPolicy)]
        if not mine:  # the sync passes its own, shared by every client of the subscription
            kwargs["per_call_policies"] = [
                *kwargs.get("per_call_policies", []),
                *client_policies(correlation_id, note)["per_call_policies"],
            ]
        self._credential = credential or default_credential()
        self._kwargs = kwargs
        self.ml = ml_client(
            self._credential,
            workspace.account.subscription_id,
            workspace.resource_group,
            workspace.name,
            **kwargs,
        )

    def _call(self, action: str, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ProviderError:
            raise
        except Exception as exc:
            raise translate(exc, action=action, what=what) from exc

    def _offering(self, slug: str) -> Offering:
        offering = Offering.objects.filter(slug=slug).first()
        if offering is None or not offering.registry_model_id:
            raise ProviderError(
                f"No Azure model for offering {slug!r} in the catalog.", code=ErrorCode.NOT_FOUND
            )
        return offering

    def _slug_of(self, model_id: str) -> str:
        if self._slugs is None:
            self._slugs = offering_slugs_by_model()
        return self._slugs.get(unversioned(model_id), "")

    def _kind(self, name: str) -> str:
        kind = (
            Endpoint.objects.filter(workspace=self.workspace, name=name)
            .order_by("-pk")
            .values_list("kind", flat=True)
            .first()
        )
        if kind is None:
            # Not synced yet: ask Azure which kind it is.
            try:
                self.ml.serverless_endpoints.get(name)
                return Endpoint.Kind.SERVERLESS
            except ResourceNotFoundError:
                return Endpoint.Kind.MANAGED
            except Exception as exc:
                raise translate(exc, what=name) from exc
        return kind

    # --- Marketplace subscriptions -------------------------------------------------------------
    def marketplace_subscriptions_list(self) -> list[MarketplaceSubscriptionInfo]:
        def run() -> list[MarketplaceSubscriptionInfo]:
            out = []
            for s in self.ml.marketplace_subscriptions.list():
                plan = getattr(s, "marketplace_plan", None)
                out.append(
                    MarketplaceSubscriptionInfo(
                        name=s.name,
                        model_id=s.model_id or "",
                        status=marketplace_status(s.status),
                        provisioning_state=state_of(s.provisioning_state),
                        resource_id=s.id or "",
                        publisher_id=getattr(plan, "publisher_id", None) or "",
                        offer_id=getattr(plan, "offer_id", None) or "",
                        plan_id=getattr(plan, "plan_id", None) or "",
                    )
                )
            return out

        return self._call("read", "Marketplace subscriptions", run)

    def subscription_status(self, *, offering_slug: str) -> MarketplaceStatus | None:
        """The workspace's Marketplace subscription to the offering's model, if it has one."""
        model_id = unversioned(self._offering(offering_slug).registry_model_id)
        found = [
            s for s in self.marketplace_subscriptions_list() if unversioned(s.model_id) == model_id
        ]
        return MarketplaceStatus(found[0].status) if found else None

    def subscription_billing(self, *, offering_slug: str) -> MarketplaceBilling | None:
        """The workspace's Marketplace subscription to the offering and the SaaS resource
        Cost Management bills it on (same publisher, offer and plan in the resource group)."""
        model_id = unversioned(self._offering(offering_slug).registry_model_id)
        mine = [
            s for s in self.marketplace_subscriptions_list() if unversioned(s.model_id) == model_id
        ]
        if not mine:
            return None
        sub = mine[0]
        group = resource_group_read(
            self._credential,
            self.workspace.account.subscription_id,
            self.workspace.resource_group,
            **self._kwargs,
        )
        plan = (sub.publisher_id.lower(), sub.offer_id.lower(), sub.plan_id.lower())
        saas = [
            s.resource_id
            for s in group.saas
            if (s.publisher.lower(), s.offer.lower(), s.plan.lower()) == plan
        ]
        return MarketplaceBilling(
            subscription=sub, saas_resource_id=saas[0] if len(saas) == 1 else ""
        )

    def subscription_create(self, *, offering_slug: str) -> str:
        from azure.ai.ml.entities import MarketplaceSubscription

        offering = self._offering(offering_slug)
        sub = MarketplaceSubscription(name=offering.slug, model_id=offering.registry_model_id)

        def run() -> str:
            result = self.ml.marketplace_subscriptions.begin_create_or_update(sub).result()
            return state_of(result.provisioning_state)

        return self._call("subscribe", f"subscribing to {offering.display_name}", run)

    # --- endpoints -------------------------------------------------------------------------------
    def _serverless_info(self, ep: Any) -> EndpointInfo:
        return EndpointInfo(
            name=ep.name,
            kind=Endpoint.Kind.SERVERLESS,
            provisioning_state=state_of(ep.provisioning_state),
            scoring_uri=ep.scoring_uri or "",
            offering_slug=self._slug_of(ep.model_id or ""),
            model_id=ep.model_id or "",
        )

    def _online_info(self, ep: Any, deployments: list[Any]) -> EndpointInfo:
        traffic = ep.traffic or {}
        infos = tuple(
            DeploymentInfo(
                name=d.name,
                instance_type=d.instance_type or "",
                instance_count=d.instance_count or 0,
                traffic_percent=int(traffic.get(d.name, 0)),
                state=state_of(d.provisioning_state),
                model_id=str(getattr(d, "model", "") or ""),
            )
            for d in deployments
        )
        # An online endpoint has no model of its own: its deployments serve one. The one with
        # the most traffic names it (they normally all serve the same model).
        ranked = sorted(infos, key=lambda d: d.traffic_percent, reverse=True)
        model_id = next((d.model_id for d in ranked if d.model_id), "")
        return EndpointInfo(
            name=ep.name,
            kind=Endpoint.Kind.MANAGED,
            provisioning_state=state_of(ep.provisioning_state),
            scoring_uri=ep.scoring_uri or "",
            offering_slug=self._slug_of(model_id),
            deployments=infos,
            model_id=model_id,
        )

    def serverless_endpoints_list(self) -> list[EndpointInfo]:
        return self._call(
            "read",
            "serverless endpoints",
            lambda: [self._serverless_info(ep) for ep in self.ml.serverless_endpoints.list()],
        )

    def online_endpoints_list(self, *, with_deployments: bool = True) -> list[EndpointInfo]:
        def run() -> list[EndpointInfo]:
            out = []
            for ep in self.ml.online_endpoints.list():
                deps = list(self.ml.online_deployments.list(ep.name)) if with_deployments else []
                out.append(self._online_info(ep, deps))
            return out

        return self._call("read", "online endpoints", run)

    def endpoints_list(self) -> list[EndpointInfo]:
        return self.serverless_endpoints_list() + self.online_endpoints_list()

    def endpoint_get(self, name: str) -> EndpointInfo:
        if self._kind(name) == Endpoint.Kind.SERVERLESS:
            return self._call(
                "read", name, lambda: self._serverless_info(self.ml.serverless_endpoints.get(name))
            )

        def online() -> EndpointInfo:
            ep = self.ml.online_endpoints.get(name)
            return self._online_info(ep, list(self.ml.online_deployments.list(name)))

        return self._call("read", name, online)

    def endpoint_create(self, *, name: str, kind: str, offering_slug: str) -> EndpointInfo:
        from azure.ai.ml.entities import ManagedOnlineEndpoint, ServerlessEndpoint

        offering = self._offering(offering_slug)
        if kind == Endpoint.Kind.SERVERLESS:
            entity = ServerlessEndpoint(name=name, model_id=offering.registry_model_id)
            return self._call(
                "endpoints",
                f"creating {name}",
                lambda: self._serverless_info(
                    self.ml.serverless_endpoints.begin_create_or_update(entity).result()
                ),
            )
        endpoint = ManagedOnlineEndpoint(name=name, auth_mode="key")
        return self._call(
            "endpoints",
            f"creating {name}",
            lambda: self._online_info(
                self.ml.online_endpoints.begin_create_or_update(endpoint).result(), []
            ),
        )

    def endpoint_delete(self, *, name: str) -> None:
        if self._kind(name) == Endpoint.Kind.SERVERLESS:
            self._call(
                "endpoints",
                f"deleting {name}",
                lambda: self.ml.serverless_endpoints.begin_delete(name).result(),
            )
        else:
            self._call(
                "endpoints",
                f"deleting {name}",
                lambda: self.ml.online_endpoints.begin_delete(name=name).result(),
            )

    # --- managed deployments -------------------------------------------------------------------
    def _deployment_info(self, result: Any, traffic_percent: int) -> DeploymentInfo:
        return DeploymentInfo(
            name=result.name,
            instance_type=result.instance_type or "",
            instance_count=result.instance_count or 0,
            traffic_percent=traffic_percent,
            state=state_of(result.provisioning_state),
            model_id=str(getattr(result, "model", "") or ""),
        )

    def deployment_create(
        self,
        *,
        endpoint_name: str,
        name: str,
        instance_type: str,
        instance_count: int,
        traffic_percent: int,
        offering_slug: str = "",
        data_collection: bool = False,
    ) -> DeploymentInfo:
        from azure.ai.ml.entities import (
            DataCollector,
            DeploymentCollection,
            ManagedOnlineDeployment,
        )

        ep_row = Endpoint.objects.filter(workspace=self.workspace, name=endpoint_name).first()
        slug = offering_slug or (ep_row.offering.slug if ep_row and ep_row.offering else "")
        offering = self._offering(slug)
        collector = None
        if data_collection:
            # Inference data collection: the deployment's dataCollector, inputs and outputs.
            collector = DataCollector(
                collections={
                    "model_inputs": DeploymentCollection(enabled="true"),
                    "model_outputs": DeploymentCollection(enabled="true"),
                }
            )
        deployment = ManagedOnlineDeployment(
            name=name,
            endpoint_name=endpoint_name,
            model=offering.registry_model_id,
            instance_type=instance_type,
            instance_count=instance_count,
            data_collector=collector,
        )

        def run() -> DeploymentInfo:
            result = self.ml.online_deployments.begin_create_or_update(deployment).result()
            endpoint = self.ml.online_endpoints.get(endpoint_name)
            endpoint.traffic = {**(endpoint.traffic or {}), name: traffic_percent}
            self.ml.online_endpoints.begin_create_or_update(endpoint).result()
            return self._deployment_info(result, traffic_percent)

        return self._call("endpoints", f"deploying {name} to {endpoint_name}", run)

    def deployment_scale(
        self, *, endpoint_name: str, name: str, instance_count: int
    ) -> DeploymentInfo:
        def run() -> DeploymentInfo:
            deployment = self.ml.online_deployments.get(name=name, endpoint_name=endpoint_name)
            deployment.instance_count = instance_count
            result = self.ml.online_deployments.begin_create_or_update(deployment).result()
            traffic = self.ml.online_endpoints.get(endpoint_name).traffic or {}
            return self._deployment_info(result, int(traffic.get(name, 0)))

        return self._call(
            "endpoints", f"scaling {endpoint_name}/{name} to {instance_count} instances", run
        )

    def traffic_set(self, *, endpoint_name: str, traffic: dict[str, int]) -> dict[str, int]:
        def run() -> dict[str, int]:
            endpoint = self.ml.online_endpoints.get(endpoint_name)
            endpoint.traffic = dict(traffic)
            result = self.ml.online_endpoints.begin_create_or_update(endpoint).result()
            return {k: int(v) for k, v in (result.traffic or traffic).items()}

        return self._call("endpoints", f"setting the traffic of {endpoint_name}", run)

    def deployment_delete(self, *, endpoint_name: str, name: str) -> None:
        self._call(
            "endpoints",
            f"deleting {endpoint_name}/{name}",
            lambda: self.ml.online_deployments.begin_delete(
                name=name, endpoint_name=endpoint_name
            ).result(),
        )

    # --- keys ------------------------------------------------------------------------------------
    def keys_get(self, *, name: str) -> EndpointKeys:
        ops = (
            self.ml.serverless_endpoints
            if self._kind(name) == Endpoint.Kind.SERVERLESS
            else self.ml.online_endpoints
        )

        def run() -> EndpointKeys:
            keys = ops.get_keys(name)
            if not getattr(keys, "primary_key", None):
                raise ProviderError(
                    f"{name} does not use key authentication.", code=ErrorCode.NO_KEYS
                )
            return EndpointKeys(primary=keys.primary_key, secondary=keys.secondary_key)

        return self._call("endpoints", f"keys of {name}", run)

    def key_regenerate(self, *, name: str, slot: str) -> EndpointKeys:
        if slot not in ("primary", "secondary"):
            raise ProviderError(
                "The key to regenerate is 'primary' or 'secondary'.", code=ErrorCode.INVALID
            )
        if self._kind(name) == Endpoint.Kind.SERVERLESS:
            self._call(
                "endpoints",
                f"regenerating the {slot} key of {name}",
                self._regenerate_serverless_key,
                name,
                slot,
            )
        else:
            self._call(
                "endpoints",
                f"regenerating the {slot} key of {name}",
                lambda: self.ml.online_endpoints.begin_regenerate_keys(
                    name, key_type=slot
                ).result(),
            )
        return self.keys_get(name=name)

    def _regenerate_serverless_key(self, name: str, slot: str) -> None:
        # WORKAROUND(serverless-regenerate): azure-ai-ml 1.35.2's
        # serverless_endpoints.begin_regenerate_keys passes endpoint_name= to a generated method
        # whose parameter is `name`, and always raises TypeError (NOTES.md §7.1). Call the
        # generated client it wraps, with the same request body. tests/test_azure_contract.py
        # fails when the public method starts working, so this can go then.
        from azure.ai.ml._restclient.arm_ml_service.models import RegenerateEndpointKeysRequest

        client = self.ml._service_client_01_2024_preview_arm.serverless_endpoints
        client.begin_regenerate_keys(
            resource_group_name=self.workspace.resource_group,
            workspace_name=self.workspace.name,
            name=name,
            body=RegenerateEndpointKeysRequest(key_type=slot.capitalize()),
        ).result()

    # --- compute quota ---------------------------------------------------------------------
    def instance_types(self) -> list[InstanceType]:
        def run() -> list[InstanceType]:
            out = []
            for size in self.ml.compute.list_sizes(location=self.workspace.region):
                # WORKAROUND(half-empty-vmsize): 1.35.x leaves v_cp_us/memory_gb/family None and
                # puts the camelCase REST fields into __dict__ (NOTES.md §7.2). Read either.
                raw = size.__dict__
                cores = getattr(size, "v_cp_us", None) or raw.get("vCPUs") or 0
                memory = getattr(size, "memory_gb", None) or raw.get("memoryGB") or 0
                family = getattr(size, "family", None) or raw.get("family") or ""
                out.append(
                    InstanceType(
                        name=size.name, cores=int(cores), memory_gb=float(memory), family=family
                    )
                )
            return out

        return self._call("read", f"VM sizes in {self.workspace.region}", run)

    def core_usage(self) -> list[CoreUsage]:
        def run() -> list[CoreUsage]:
            out = []
            for usage in self.ml.compute.list_usage(location=self.workspace.region):
                # WORKAROUND(half-empty-usage): 1.35.x leaves current_value/limit None and keeps
                # the REST fields (currentValue, name as a dict) in __dict__ (NOTES.md §7.2).
                raw = usage.__dict__
                current = usage.current_value
                if current is None:
                    current = raw.get("currentValue", 0)
                limit = usage.limit if usage.limit is not None else raw.get("limit", 0)
                name = raw.get("name")
                family = name.get("value") if isinstance(name, dict) else str(name or "")
                scope = str(raw.get("type") or getattr(usage, "type", "") or "")
                # The list mixes scopes (subscription VM family, workspace, compute) and
                # low-priority quotas; a deployment draws on the subscription's dedicated cores
                # of its VM family in the region.
                if not scope.endswith("vmFamily/usages") or "LowPriority" in family:
                    continue
                out.append(
                    CoreUsage(
                        region=self.workspace.region,
                        family=vm_family_key(family),
                        used=int(current or 0),
                        limit=int(limit or 0),
                    )
                )
            return out

        return self._call("read", f"core usage in {self.workspace.region}", run)


# --- Cost Management -------------------------------------------------------------------------

# Cost Management's throttling headers (NOTES.md §4): azure-core retries none of them, so the
# back-off is ours.
COST_RETRY_HEADERS = (
    "x-ms-ratelimit-microsoft.costmanagement-qpu-retry-after",
    "x-ms-ratelimit-microsoft.costmanagement-entity-retry-after",
    "x-ms-ratelimit-microsoft.costmanagement-tenant-retry-after",
    "retry-after",
)
COST_COLUMNS = ("Cost", "PreTaxCost", "CostUSD", "PreTaxCostUSD")
# Marketplace model subscriptions bill on SaaS resources; managed compute on the VMs behind
# online endpoints.
COST_RESOURCE_TYPES = [
    "microsoft.saas/resources",
    "microsoft.machinelearningservices/workspaces/onlineendpoints",
    "microsoft.machinelearningservices/workspaces/onlineendpoints/deployments",
]


@dataclass(frozen=True)
class CostRow:
    day: date
    resource_id: str
    meter: str
    quantity: Decimal
    cost: Decimal
    currency: str


def cost_query_body(start: date, end: date) -> dict[str, Any]:
    """Actual cost per day, resource and meter, for Marketplace and managed compute resources."""
    return {
        "type": "ActualCost",
        "timeframe": "Custom",
        "timePeriod": {
            "from": f"{start.isoformat()}T00:00:00Z",
            "to": f"{end.isoformat()}T23:59:59Z",
        },
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
            "filter": {
                "or": [
                    {
                        "dimensions": {
                            "name": "PublisherType",
                            "operator": "In",
                            "values": ["Marketplace"],
                        }
                    },
                    {
                        "dimensions": {
                            "name": "ResourceType",
                            "operator": "In",
                            "values": COST_RESOURCE_TYPES,
                        }
                    },
                ]
            },
        },
    }


def cost_rows_parse(columns: list[str], rows: list[list[Any]]) -> list[CostRow]:
    """Rows of a Query result, by column name (the API orders them: aggregations, groupings,
    UsageDate, Currency). UsageDate is a yyyymmdd number for daily granularity."""
    index = {name: i for i, name in enumerate(columns)}
    cost_at = next((index[c] for c in COST_COLUMNS if c in index), None)
    if cost_at is None or "UsageDate" not in index:
        raise ProviderError(
            f"Cost Management answered without a cost or date column ({', '.join(columns)}).",
            code=ErrorCode.BAD_RESPONSE,
        )
    known = {*COST_COLUMNS, "UsageQuantity", "UsageDate", "Currency", "Meter"}
    resource_at = index.get("ResourceId")
    if resource_at is None:  # grouped by something else: that is the resource
        resource_at = next((i for name, i in index.items() if name not in known), None)
    out = []
    for row in rows:
        raw_day = str(row[index["UsageDate"]])
        day = (
            date(int(raw_day[:4]), int(raw_day[4:6]), int(raw_day[6:8]))
            if raw_day.isdigit()
            else (date.fromisoformat(raw_day[:10]))
        )
        out.append(
            CostRow(
                day=day,
                resource_id=str(row[resource_at]) if resource_at is not None else "",
                meter=str(row[index["Meter"]]) if "Meter" in index else "",
                quantity=Decimal(str(row[index["UsageQuantity"]]))
                if "UsageQuantity" in index
                else Decimal(0),
                cost=Decimal(str(row[cost_at])),
                currency=str(row[index["Currency"]]) if "Currency" in index else "USD",
            )
        )
    return out


# Managed online deployments' VM hours are billed on the workspace resource, tagged with the
# endpoint and deployment they serve (Microsoft, "View costs for an Azure Machine Learning
# managed online endpoint": filter by the workspace, then by these tags).
ENDPOINT_TAG = "azuremlendpoint"
MANAGED_METER = "managed-compute"


def managed_cost_query_body(start: date, end: date) -> dict[str, Any]:
    """Actual cost per day of the workspaces' resources, by resource and endpoint tag."""
    body = cost_query_body(start, end)
    body["dataset"]["grouping"] = [
        {"type": "Dimension", "name": "ResourceId"},
        {"type": "TagKey", "name": ENDPOINT_TAG},
    ]
    body["dataset"]["filter"] = {
        "dimensions": {
            "name": "ResourceType",
            "operator": "In",
            "values": ["microsoft.machinelearningservices/workspaces"],
        }
    }
    return body


def managed_rows(columns: list[str], rows: list[list[Any]]) -> list[CostRow]:
    """The endpoint-tagged rows of the workspace query, each as the endpoint's own resource
    (`{workspace id}/onlineEndpoints/{name}`), under one managed-compute meter. Untagged rows
    are the workspace's other compute, not an endpoint's."""
    index = {name.lower(): i for i, name in enumerate(columns)}
    tag_at = index.get(ENDPOINT_TAG, index.get("tagvalue"))
    out = []
    parsed = cost_rows_parse(columns, rows)
    for raw, row in zip(rows, parsed, strict=True):
        endpoint = str(raw[tag_at]) if tag_at is not None and raw[tag_at] else ""
        if ":" in endpoint and tag_at == index.get("tagvalue"):
            endpoint = endpoint.split(":", 1)[1]
        if not endpoint:
            continue
        out.append(
            CostRow(
                day=row.day,
                resource_id=f"{row.resource_id.rstrip('/')}/onlineEndpoints/{endpoint}",
                meter=MANAGED_METER,
                quantity=row.quantity,
                cost=row.cost,
                currency=row.currency,
            )
        )
    return out


def cost_query(
    credential: Any,
    subscription_id: str,
    start: date,
    end: date,
    *,
    client_kwargs: dict[str, Any] | None = None,
    sleep: Any = None,
    max_wait_s: float = 300.0,
    correlation_id: str | None = None,
) -> tuple[list[CostRow], float]:
    """Daily cost rows of one subscription: the Marketplace meters (and anything billed on
    online endpoint resources), then managed compute's VM hours by endpoint. Returns (rows,
    seconds spent waiting out 429s)."""
    import time

    from azure.core.rest import HttpRequest
    from azure.mgmt.costmanagement import CostManagementClient

    kwargs = {**CLIENT_DEFAULTS, **(client_kwargs or {}), **client_policies(correlation_id)}
    sleep = sleep or time.sleep
    client = CostManagementClient(credential, **{**azure_cloud.mgmt_client_kwargs(), **kwargs})
    waited = 0.0

    def throttled(call: Any) -> Any:
        nonlocal waited
        while True:
            try:
                return call()
            except HttpResponseError as exc:
                if exc.status_code != 429:
                    raise translate(exc, what=f"cost of subscription {subscription_id}") from exc
                wait = _retry_after(exc, COST_RETRY_HEADERS)
                wait = 60.0 if wait is None else wait
                if waited + wait > max_wait_s:
                    raise ProviderError(
                        f"Cost Management is throttling this tenant (asked to wait {wait:g} s); "
                        "the next scheduled pull tries again.",
                        retryable=True,
                        retry_after=wait,
                        code=ErrorCode.THROTTLED,
                    ) from exc
                log.info("cost query throttled; waiting %.0f s", wait)
                sleep(wait)
                waited += wait
            except ProviderError:
                raise
            except Exception as exc:
                raise translate(exc, what=f"cost of subscription {subscription_id}") from exc

    def query(body: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
        result = throttled(
            lambda: client.query.usage(scope=f"/subscriptions/{subscription_id}", parameters=body)
        )
        if result is None or result.properties is None:  # 204: no data for the period
            return [], []
        props = result.properties
        columns = [c.name for c in props.columns or []]
        rows = list(props.rows or [])
        next_link = props.next_link
        pages = 1
        while next_link and pages < 100:
            # No pager for Query: the next page is the same body posted to nextLink.
            response = throttled(
                lambda link=next_link: _raise_for_status(
                    client._client.send_request(HttpRequest("POST", link, json=body))
                )
            )
            page = response.json().get("properties") or {}
            rows += page.get("rows") or []
            next_link = page.get("nextLink")
            pages += 1
        return columns, rows

    columns, rows = query(cost_query_body(start, end))
    found = cost_rows_parse(columns, rows) if columns else []
    columns, rows = query(managed_cost_query_body(start, end))
    found += managed_rows(columns, rows) if columns else []
    return found, waited


def _raise_for_status(response: Any) -> Any:
    if response.status_code >= 400:
        raise HttpResponseError(response=response)
    return response
