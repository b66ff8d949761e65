"""The local runtime as a provider: the same operations as Azure, on this machine.

The runtime's desired state is the database itself: creating an endpoint writes its row in
state Creating with two fresh keys; the runtime process (opsportal.runtime.control) loads the
model and moves it to Succeeded, exactly as a caller would wait on ARM.
"""

import secrets

from django.db import IntegrityError, transaction
from django.db.models import Sum
from django.utils import timezone

from opsportal.core.crypto import decrypt, digest, encrypt
from opsportal.core.models import alive
from opsportal.inventory.models import (
    Endpoint,
    ManagedDeployment,
    MarketplaceSubscription,
    Offering,
    Provider,
    ProvisioningState,
    Workspace,
)
from opsportal.providers.base import (
    ENDPOINT_NAME_RE,
    ComputeSnapshot,
    CoreUsage,
    DeploymentInfo,
    EndpointInfo,
    EndpointKeys,
    ErrorCode,
    InstanceType,
    MarketplaceStatus,
    ProviderError,
)
from opsportal.runtime.control import INSTANCE_TYPES, machine_cores, scoring_uri
from opsportal.runtime.models import KeySlot, LocalKey

CORE_FAMILY = "local"
LOCAL_STATUS = {
    MarketplaceSubscription.State.SUCCEEDED: MarketplaceStatus.SUBSCRIBED,
    MarketplaceSubscription.State.SUSPENDED: MarketplaceStatus.SUSPENDED,
    MarketplaceSubscription.State.UNSUBSCRIBED: MarketplaceStatus.UNSUBSCRIBED,
}


def new_key() -> str:
    return secrets.token_urlsafe(32)


def _deployment_info(dep: ManagedDeployment) -> DeploymentInfo:
    return DeploymentInfo(
        name=dep.name,
        instance_type=dep.vm_sku,
        instance_count=dep.instance_count,
        traffic_percent=dep.traffic_percent,
        state=dep.state,
    )


def _info(ep: Endpoint) -> EndpointInfo:
    deployments = tuple(_deployment_info(d) for d in ep.deployments.all() if d.deleted_at is None)
    return EndpointInfo(
        name=ep.name,
        kind=ep.kind,
        provisioning_state=ep.provisioning_state,
        scoring_uri=ep.scoring_uri,
        offering_slug=ep.offering.slug if ep.offering else "",
        status_message=ep.status_message,
        deployments=deployments,
    )


