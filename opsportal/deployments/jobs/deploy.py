"""The deploy job: subscribe (serverless) or check quota (managed), create the endpoint, create
the deployment (managed), publish the keys, smoke-test. Each step is recorded and checkpointed
(JobRecorder.phase), so a job re-run after a lost worker continues where it stopped, and a
cancel stops at the next step boundary."""

from dataclasses import dataclass

from django.utils import timezone

from opsportal.dataplane.probe import endpoint_probe
from opsportal.deployments.jobs.steps import (
    compute_refresh,
    endpoint_find,
    endpoint_row_refresh,
    endpoint_track,
    wait_provisioned,
)
from opsportal.inventory.models import (
    Endpoint,
    MarketplaceSubscription,
    Offering,
    ProvisioningState,
    Workspace,
)
from opsportal.jobs.models import Job
from opsportal.jobs.services import JobRecorder, runner
from opsportal.keys.models import KeySlot
from opsportal.keys.store import secret_current, secret_publish, secret_value
from opsportal.providers.base import (
    EndpointInfo,
    ErrorCode,
    MarketplaceStatus,
    ProviderError,
    WorkspaceBackend,
)


@dataclass
class Deploy:
    """What one deploy job works on, read once from its parameters."""

    rec: JobRecorder
    workspace: Workspace
    offering: Offering
    provider: WorkspaceBackend
    name: str
    kind: str

    @classmethod
    def load(cls, rec: JobRecorder) -> "Deploy":
        p = rec.job.params
        workspace = Workspace.objects.select_related("account").get(pk=p["workspace_id"])
        return cls(
            rec=rec,
            workspace=workspace,
            offering=Offering.objects.get(slug=p["offering"]),
            provider=rec.provider(workspace),
            name=p["name"],
            kind=p["kind"],
        )

    @property
    def params(self) -> dict:
        return self.rec.job.params

    @property
    def managed(self) -> bool:
        return self.kind == Endpoint.Kind.MANAGED

    @property
    def new_endpoint(self) -> bool:
        return not self.managed or self.params.get("endpoint_mode", "new") == "new"

    @property
    def deployment(self) -> str:
        return self.params.get("deployment_name") or "default"

    def endpoint(self) -> Endpoint:
        return Endpoint.objects.alive().get(workspace=self.workspace, name=self.name)


@runner(Job.Kind.DEPLOY)
def deploy_run(rec: JobRecorder) -> None:
    d = Deploy.load(rec)
    rec.step(
        2,
        f"Deploying {d.offering.display_name} as {Endpoint.Kind(d.kind).label.lower()} endpoint "
        f"{d.name} in {d.workspace.name} ({d.workspace.region}); correlation id "
        f"{rec.job.correlation_id}",
    )
    if not d.managed:
        rec.phase("subscribed", 5, "Checking the Marketplace subscription", lambda: subscribe(d))
    if d.managed:
        rec.phase(
            "quota_checked",
            12,
            "Checking the VM size and the core quota with the provider",
            lambda: quota_check(d),
        )
    if d.new_endpoint:
        rec.phase("endpoint_created", 20, f"Creating endpoint {d.name}", lambda: endpoint_make(d))
    info = wait_provisioned(rec, d.provider, d.name, start=25, end=60)
    endpoint_row_refresh(provider=d.provider, workspace=d.workspace, info=info, offering=d.offering)
    rec.step(60, f"{d.name} is provisioned")
    if rec.job.endpoint_id is None:
        rec.attach(endpoint=d.endpoint())
    if d.managed:
        rec.phase(
            "deployment_created",
            62,
            f"Creating deployment {d.deployment} ({d.params['vm_sku']} x "
            f"{d.params['instance_count']}, {d.params['traffic_percent']}% of traffic)",
            lambda: deployment_make(d, info),
        )
        info = wait_provisioned(rec, d.provider, d.name, start=64, end=78, deployment=d.deployment)
        endpoint_row_refresh(
            provider=d.provider, workspace=d.workspace, info=info, offering=d.offering
        )
        compute_refresh(rec, d.provider, d.workspace)
        rec.step(78, f"Deployment {d.deployment} is provisioned")
    rec.phase("keys_published", 80, "Reading the keys into the secret store", lambda: keys_take(d))
    smoke_test(d, info)


