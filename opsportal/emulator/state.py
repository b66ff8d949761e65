"""What the emulator remembers between calls: one `State`, in memory, guarded by one lock.

Handlers take `state.lock` for every read-modify-write; `settle()` (called under the lock at
the start of each request) completes the long-running operations whose time has come on the
emulator clock.
"""

import random
import re
import threading
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from opsportal.emulator.clock import Clock

MLS = "Microsoft.MachineLearningServices"


class ArmError(Exception):
    """An error answer in ARM's shape: {"error": {"code", "message"}}."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


def not_found(kind: str, name: str, resource_group: str) -> ArmError:
    return ArmError(
        404,
        "ResourceNotFound",
        f"The Resource '{kind}/{name}' under resource group '{resource_group}' was not found. "
        "For more details please go to https://aka.ms/ARMResourceNotFoundFix",
    )


def new_key(rng: random.Random) -> str:
    return "".join(
        rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
        for _ in range(32)
    )


def new_guid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


@dataclass
class Workspace:
    subscription: str
    resource_group: str
    name: str
    location: str
    tags: dict[str, str]
    created: datetime
    workspace_id: str

    @property
    def id(self) -> str:
        return (
            f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}"
            f"/providers/{MLS}/workspaces/{self.name}"
        )

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.subscription, self.resource_group.lower(), self.name.lower())


@dataclass
class SaasResource:
    subscription: str
    resource_group: str
    name: str
    model_id: str
    plan: dict[str, str]
    status: str
    created: datetime
    workspace: Workspace
    saas_subscription_id: str

    @property
    def id(self) -> str:
        return (
            f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}"
            f"/providers/Microsoft.SaaS/resources/{self.name}"
        )


@dataclass
class MarketplaceSubscription:
    workspace: Workspace
    name: str
    model_id: str
    plan: dict[str, str]
    provisioning_state: str
    created: datetime
    saas: SaasResource

    @property
    def id(self) -> str:
        return f"{self.workspace.id}/marketplaceSubscriptions/{self.name}"

    @property
    def status(self) -> str:
        return self.saas.status


@dataclass
class ServerlessEndpoint:
    workspace: Workspace
    name: str
    model: dict[str, Any]
    provisioning_state: str
    endpoint_state: str
    primary_key: str
    secondary_key: str
    tags: dict[str, str]
    created: datetime
    marketplace: MarketplaceSubscription | None
    content_safety: str = "Enabled"

    @property
    def id(self) -> str:
        return f"{self.workspace.id}/serverlessEndpoints/{self.name}"


@dataclass
class Deployment:
    endpoint: "OnlineEndpoint"
    name: str
    model: str
    instance_type: str
    capacity: int
    provisioning_state: str
    created: datetime
    properties: dict[str, Any]
    # Billing segments: [start, end or None, instance count, instance type].
    segments: list[list[Any]] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.endpoint.id}/deployments/{self.name}"

    def holds_cores(self) -> bool:
        """Instances run (and hold quota) while a billing segment is open: a create refused for
        quota never opened one; a refused update keeps the instances it had."""
        return bool(self.segments) and self.segments[-1][1] is None


@dataclass
class OnlineEndpoint:
    workspace: Workspace
    name: str
    auth_mode: str
    traffic: dict[str, int]
    primary_key: str
    secondary_key: str
    provisioning_state: str
    description: str
    tags: dict[str, str]
    created: datetime
    deployments: dict[str, Deployment] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.workspace.id}/onlineEndpoints/{self.name}"


@dataclass
class Operation:
    id: str
    subscription: str
    location: str
    kind: str
    started: datetime
    due: datetime
    status: str = "InProgress"
    error: dict[str, str] | None = None
    # Runs when the operation's time has come; returns an error dict to fail it.
    apply: Callable[[], dict[str, str] | None] | None = None
    result_status: int = 200
    target: str = ""

    def seconds_left(self, now: datetime) -> float:
        return max(0.0, (self.due - now).total_seconds())


@dataclass
class UsageRow:
    """One metered quantity that Cost Management will report (after the data lag)."""

    at: datetime
    subscription: str
    resource_id: str
    resource_type: str
    resource_group: str
    location: str
    meter: str
    meter_category: str
    meter_subcategory: str
    quantity: float
    cost: float
    publisher_type: str
    service_name: str
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class SecretVersion:
    name: str
    version: str
    value: str
    content_type: str | None
    tags: dict[str, str]
    created: datetime
    enabled: bool = True


class State:
    def __init__(
        self,
        world: dict[str, Any],
        *,
        clock: Clock,
        base_url: str,
        vault_urls: dict[str, str] | None = None,
    ) -> None:
        self.lock = threading.RLock()
        self.clock = clock
        self.base_url = base_url.rstrip("/")
        # Each vault answers at the root of its own address (the Key Vault SDK parses secret
        # ids as https://{vault host}/secrets/{name}/{version}): vault name -> its URL.
        self.vault_urls = {k.lower(): v.rstrip("/") for k, v in (vault_urls or {}).items()}
        self.requests: deque[dict[str, Any]] = deque(maxlen=5000)
        self.faults: list[dict[str, Any]] = []
        self.load(world)

    # --- world --------------------------------------------------------------------------------
    def load(self, world: dict[str, Any]) -> None:
        with self.lock:
            self.world = world
            self.rng = random.Random(world.get("seed", 7))
            self.tenant = world["tenant"]
            self.clients = {c["client_id"].lower(): c for c in world["clients"]}
            self.subscriptions = {s["id"].lower(): s for s in world["subscriptions"]}
            self.models = {m["id"].lower(): m for m in world["models"]}
            self.vm_sizes = world["vm_sizes"]
            self.regions = world["regions"]
            now = self.clock.now()
            self.resource_groups: dict[tuple[str, str], dict[str, Any]] = {}
            self.workspaces: dict[tuple[str, str, str], Workspace] = {}
            for sub in world["subscriptions"]:
                for rg in sub.get("resource_groups", []):
                    self.resource_groups[(sub["id"].lower(), rg["name"].lower())] = rg
                for w in sub.get("workspaces", []):
                    ws = Workspace(
                        subscription=sub["id"],
                        resource_group=w["resource_group"],
                        name=w["name"],
                        location=w["location"].lower(),
                        tags=dict(w.get("tags", {})),
                        created=now,
                        workspace_id=new_guid(self.rng),
                    )
                    self.workspaces[ws.key] = ws
            self.marketplace: dict[tuple[Any, ...], MarketplaceSubscription] = {}
            self.saas: dict[tuple[str, str, str], SaasResource] = {}
            self.serverless: dict[tuple[Any, ...], ServerlessEndpoint] = {}
            self.online: dict[tuple[Any, ...], OnlineEndpoint] = {}
            self.operations: dict[str, Operation] = {}
            self.usage: list[UsageRow] = []
            # Deleted deployments, kept for the VM hours they ran.
            self.deployment_history: list[Deployment] = []
            self.vaults = {
                v.lower(): v for v in world.get("keyvaults", []) if v.lower() in self.vault_urls
            }
            self.secrets: dict[tuple[str, str], list[SecretVersion]] = {}
            self.deleted_secrets: dict[tuple[str, str], dict[str, Any]] = {}
            self.requests.clear()
            self.faults.clear()
            self.qpu_spent: deque[tuple[float, str, int]] = deque()
            self.buckets: dict[tuple[str, ...], list[float]] = {}
            self.dataplane_windows: dict[str, deque[tuple[float, int]]] = {}

    def duration(self, kind: str) -> float:
        return float(self.world["durations"].get(kind, 0))

    # --- lookups ------------------------------------------------------------------------------
    def subscription(self, sub: str) -> dict[str, Any]:
        found = self.subscriptions.get(sub.lower())
        if found is None:
            raise ArmError(
                404, "SubscriptionNotFound", f"The subscription '{sub}' could not be found."
            )
        return found

    def resource_group(self, sub: str, rg: str) -> dict[str, Any]:
        self.subscription(sub)
        found = self.resource_groups.get((sub.lower(), rg.lower()))
        if found is None:
            raise ArmError(
                404, "ResourceGroupNotFound", f"Resource group '{rg}' could not be found."
            )
        return found

    def workspace(self, sub: str, rg: str, name: str) -> Workspace:
        self.resource_group(sub, rg)
        found = self.workspaces.get((self.subscription(sub)["id"], rg.lower(), name.lower()))
        if found is None:
            raise not_found(f"{MLS}/workspaces", name, rg)
        return found

    def model(self, model_id: str) -> tuple[dict[str, Any] | None, str | None]:
        """The catalog model a registry model id names, and the version it pins (if any)."""
        match = re.match(
            r"^azureml://registries/([^/]+)/models/([^/]+)(?:/(versions|labels)/([^/]+))?$",
            model_id or "",
            re.IGNORECASE,
        )
        if not match:
            return None, None
        base = f"azureml://registries/{match.group(1)}/models/{match.group(2)}".lower()
        version = (
            match.group(4) if match.group(3) and match.group(3).lower() == "versions" else None
        )
        return self.models.get(base), version

    def core_quota(self, sub: str, region: str) -> dict[str, int]:
        quotas = self.subscription(sub).get("core_quotas", {})
        return {**quotas.get("*", {}), **quotas.get(region.lower(), {})}

    def cores_used(
        self, sub: str, region: str, *, skip: Deployment | None = None
    ) -> dict[str, int]:
        used: dict[str, int] = {}
        for ep in self.online.values():
            if ep.workspace.subscription != sub or ep.workspace.location != region:
                continue
            for dep in ep.deployments.values():
                if dep is skip or not dep.holds_cores():
                    continue
                size = self.vm_sizes.get(dep.instance_type, {})
                family = size.get("family", "")
                used[family] = used.get(family, 0) + size.get("vCPUs", 0) * dep.capacity
        return used

    # --- long-running operations --------------------------------------------------------------
    def operation_start(
        self,
        *,
        subscription: str,
        location: str,
        kind: str,
        apply: Callable[[], dict[str, str] | None] | None,
        result_status: int = 200,
        target: str = "",
        seconds: float | None = None,
    ) -> Operation:
        now = self.clock.now()
        op = Operation(
            id=new_guid(self.rng),
            subscription=subscription,
            location=location,
            kind=kind,
            started=now,
            due=now + timedelta(seconds=self.duration(kind) if seconds is None else seconds),
            apply=apply,
            result_status=result_status,
            target=target,
        )
        self.operations[op.id] = op
        return op

    def settle(self) -> None:
        """Complete every operation whose time has come, oldest first."""
        now = self.clock.now()
        due = sorted(
            (op for op in self.operations.values() if op.status == "InProgress" and op.due <= now),
            key=lambda op: op.due,
        )
        for op in due:
            error = op.apply() if op.apply else None
            op.status, op.error = ("Failed", error) if error else ("Succeeded", None)

    # --- names unique per region --------------------------------------------------------------
    def endpoint_name_holder(self, kind: str, region: str, name: str) -> Any:
        """The endpoint of this kind (serverless or online), in any subscription, already
        called `name` in the region: its name is part of a regional host name."""
        endpoints = self.serverless if kind == "serverless" else self.online
        for ep in endpoints.values():
            if ep.workspace.location == region and ep.name.lower() == name.lower():
                return ep
        return None