class LocalProvider:
    # The runtime's desired state is the inventory: this provider writes the rows itself.
    owns_inventory = True

    def __init__(self, workspace: Workspace, **options: object) -> None:
        if workspace.provider != Provider.LOCAL:
            raise ProviderError(f"{workspace.name} is not a local workspace.")
        self.workspace = workspace

    # --- reading ---------------------------------------------------------------------------
    def _endpoints(self):  # type: ignore[no-untyped-def]
        return (
            Endpoint.objects.alive()
            .filter(workspace=self.workspace)
            .select_related("offering")
            .prefetch_related("deployments")
        )

    def _endpoint(self, name: str) -> Endpoint:
        ep = self._endpoints().filter(name=name).first()
        if ep is None:
            raise ProviderError(
                f"No endpoint named {name!r} in {self.workspace.name}.", code=ErrorCode.NOT_FOUND
            )
        return ep

    def endpoints_list(self) -> list[EndpointInfo]:
        return [_info(ep) for ep in self._endpoints().order_by("name")]

    def endpoint_get(self, name: str) -> EndpointInfo:
        return _info(self._endpoint(name))

    def _offering(self, slug: str) -> Offering:
        offering = Offering.objects.filter(slug=slug).first()
        if offering is None:
            raise ProviderError(f"No offering {slug!r} in the catalog.", code=ErrorCode.NOT_FOUND)
        if offering.provider_scope != Provider.LOCAL:
            raise ProviderError(
                f"{offering.display_name} runs only on Azure; the local runtime serves the "
                "local offerings of the catalog.",
                code=ErrorCode.MODEL_NOT_LOCAL,
            )
        return offering

    # --- the Marketplace analog: accepting the model's licence -----------------------------
    def subscription_create(self, *, offering_slug: str) -> str:
        offering = self._offering(offering_slug)
        sub, _ = MarketplaceSubscription.objects.alive().get_or_create(
            workspace=self.workspace,
            offering=offering,
            defaults={"name": offering.slug, "state": MarketplaceSubscription.State.SUCCEEDED},
        )
        return sub.state

    def subscription_status(self, *, offering_slug: str) -> MarketplaceStatus | None:
        state = (
            MarketplaceSubscription.objects.alive()
            .filter(workspace=self.workspace, offering__slug=offering_slug)
            .values_list("state", flat=True)
            .first()
        )
        if state is None:
            return None
        return LOCAL_STATUS.get(state, MarketplaceStatus.PENDING)

    def subscription_billing(self, *, offering_slug: str) -> None:
        return None  # local meters are the gateway's usage rows, not a billing resource

    # --- endpoints -------------------------------------------------------------------------
    def endpoint_create(self, *, name: str, kind: str, offering_slug: str) -> EndpointInfo:
        if not ENDPOINT_NAME_RE.match(name):
            raise ProviderError(
                f"{name!r} is not a valid endpoint name: 3 to 32 letters, digits or hyphens, "
                "starting with a letter and not ending with a hyphen.",
                code=ErrorCode.INVALID_NAME,
            )
        offering = self._offering(offering_slug)
        if kind == Endpoint.Kind.SERVERLESS:
            if not offering.serverless_allowed_in(self.workspace.region):
                raise ProviderError(
                    f"{offering.display_name} is not offered as serverless in this workspace.",
                    code=ErrorCode.NOT_IN_REGION,
                )
            if (
                self.subscription_status(offering_slug=offering_slug)
                != MarketplaceStatus.SUBSCRIBED
            ):
                raise ProviderError(
                    f"Accept the licence of {offering.display_name} for this workspace first "
                    "(the Marketplace subscription step).",
                    code=ErrorCode.SUBSCRIPTION_REQUIRED,
                )
        elif not offering.managed_compute:
            raise ProviderError(
                f"{offering.display_name} cannot run on managed compute.",
                code=ErrorCode.NOT_SUPPORTED,
            )
        try:
            with transaction.atomic():
                ep = Endpoint.objects.create(
                    workspace=self.workspace,
                    kind=kind,
                    name=name,
                    offering=offering,
                    region=self.workspace.region,
                    scoring_uri=scoring_uri(name),
                    provisioning_state=ProvisioningState.CREATING,
                    # Serverless rows always claim it (a constraint); no classifier runs here,
                    # which the pages say (Endpoint.content_safety_note).
                    content_safety=kind == Endpoint.Kind.SERVERLESS,
                )
                for slot in KeySlot:
                    key = new_key()
                    LocalKey.objects.create(
                        endpoint=ep, slot=slot, encrypted=encrypt(key), digest=digest(key)
                    )
        except IntegrityError:
            existing = self._endpoints().filter(offering=offering, kind=kind).first()
            if kind == Endpoint.Kind.SERVERLESS and existing is not None:
                raise ProviderError(
                    f"{offering.display_name} already has a serverless endpoint in this "
                    f"workspace ({existing.name}): one per model per workspace.",
                    code=ErrorCode.CONFLICT,
                ) from None
            raise ProviderError(f"The name {name!r} is taken.", code=ErrorCode.CONFLICT) from None
        return self.endpoint_get(name)

    def endpoint_delete(self, *, name: str) -> None:
        ep = self._endpoint(name)
        with transaction.atomic():
            # Keys go at once: nothing is served from the moment deletion is asked.
            LocalKey.objects.filter(endpoint=ep).delete()
            Endpoint.objects.filter(pk=ep.pk).update(
                provisioning_state=ProvisioningState.DELETING, updated_at=timezone.now()
            )

    # --- managed deployments ---------------------------------------------------------------
    def instance_types(self) -> list[InstanceType]:
        return [
            InstanceType(
                name=name, cores=size["threads"], memory_gb=size["n_ctx"] / 4096, family=CORE_FAMILY
            )
            for name, size in INSTANCE_TYPES.items()
        ]

    def core_usage(self) -> list[CoreUsage]:
        used = 0
        for dep in (
            ManagedDeployment.objects.alive()
            .filter(alive("endpoint"), endpoint__workspace__provider=Provider.LOCAL)
            .values("vm_sku")
            .annotate(n=Sum("instance_count"))
        ):
            used += INSTANCE_TYPES.get(dep["vm_sku"], {"threads": 0})["threads"] * dep["n"]
        return [
            CoreUsage(
                region=self.workspace.region, family=CORE_FAMILY, used=used, limit=machine_cores()
            )
        ]

    def compute_snapshot(self) -> ComputeSnapshot:
        """This machine's instance types and cores, live."""
        return ComputeSnapshot(
            sizes={t.name: (t.cores, t.family) for t in self.instance_types()},
            usage={u.family: (u.used, u.limit) for u in self.core_usage()},
            known=True,
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
        ep = self._endpoint(endpoint_name)
        if ep.kind != Endpoint.Kind.MANAGED:
            raise ProviderError(
                "Deployments belong to managed endpoints only.", code=ErrorCode.INVALID
            )
        size = INSTANCE_TYPES.get(instance_type)
        if size is None:
            raise ProviderError(
                f"Unknown local instance type {instance_type!r}; choose one "
                f"of {', '.join(INSTANCE_TYPES)}.",
                code=ErrorCode.INVALID,
            )
        if instance_count < 1:
            raise ProviderError("instance_count must be at least 1.", code=ErrorCode.INVALID)
        if not 0 <= traffic_percent <= 100:
            raise ProviderError("traffic must be between 0 and 100 %.", code=ErrorCode.INVALID)
        needed = size["threads"] * instance_count
        usage = self.core_usage()[0]
        if needed > usage.headroom:
            raise ProviderError(
                f"Not enough cores: this deployment needs {needed}, {usage.headroom} of "
                f"{usage.limit} are free on this machine.",
                code=ErrorCode.QUOTA_EXCEEDED,
            )
        others = ep.deployments.alive().aggregate(t=Sum("traffic_percent"))
        if (others["t"] or 0) + traffic_percent > 100:
            raise ProviderError(
                "Traffic across an endpoint's deployments cannot exceed 100 %.",
                code=ErrorCode.INVALID,
            )
        try:
            dep = ManagedDeployment.objects.create(
                endpoint=ep,
                name=name,
                vm_sku=instance_type,
                instance_count=instance_count,
                traffic_percent=traffic_percent,
                state=ProvisioningState.CREATING,
            )
        except IntegrityError:
            raise ProviderError(
                f"A deployment named {name!r} exists.", code=ErrorCode.CONFLICT
            ) from None
        Endpoint.objects.filter(pk=ep.pk).update(provisioning_state=ProvisioningState.UPDATING)
        return _deployment_info(dep)

    def _deployment(self, ep: Endpoint, name: str) -> ManagedDeployment:
        dep = ep.deployments.alive().filter(name=name).first()
        if dep is None:
            raise ProviderError(
                f"No deployment {name!r} under {ep.name}.", code=ErrorCode.NOT_FOUND
            )
        return dep

    def deployment_scale(
        self, *, endpoint_name: str, name: str, instance_count: int
    ) -> DeploymentInfo:
        ep = self._endpoint(endpoint_name)
        dep = self._deployment(ep, name)
        if instance_count < 1:
            raise ProviderError("instance_count must be at least 1.", code=ErrorCode.INVALID)
        size = INSTANCE_TYPES.get(dep.vm_sku, {"threads": 0})
        extra = size["threads"] * (instance_count - dep.instance_count)
        usage = self.core_usage()[0]
        if extra > usage.headroom:
            raise ProviderError(
                f"Not enough cores: {instance_count} instances of {dep.vm_sku} need {extra} more, "
                f"{usage.headroom} of {usage.limit} are free on this machine.",
                code=ErrorCode.QUOTA_EXCEEDED,
            )
        with transaction.atomic():
            ManagedDeployment.objects.filter(pk=dep.pk).update(
                instance_count=instance_count,
                state=ProvisioningState.UPDATING,
                updated_at=timezone.now(),
            )
            Endpoint.objects.filter(pk=ep.pk).update(provisioning_state=ProvisioningState.UPDATING)
        dep.refresh_from_db()
        return _deployment_info(dep)

    def traffic_set(self, *, endpoint_name: str, traffic: dict[str, int]) -> dict[str, int]:
        ep = self._endpoint(endpoint_name)
        live = {d.name: d for d in ep.deployments.alive()}
        unknown = sorted(set(traffic) - set(live))
        if unknown:
            raise ProviderError(
                f"{endpoint_name} has no deployment {unknown[0]!r}.", code=ErrorCode.NOT_FOUND
            )
        wanted = {name: int(traffic.get(name, 0)) for name in live}
        if any(not 0 <= v <= 100 for v in wanted.values()) or sum(wanted.values()) not in (0, 100):
            raise ProviderError(
                "Traffic across an endpoint's deployments must add up to 100 % (or 0 %).",
                code=ErrorCode.INVALID,
            )
        with transaction.atomic():
            for name, percent in wanted.items():
                ManagedDeployment.objects.filter(pk=live[name].pk).update(
                    traffic_percent=percent, updated_at=timezone.now()
                )
        return wanted

    def deployment_delete(self, *, endpoint_name: str, name: str) -> None:
        ep = self._endpoint(endpoint_name)
        updated = (
            ep.deployments.alive()
            .filter(name=name)
            .update(state=ProvisioningState.DELETING, traffic_percent=0)
        )
        if not updated:
            raise ProviderError(
                f"No deployment {name!r} under {endpoint_name}.", code=ErrorCode.NOT_FOUND
            )

    # --- keys ------------------------------------------------------------------------------
    def keys_get(self, *, name: str) -> EndpointKeys:
        # One query: the test-chat relay asks for keys at the start of every answer.
        rows = (
            LocalKey.objects.filter(
                endpoint__workspace=self.workspace,
                endpoint__name=name,
            )
            .filter(alive("endpoint"))
            .values_list("slot", "encrypted")
        )
        keys = {slot: decrypt(encrypted) for slot, encrypted in rows}
        if set(keys) != {KeySlot.PRIMARY, KeySlot.SECONDARY}:
            self._endpoint(name)  # says "no such endpoint" when that is the reason
            raise ProviderError(f"{name} has no keys.", code=ErrorCode.NOT_FOUND)
        return EndpointKeys(primary=keys[KeySlot.PRIMARY], secondary=keys[KeySlot.SECONDARY])

    def key_regenerate(self, *, name: str, slot: str) -> EndpointKeys:
        if slot not in KeySlot.values:
            raise ProviderError(
                "The key to regenerate is 'primary' or 'secondary'.", code=ErrorCode.INVALID
            )
        ep = self._endpoint(name)
        key = new_key()
        updated = LocalKey.objects.filter(endpoint=ep, slot=slot).update(
            encrypted=encrypt(key), digest=digest(key), rotated_at=timezone.now()
        )
        if not updated:
            raise ProviderError(f"{name} has no {slot} key.", code=ErrorCode.NOT_FOUND)
        return self.keys_get(name=name)
