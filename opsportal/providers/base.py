"""The one interface every back end implements (Azure, the local runtime), what it takes and
returns, and its one error type.

Back ends are the only code that imports cloud SDKs or talks to the local runtime. They take
and return the plain dataclasses below, raise ProviderError (whose code is an ErrorCode and
whose `retryable` says whether trying again can help), and know nothing of HTTP requests to
the console. `for_workspace` returns the back end of a workspace: a workspace row names its
provider, so Azure and local workspaces live side by side.
"""

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import ClassVar, Protocol

from django.conf import settings
from django.utils.module_loading import import_string

from opsportal.inventory.models import Workspace

# Azure's rule for endpoint and deployment names: letters, digits and hyphens, 3-32, starting
# with a letter and not ending with a hyphen.
ENDPOINT_NAME_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]{1,30}[a-zA-Z0-9]$")


class ErrorCode(StrEnum):
    """Why a provider call failed, in words callers can branch on."""

    NOT_FOUND = "NotFound"
    CONFLICT = "Conflict"
    UNAUTHORIZED = "Unauthorized"
    FORBIDDEN = "Forbidden"
    THROTTLED = "Throttled"
    SERVER_ERROR = "ServerError"
    CONNECTION_ERROR = "ConnectionError"
    TIMEOUT = "Timeout"
    BAD_REQUEST = "BadRequest"
    BAD_RESPONSE = "BadResponse"
    INVALID = "Invalid"
    INVALID_NAME = "InvalidName"
    QUOTA_EXCEEDED = "QuotaExceeded"
    NOT_IN_REGION = "NotOfferedInRegion"
    MODEL_NOT_LOCAL = "ModelNotAvailableLocally"
    SUBSCRIPTION_REQUIRED = "SubscriptionRequired"
    SUBSCRIPTION_INACTIVE = "SubscriptionInactive"
    SUBSCRIPTION_FAILED = "SubscriptionFailed"
    TERMS_NOT_ACCEPTED = "TermsNotAccepted"
    PROVISIONING_FAILED = "ProvisioningFailed"
    NO_KEYS = "NoKeys"
    NOT_SUPPORTED = "NotSupported"
    UNAVAILABLE = "ProviderUnavailable"
    UNEXPECTED = "Unexpected"


class ProviderError(Exception):
    """One error type for every back end.

    `message` is written for a person (what failed, what to do); it never contains a key or a
    token. `retryable` says whether trying again later can help (throttling, 5xx, timeouts);
    `retry_after` is the wait the service asked for, in seconds, when it asked. `service_code`
    is the service's own error code when it gave one (Azure's `error.code`), for the log.
    """

    def __init__(
        self,
        message: str,
        *,
        code: ErrorCode = ErrorCode.UNEXPECTED,
        retryable: bool = False,
        retry_after: float | None = None,
        service_code: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.retryable = retryable
        self.retry_after = retry_after
        self.service_code = service_code


# --- what providers take and return ----------------------------------------------------------


class MarketplaceStatus(StrEnum):
    """A Marketplace subscription's status as Azure names it (MarketplaceSubscriptionStatus)."""

    SUBSCRIBED = "Subscribed"
    SUSPENDED = "Suspended"
    UNSUBSCRIBED = "Unsubscribed"
    PENDING = "Pending"


@dataclass(frozen=True)
class DeploymentInfo:
    name: str
    instance_type: str
    instance_count: int
    traffic_percent: int
    state: str
    model_id: str = ""


@dataclass(frozen=True)
class EndpointInfo:
    name: str
    kind: str  # serverless | managed
    provisioning_state: str  # Creating | Updating | Succeeded | Failed | Deleting | Canceled
    scoring_uri: str
    offering_slug: str
    status_message: str = ""
    deployments: tuple[DeploymentInfo, ...] = ()
    model_id: str = ""


@dataclass(frozen=True)
class EndpointKeys:
    # Never shown by repr: these objects may end up in tracebacks and logs.
    primary: str = field(repr=False)
    secondary: str = field(repr=False)


@dataclass(frozen=True)
class CoreUsage:
    region: str
    family: str
    used: int
    limit: int

    @property
    def headroom(self) -> int:
        return max(0, self.limit - self.used)


@dataclass(frozen=True)
class InstanceType:
    name: str
    cores: int
    memory_gb: float
    family: str


@dataclass(frozen=True)
class ComputeSnapshot:
    """Instance types and core quota of a workspace's region, as far as the console knows them
    without waiting on the cloud: the local runtime's are live, Azure's the sync's snapshot."""

    sizes: dict[str, tuple[int, str]] = field(default_factory=dict)  # name -> (cores, family)
    usage: dict[str, tuple[int, int]] = field(default_factory=dict)  # family -> (used, limit)
    known: bool = False


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


# A line for the job's log about one call the back end made (never a secret).
CallNote = Callable[[str], None]


class WorkspaceBackend(Protocol):
    """What the console asks of a workspace's back end. Both providers implement all of it."""

    # The local runtime keeps its state in the inventory itself (it writes the endpoint rows);
    # for Azure the console writes them from what the provider returns.
    owns_inventory: ClassVar[bool]

    # Marketplace subscriptions (locally: accepting the model's licence)
    def subscription_status(self, *, offering_slug: str) -> MarketplaceStatus | None: ...
    def subscription_create(self, *, offering_slug: str) -> str: ...
    def subscription_billing(self, *, offering_slug: str) -> MarketplaceBilling | None:
        """What the subscription bills on (Azure: its SaaS resource), or None."""
        ...

    # Endpoints
    def endpoints_list(self) -> list[EndpointInfo]: ...
    def endpoint_get(self, name: str) -> EndpointInfo: ...
    def endpoint_create(self, *, name: str, kind: str, offering_slug: str) -> EndpointInfo: ...
    def endpoint_delete(self, *, name: str) -> None: ...

    # Managed deployments under an endpoint
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
    ) -> DeploymentInfo: ...
    def deployment_scale(
        self, *, endpoint_name: str, name: str, instance_count: int
    ) -> DeploymentInfo: ...
    def traffic_set(self, *, endpoint_name: str, traffic: dict[str, int]) -> dict[str, int]: ...
    def deployment_delete(self, *, endpoint_name: str, name: str) -> None: ...

    # Keys
    def keys_get(self, *, name: str) -> EndpointKeys: ...
    def key_regenerate(self, *, name: str, slot: str) -> EndpointKeys: ...

    # Compute for managed deployments
    def instance_types(self) -> list[InstanceType]: ...
    def core_usage(self) -> list[CoreUsage]: ...
    def compute_snapshot(self) -> ComputeSnapshot: ...


@functools.cache
def _factory(path: str) -> Callable[..., WorkspaceBackend]:
    return import_string(path)


def for_workspace(
    workspace: Workspace, *, correlation_id: str | None = None, note: CallNote | None = None
) -> WorkspaceBackend:
    """The back end of a workspace. `correlation_id` ties every call to a job (Azure's
    x-ms-correlation-request-id); `note` receives a line per call that changes something."""
    # settings.OPSPORTAL_PROVIDERS names each back end's class; it is imported on first use,
    # so a process that never talks to Azure never loads the Azure SDK.
    path = settings.OPSPORTAL_PROVIDERS.get(workspace.provider)
    if not path:
        raise ProviderError(
            f"No back end is available for {workspace.get_provider_display()} workspaces "
            "in this version of the console.",
            code=ErrorCode.UNAVAILABLE,
        )
    return _factory(path)(workspace, correlation_id=correlation_id, note=note)
