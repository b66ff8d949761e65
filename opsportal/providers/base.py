import contextlib
import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Azure's rule for endpoint and deployment names: letters, digits and hyphens, 3-32, starting
# with a letter and not ending with a hyphen.
ENDPOINT_NAME_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]{1,30}[a-zA-Z0-9]$")


class ProviderError(Exception):
    """One error type for every back end.

    `message` is written for a person (what failed, what to do); it never contains a key or a
    token. `retryable` says whether trying again later can help (throttling, 5xx, timeouts);
    `retry_after` is the wait the service asked for, in seconds, when it asked.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = False,
        retry_after: float | None = None,
        code: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after
        self.code = code


_FACTORIES: dict[str, Callable[[Any], Any]] = {}


def register(name: str) -> Callable[[Callable[[Any], Any]], Callable[[Any], Any]]:
    """Register a factory that builds the back end for a workspace of provider `name`."""

    def decorate(factory: Callable[[Any], Any]) -> Callable[[Any], Any]:
        _FACTORIES[name] = factory
        return factory

    return decorate


def for_workspace(workspace: Any, **options: Any) -> Any:
    """The back end of a workspace. `options` (e.g. correlation_id) go to the back end, which
    ignores what it has no use for."""
    if workspace.provider not in _FACTORIES:
        # Back ends register when their module is imported; import on first use, so a process
        # that never talks to Azure never loads the Azure SDK.
        with contextlib.suppress(ImportError):
            importlib.import_module(f"opsportal.providers.{workspace.provider}")
    try:
        factory = _FACTORIES[workspace.provider]
    except KeyError:
        raise ProviderError(
            f"No back end is available for {workspace.get_provider_display()} workspaces "
            "in this version of the console.",
            code="ProviderUnavailable",
        ) from None
    return factory(workspace, **options)


# --- what providers take and return ----------------------------------------------------------


@dataclass(frozen=True)
class DeploymentInfo:
    name: str
    instance_type: str
    instance_count: int
    traffic_percent: int
    state: str


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