def subscribe(d: Deploy) -> None:
    """Subscribe the workspace to the Marketplace offer, unless it is (continue to deploy)."""
    rec, slug, offering = d.rec, d.offering.slug, d.offering
    status = rec.call("Marketplace", d.provider.subscription_status, offering_slug=slug)
    if status == MarketplaceStatus.SUBSCRIBED:
        rec.step(10, "Already subscribed: continuing to deploy")
        billing_record(d)
        return
    if status is not None:
        raise ProviderError(
            f"{d.workspace.name}'s Marketplace subscription to {offering.display_name} is "
            f"{status}, and Azure does not deploy on it. "
            + {
                MarketplaceStatus.SUSPENDED: "Azure suspends a subscription whose payment "
                "failed: fix the Azure subscription's payment method, then retry.",
                MarketplaceStatus.UNSUBSCRIBED: "Delete it in Azure ML studio (or the portal), "
                "then deploy again to subscribe anew.",
            }.get(status, "It is still being set up: retry in a few minutes."),
            code=ErrorCode.SUBSCRIPTION_INACTIVE,
        )
    if not d.params.get("terms_accepted"):
        raise ProviderError(
            f"{d.workspace.name} is not subscribed to {offering.display_name} and the "
            "Marketplace terms were not accepted. Deploy again from the wizard and accept them.",
            code=ErrorCode.TERMS_NOT_ACCEPTED,
        )
    rec.step(7, f"Subscribing {d.workspace.name} to {offering.display_name} (terms accepted)")
    state = rec.call("Subscribing", d.provider.subscription_create, offering_slug=slug)
    if state not in (ProvisioningState.SUCCEEDED, MarketplaceSubscription.State.SUCCEEDED):
        raise ProviderError(
            f"The Marketplace subscription ended {state}. Check the subscription's payment "
            "method and your permissions, then retry.",
            code=ErrorCode.SUBSCRIPTION_FAILED,
        )
    MarketplaceSubscription.objects.alive().update_or_create(
        workspace=d.workspace,
        offering=offering,
        defaults={"name": slug, "state": MarketplaceSubscription.State.SUCCEEDED},
    )
    rec.audit("marketplace.subscribe", detail=f"terms accepted for {offering.display_name}")
    billing_record(d)
    rec.step(10, "Subscribed")


def billing_record(d: Deploy) -> None:
    """Note on the subscription's row what Azure bills it on, so its cost maps to it before
    the next sync runs."""
    try:
        billing = d.rec.call(
            "Billing resource", d.provider.subscription_billing, offering_slug=d.offering.slug
        )
    except ProviderError as exc:
        d.rec.note(f"The billing resource was not read ({exc.message}); the next sync reads it.")
        return
    if billing is None:
        return
    s = billing.subscription
    MarketplaceSubscription.objects.alive().update_or_create(
        workspace=d.workspace,
        offering=d.offering,
        defaults={
            "name": s.name,
            "state": {"Subscribed": "Succeeded"}.get(s.status, s.status),
            "azure_resource_id": s.resource_id,
            "publisher_id": s.publisher_id,
            "offer_id": s.offer_id,
            "plan_id": s.plan_id,
            **({"saas_resource_id": billing.saas_resource_id} if billing.saas_resource_id else {}),
        },
    )


def quota_check(d: Deploy) -> None:
    """The VM size is offered in the region and its cores fit the family's free quota."""
    p = d.params
    sizes = {t.name: t for t in d.rec.call("VM sizes", d.provider.instance_types)}
    size = sizes.get(p["vm_sku"])
    if size is None:
        raise ProviderError(
            f"{p['vm_sku']} is not offered in {d.workspace.region}; choose one of "
            f"{', '.join(sorted(sizes)) or 'none'}.",
            code=ErrorCode.INVALID,
        )
    usage = {u.family: u for u in d.rec.call("Core quota", d.provider.core_usage)}
    needed = size.cores * p["instance_count"]
    quota = usage.get(size.family)
    if quota is not None and needed > quota.headroom:
        raise ProviderError(
            f"Not enough cores: {needed} {size.family} cores needed, {quota.headroom} of "
            f"{quota.limit} free in {d.workspace.region}. Choose fewer instances or a smaller "
            "size, or ask for more quota.",
            code=ErrorCode.QUOTA_EXCEEDED,
        )
    d.rec.step(15, f"{needed} cores needed, within quota")


