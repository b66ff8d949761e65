"""The deploy and delete jobs, and the changes to a managed endpoint's deployments (scale,
traffic, remove one). Each is a short list of steps; each step is recorded and checkpointed
(JobRecorder.phase), so a job re-run after a lost worker continues where it stopped, and a
cancel stops at the next step boundary."""

import time
from dataclasses import dataclass

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from opsportal.dataplane.probe import endpoint_probe
from opsportal.inventory.models import (
    Endpoint,
    MarketplaceSubscription,
    Offering,
    ProvisioningState,
    Workspace,
)
from opsportal.inventory.services import compute_quota_store, endpoint_row_store
from opsportal.jobs.models import Job
from opsportal.jobs.services import JobRecorder, runner
from opsportal.keys.models import KeySlot, RotationSchedule
from opsportal.keys.store import secret_current, secret_publish, secret_value, secrets_forget
from opsportal.providers.base import (
    EndpointInfo,
    ErrorCode,
    MarketplaceStatus,
    ProviderError,
    WorkspaceBackend,
)

TERMINAL_BAD = (ProvisioningState.FAILED, ProvisioningState.CANCELED)


def endpoint_find(rec: JobRecorder, provider: WorkspaceBackend, name: str) -> EndpointInfo | None:
    try:
        return rec.call(f"Reading {name}", provider.endpoint_get, name)
    except ProviderError as exc:
        if exc.code == ErrorCode.NOT_FOUND:
            return None
        raise


def endpoint_row_refresh(
    *, provider: WorkspaceBackend, workspace: Workspace, info: EndpointInfo, offering: Offering
) -> Endpoint:
    """The inventory row of an endpoint as the provider describes it now."""
    if not provider.owns_inventory:
        endpoint_row_store(workspace=workspace, info=info, offering=offering, now=timezone.now())
    return Endpoint.objects.alive().get(workspace=workspace, name=info.name)


def endpoint_track(
    *, provider: WorkspaceBackend, workspace: Workspace, name: str, kind: str, offering: Offering
) -> Endpoint | None:
    """Before asking Azure, write the row the console will follow: a worker that dies during
    the call leaves a tracked endpoint in Creating, never an untracked one."""
    if provider.owns_inventory:
        return None  # the provider's create writes the row
    try:
        with transaction.atomic():
            row, _ = Endpoint.objects.alive().get_or_create(
                workspace=workspace,
                name=name,
                defaults={
                    "kind": kind,
                    "offering": offering,
                    "region": workspace.region,
                    "provisioning_state": ProvisioningState.CREATING,
                    # Azure applies content safety to every serverless endpoint, never (through
                    # this API) to managed compute.
                    "content_safety": kind == Endpoint.Kind.SERVERLESS,
                },
            )
    except IntegrityError:
        raise ProviderError(
            f"Another endpoint called {name} appeared in {workspace.region} meanwhile; choose "
            "another name.",
            code=ErrorCode.CONFLICT,
        ) from None
    return row


def compute_refresh(rec: JobRecorder, provider: WorkspaceBackend, workspace: Workspace) -> None:
    """After instances came or went: the region's core usage as the provider counts it now,
    so the next pre-flight does not read the sync's older snapshot."""
    if provider.owns_inventory:
        return  # the local runtime's cores are read live
    try:
        usage = rec.call("Core usage", provider.core_usage)
    except ProviderError as exc:
        rec.note(f"Core usage not refreshed ({exc.message}); the next sync will.")
        return
    compute_quota_store(account_id=workspace.account_id, region=workspace.region, usage=usage)


def wait_provisioned(
    rec: JobRecorder,
    provider: WorkspaceBackend,
    name: str,
    *,
    start: int,
    end: int,
    deployment: str = "",
) -> EndpointInfo:
    """Poll until the endpoint (or one of its deployments) is Succeeded; progress moves from
    `start` towards `end`; cancelling here leaves the endpoint as the provider has it."""
    deadline = time.monotonic() + settings.OPSPORTAL_DEPLOY_TIMEOUT
    began = time.monotonic()
    last_state = ""
    while True:
        info = endpoint_find(rec, provider, name)
        if info is None:
            raise ProviderError(
                f"{name} disappeared while it was being changed.", code=ErrorCode.NOT_FOUND
            )
        state = info.provisioning_state
        if deployment:
            found = [d for d in info.deployments if d.name == deployment]
            state = found[0].state if found else ProvisioningState.CREATING
        if state == ProvisioningState.SUCCEEDED:
            return info
        if state in TERMINAL_BAD:
            reason = info.status_message or "no reason given"
            raise ProviderError(
                f"{name}{'/' + deployment if deployment else ''} ended {state}: {reason}. "
                "Delete it, fix the cause, and deploy again.",
                code=ErrorCode.PROVISIONING_FAILED,
            )
        if time.monotonic() > deadline:
            raise ProviderError(
                f"{name} was still {state} after {settings.OPSPORTAL_DEPLOY_TIMEOUT:.0f} s. It "
                "is tracked in the inventory; retry this job to keep waiting.",
                code=ErrorCode.TIMEOUT,
            )
        progress = start + int((end - start) * min(0.95, (time.monotonic() - began) / 120))
        if state != last_state:
            rec.step(progress, f"Provisioning: {state}")
            last_state = state
        else:
            rec.progress(progress)
        rec.boundary()
        time.sleep(settings.OPSPORTAL_JOB_POLL_SECONDS)