def endpoint_make(d: Deploy) -> None:
    """Create the endpoint (tracked in the inventory first), or find the one an earlier
    attempt created."""
    rec = d.rec
    row = endpoint_track(
        provider=d.provider, workspace=d.workspace, name=d.name, kind=d.kind, offering=d.offering
    )
    if row is not None:
        rec.attach(endpoint=row)
    existing = endpoint_find(rec, d.provider, d.name)
    if existing is not None and existing.kind != d.kind:
        raise ProviderError(
            f"An endpoint called {d.name} already exists and is {existing.kind}; choose another "
            "name.",
            code=ErrorCode.CONFLICT,
        )
    if existing is None:
        try:
            rec.call(
                f"Creating {d.name}",
                d.provider.endpoint_create,
                name=d.name,
                kind=d.kind,
                offering_slug=d.offering.slug,
            )
        except ProviderError as exc:
            if row is not None and endpoint_find(rec, d.provider, d.name) is None:
                # Refused: the row written to track the create stands for nothing.
                Endpoint.objects.filter(pk=row.pk).update(
                    deleted_at=timezone.now(),
                    provisioning_state=ProvisioningState.FAILED,
                    status_message=exc.message,
                )
                rec.step(
                    rec.job.progress,
                    f"Refused: {exc.message} Nothing was created; the console no longer tracks "
                    f"{d.name}.",
                )
            raise
    else:
        rec.step(22, f"{d.name} exists already (an earlier attempt created it): continuing")
    rec.attach(endpoint=d.endpoint())
    rec.checkpoint(
        "cancel_note",
        f"Cancelled after {d.name} was created: it exists and is tracked in the inventory. "
        "Delete it, or retry this job to finish the deployment.",
    )
    rec.audit("endpoint.create", detail=f"{d.kind} endpoint of {d.offering.display_name}")


def deployment_make(d: Deploy, info: EndpointInfo) -> None:
    p = d.params
    if d.deployment not in {dep.name for dep in info.deployments}:
        d.rec.call(
            f"Creating deployment {d.deployment}",
            d.provider.deployment_create,
            endpoint_name=d.name,
            name=d.deployment,
            instance_type=p["vm_sku"],
            instance_count=p["instance_count"],
            traffic_percent=p["traffic_percent"],
            offering_slug=d.offering.slug,
            data_collection=bool(p.get("data_collection")),
        )
    d.rec.audit("deployment.create", detail=f"{d.deployment} on {p['vm_sku']}")


def keys_take(d: Deploy) -> None:
    keys = d.rec.call("Reading the keys", d.provider.keys_get, name=d.name)
    endpoint = d.endpoint()
    # Secondary first: the newest version (the primary) is the one consumers take.
    secret_publish(endpoint=endpoint, slot=KeySlot.SECONDARY, value=keys.secondary, job=d.rec.job)
    current = secret_publish(
        endpoint=endpoint, slot=KeySlot.PRIMARY, value=keys.primary, job=d.rec.job
    )
    d.rec.audit("key.publish", detail=f"initial keys, current version {current.version}")


def smoke_test(d: Deploy, info: EndpointInfo) -> None:
    rec, endpoint = d.rec, d.endpoint()
    rec.step(85, "Smoke test: one short call with the published key")
    current = secret_current(endpoint=endpoint)
    if current is None:
        raise ProviderError("No key was published for the smoke test.", code=ErrorCode.NO_KEYS)
    uri = info.scoring_uri or endpoint.scoring_uri
    result = rec.call(
        "Smoke test",
        endpoint_probe,
        scoring_uri=uri,
        key=secret_value(current),
        routes=d.offering.routes,
    )
    rec.step(95, f"The endpoint answered in {result.ms:.0f} ms: {result.text!r}")
    rec.step(100, f"Deployed. Scoring URI: {uri}")
    rec.audit("endpoint.deploy", detail=f"smoke test answered in {result.ms:.0f} ms")


# --- delete ---------------------------------------------------------------------------------