# --- deploy ---------------------------------------------------------------------------------


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


@runner(Job.Kind.DELETE)
def delete_run(rec: JobRecorder) -> None:
    p = rec.job.params
    workspace = Workspace.objects.select_related("account").get(pk=p["workspace_id"])
    name = p["name"]
    provider = rec.provider(workspace)
    row = Endpoint.objects.filter(pk=p.get("endpoint_id")).first()
    rec.phase(
        "delete_requested",
        10,
        f"Deleting {name} from {workspace.name}",
        lambda: delete_ask(rec, provider, name),
    )
    # Deletion is under way at the provider and cannot be undone: no cancel point from here.
    rec.step(40, "Waiting until the endpoint is gone")
    gone_wait(rec, provider, name)
    if row is not None:
        now = timezone.now()
        with transaction.atomic():
            Endpoint.objects.alive().filter(pk=row.pk).update(
                deleted_at=now, provisioning_state=ProvisioningState.DELETING, updated_at=now
            )
            row.deployments.alive().update(deleted_at=now)
            RotationSchedule.objects.filter(endpoint=row).update(enabled=False, next_run_at=None)
        rec.step(80, "Forgetting its keys")
        secrets_forget(endpoint=row)
    if row is not None and row.kind == Endpoint.Kind.MANAGED:
        compute_refresh(rec, provider, workspace)
    rec.step(100, f"{name} is deleted")
    rec.audit("endpoint.delete")


def delete_ask(rec: JobRecorder, provider: WorkspaceBackend, name: str) -> None:
    try:
        rec.call(f"Deleting {name}", provider.endpoint_delete, name=name)
    except ProviderError as exc:
        if exc.code != ErrorCode.NOT_FOUND:
            raise
        rec.step(20, f"{name} is already gone at the provider")
    rec.checkpoint(
        "cancel_note",
        f"Cancelled after deletion of {name} was asked: the provider deletes it anyway; the next "
        "inventory sync removes its row.",
    )


def gone_wait(rec: JobRecorder, provider: WorkspaceBackend, name: str) -> None:
    deadline = time.monotonic() + settings.OPSPORTAL_DEPLOY_TIMEOUT
    while endpoint_find(rec, provider, name) is not None:
        if time.monotonic() > deadline:
            raise ProviderError(
                f"{name} still exists after {settings.OPSPORTAL_DEPLOY_TIMEOUT:.0f} s; retry this "
                "job to keep waiting.",
                code=ErrorCode.TIMEOUT,
            )
        time.sleep(settings.OPSPORTAL_JOB_POLL_SECONDS)


# --- changes to a managed endpoint's deployments ------------------------------------------------


@dataclass
class Change:
    rec: JobRecorder
    endpoint: Endpoint
    provider: WorkspaceBackend

    @classmethod
    def load(cls, rec: JobRecorder) -> "Change":
        endpoint = (
            Endpoint.objects.select_related("workspace", "workspace__account", "offering")
            .alive()
            .filter(pk=rec.job.params["endpoint_id"])
            .first()
        )
        if endpoint is None or endpoint.kind != Endpoint.Kind.MANAGED:
            raise ProviderError(
                "The managed endpoint was deleted before this change could run.",
                code=ErrorCode.NOT_FOUND,
            )
        return cls(rec=rec, endpoint=endpoint, provider=rec.provider(endpoint.workspace))

    def refresh(self, info: EndpointInfo) -> None:
        endpoint_row_refresh(
            provider=self.provider,
            workspace=self.endpoint.workspace,
            info=info,
            offering=self.endpoint.offering,
        )


@runner(Job.Kind.SCALE)
def scale_run(rec: JobRecorder) -> None:
    c = Change.load(rec)
    name, count = rec.job.params["deployment"], rec.job.params["instance_count"]
    where = f"{c.endpoint.name}/{name}"
    rec.phase(
        "quota_checked",
        5,
        "Checking the core quota with the provider",
        lambda: scale_quota_check(c, name, count),
    )
    rec.phase(
        "scaled",
        10,
        f"Scaling {where} to {count} instances",
        lambda: rec.call(
            f"Scaling {where}",
            c.provider.deployment_scale,
            endpoint_name=c.endpoint.name,
            name=name,
            instance_count=count,
        ),
    )
    info = wait_provisioned(rec, c.provider, c.endpoint.name, start=20, end=90, deployment=name)
    c.refresh(info)
    compute_refresh(rec, c.provider, c.endpoint.workspace)
    rec.step(100, f"{where} runs {count} instances")
    rec.audit("deployment.scale", detail=f"{name}: {count} instances")


def scale_quota_check(c: Change, name: str, count: int) -> None:
    """The extra instances' cores fit the family's free quota (asked of the provider, which
    counts what runs now)."""
    rec = c.rec
    info = endpoint_find(rec, c.provider, c.endpoint.name)
    current = next((d for d in (info.deployments if info else ()) if d.name == name), None)
    if current is None:
        raise ProviderError(
            f"{c.endpoint.name} has no deployment {name}.", code=ErrorCode.NOT_FOUND
        )
    sizes = {t.name: t for t in rec.call("VM sizes", c.provider.instance_types)}
    size = sizes.get(current.instance_type)
    extra = (count - current.instance_count) * (size.cores if size else 0)
    if size is None or extra <= 0:
        return
    usage = {u.family: u for u in rec.call("Core quota", c.provider.core_usage)}
    quota = usage.get(size.family)
    if quota is not None and extra > quota.headroom:
        raise ProviderError(
            f"Not enough cores: {count} x {size.name} needs {extra} more {size.family} cores, "
            f"{quota.headroom} of {quota.limit} are free in {c.endpoint.region}. Choose fewer "
            "instances, or ask for more quota.",
            code=ErrorCode.QUOTA_EXCEEDED,
        )
    rec.step(8, f"{extra} more {size.family} cores needed, within quota")


@runner(Job.Kind.TRAFFIC)
def traffic_run(rec: JobRecorder) -> None:
    c = Change.load(rec)
    traffic = {k: int(v) for k, v in rec.job.params["traffic"].items()}
    split = ", ".join(f"{k} {v}%" for k, v in sorted(traffic.items()))
    rec.phase(
        "traffic_set",
        10,
        f"Setting the traffic of {c.endpoint.name}: {split}",
        lambda: rec.call(
            "Setting the traffic",
            c.provider.traffic_set,
            endpoint_name=c.endpoint.name,
            traffic=traffic,
        ),
    )
    info = wait_provisioned(rec, c.provider, c.endpoint.name, start=20, end=90)
    c.refresh(info)
    rec.step(100, f"Traffic of {c.endpoint.name}: {split}")
    rec.audit("endpoint.traffic", detail=split)


@runner(Job.Kind.DEPLOYMENT_DELETE)
def deployment_delete_run(rec: JobRecorder) -> None:
    c = Change.load(rec)
    name = rec.job.params["deployment"]
    where = f"{c.endpoint.name}/{name}"

    def remove() -> None:
        try:
            rec.call(
                f"Removing {where}",
                c.provider.deployment_delete,
                endpoint_name=c.endpoint.name,
                name=name,
            )
        except ProviderError as exc:
            if exc.code != ErrorCode.NOT_FOUND:
                raise
            rec.step(20, f"{where} is already gone at the provider")

    rec.phase("deployment_deleted", 10, f"Removing deployment {where}", remove)
    rec.step(30, f"Waiting until {where} is gone")
    deadline = time.monotonic() + settings.OPSPORTAL_DEPLOY_TIMEOUT
    while True:
        info = endpoint_find(rec, c.provider, c.endpoint.name)
        if info is None:
            raise ProviderError(f"{c.endpoint.name} disappeared.", code=ErrorCode.NOT_FOUND)
        if name not in {dep.name for dep in info.deployments}:
            break
        if time.monotonic() > deadline:
            raise ProviderError(
                f"{where} still exists; retry this job to keep waiting.", code=ErrorCode.TIMEOUT
            )
        time.sleep(settings.OPSPORTAL_JOB_POLL_SECONDS)
    c.refresh(info)
    compute_refresh(rec, c.provider, c.endpoint.workspace)
    rec.step(100, f"{where} is removed")
    rec.audit("deployment.delete", detail=name)
