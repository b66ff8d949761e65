"""The deploy and delete jobs. Each step is recorded, and what is done is checkpointed, so a job
re-run after a lost worker continues; a cancel stops at the next step boundary."""

import time
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from opsportal.deployments.probe import endpoint_probe
from opsportal.inventory.models import (
    Endpoint,
    MarketplaceSubscription,
    Offering,
    Provider,
    ProvisioningState,
    Workspace,
)
from opsportal.inventory.services import endpoint_row_store
from opsportal.jobs.services import JobRecorder, runner
from opsportal.keys.models import KeySlot, RotationSchedule
from opsportal.keys.store import secret_current, secret_publish, secret_value, secrets_forget
from opsportal.providers import for_workspace
from opsportal.providers.base import EndpointInfo, ProviderError

TERMINAL_BAD = (ProvisioningState.FAILED, ProvisioningState.CANCELED)


def provider_for(rec: JobRecorder, workspace: Workspace) -> Any:
    # The correlation id travels to Azure as the client request id of every call.
    return for_workspace(workspace, correlation_id=str(rec.job.correlation_id))


def endpoint_find(rec: JobRecorder, provider: Any, name: str) -> EndpointInfo | None:
    try:
        return rec.call(f"Reading {name}", provider.endpoint_get, name)
    except ProviderError as exc:
        if exc.code == "NotFound":
            return None
        raise


def endpoint_row_refresh(
    *, workspace: Workspace, info: EndpointInfo, offering: Offering | None
) -> Endpoint:
    """The inventory row of an endpoint as the provider describes it now."""
    if workspace.provider == Provider.LOCAL:
        # The local runtime writes its rows itself.
        return Endpoint.objects.get(workspace=workspace, name=info.name, deleted_at__isnull=True)
    return endpoint_row_store(workspace=workspace, info=info, offering=offering, now=timezone.now())


def endpoint_track(
    *, workspace: Workspace, name: str, kind: str, offering: Offering, content_safety: bool
) -> Endpoint | None:
    """Before asking Azure, write the row the console will follow: a worker that dies during
    the call leaves a tracked endpoint in Creating, never an untracked one."""
    if workspace.provider == Provider.LOCAL:
        return None  # the local provider's create writes the row
    try:
        with transaction.atomic():
            row, _ = Endpoint.objects.get_or_create(
                workspace=workspace,
                name=name,
                deleted_at__isnull=True,
                defaults={
                    "kind": kind,
                    "offering": offering,
                    "region": workspace.region,
                    "provisioning_state": ProvisioningState.CREATING,
                    "content_safety": content_safety,
                },
            )
    except IntegrityError:
        raise ProviderError(
            f"Another endpoint called {name} appeared in {workspace.region} meanwhile; choose "
            "another name.",
            code="Conflict",
        ) from None
    return row


def wait_provisioned(
    rec: JobRecorder,
    provider: Any,
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
            raise ProviderError(f"{name} disappeared while it was being created.", code="NotFound")
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
                code="ProvisioningFailed",
            )
        if time.monotonic() > deadline:
            raise ProviderError(
                f"{name} was still {state} after {settings.OPSPORTAL_DEPLOY_TIMEOUT:.0f} s. It "
                "is tracked in the inventory; retry this job to keep waiting.",
                retryable=False,
                code="Timeout",
            )
        elapsed = time.monotonic() - began
        progress = start + int((end - start) * min(0.95, elapsed / 120))
        if state != last_state:
            rec.step(progress, f"Provisioning: {state}")
            last_state = state
        else:
            rec.progress(progress)
        rec.boundary()
        time.sleep(settings.OPSPORTAL_JOB_POLL_SECONDS)


@runner("deploy")
def deploy_run(rec: JobRecorder) -> None:
    p = rec.job.params
    workspace = Workspace.objects.select_related("account").get(pk=p["workspace_id"])
    offering = Offering.objects.get(slug=p["offering"])
    provider = provider_for(rec, workspace)
    name, kind = p["name"], p["kind"]
    managed = kind == Endpoint.Kind.MANAGED
    new_endpoint = not managed or p.get("endpoint_mode", "new") == "new"
    rec.step(
        2,
        f"Deploying {offering.display_name} as {Endpoint.Kind(kind).label.lower()} endpoint "
        f"{name} in {workspace.name} ({workspace.region}); correlation id "
        f"{rec.job.correlation_id}",
    )

    if kind == Endpoint.Kind.SERVERLESS and not rec.done("subscribed"):
        rec.boundary()
        rec.step(5, "Checking the Marketplace subscription")
        slug = offering.slug
        if rec.call("Marketplace", provider.subscription_exists, offering_slug=slug):
            rec.step(10, "Already subscribed: continuing to deploy")
        else:
            if not p.get("terms_accepted"):
                raise ProviderError(
                    f"{workspace.name} is not subscribed to {offering.display_name} and the "
                    "Marketplace terms were not accepted. Deploy again from the wizard and accept "
                    "them.",
                    code="TermsNotAccepted",
                )
            rec.step(7, f"Subscribing {workspace.name} to {offering.display_name} (terms accepted)")
            state = rec.call("Subscribing", provider.subscription_create, offering_slug=slug)
            if state not in (ProvisioningState.SUCCEEDED, MarketplaceSubscription.State.SUCCEEDED):
                raise ProviderError(
                    f"The Marketplace subscription ended {state}. Check the subscription's "
                    "payment method and your permissions, then retry.",
                    code="SubscriptionFailed",
                )
            MarketplaceSubscription.objects.get_or_create(
                workspace=workspace,
                offering=offering,
                deleted_at__isnull=True,
                defaults={"name": slug, "state": MarketplaceSubscription.State.SUCCEEDED},
            )
            rec.audit("marketplace.subscribe", detail=f"terms accepted for {offering.display_name}")
            rec.step(10, "Subscribed")
        rec.checkpoint("subscribed")

    if managed and not rec.done("quota_checked"):
        rec.boundary()
        rec.step(12, "Checking the VM size and the core quota with the provider")
        sizes = {t.name: t for t in rec.call("VM sizes", provider.instance_types)}
        size = sizes.get(p["vm_sku"])
        if size is None:
            raise ProviderError(
                f"{p['vm_sku']} is not offered in {workspace.region}; choose one of "
                f"{', '.join(sorted(sizes)) or 'none'}.",
                code="InvalidInstanceType",
            )
        usage = {u.family: u for u in rec.call("Core quota", provider.core_usage)}
        needed = size.cores * p["instance_count"]
        quota = usage.get(size.family)
        if quota is not None and needed > quota.headroom:
            raise ProviderError(
                f"Not enough cores: {needed} {size.family} cores needed, {quota.headroom} of "
                f"{quota.limit} free in {workspace.region}. Choose fewer instances or a smaller "
                "size, or ask for more quota.",
                code="QuotaExceeded",
            )
        rec.step(15, f"{needed} cores needed, within quota")
        rec.checkpoint("quota_checked")

    if new_endpoint and not rec.done("endpoint_created"):
        rec.boundary()
        rec.step(20, f"Creating endpoint {name}")
        content_safety = bool(p.get("content_safety", True))
        row = endpoint_track(
            workspace=workspace,
            name=name,
            kind=kind,
            offering=offering,
            content_safety=content_safety,
        )
        if row is not None:
            rec.attach(endpoint=row)
        existing = endpoint_find(rec, provider, name)
        if existing is not None and existing.kind != kind:
            raise ProviderError(
                f"An endpoint called {name} already exists and is {existing.kind}; choose "
                "another name.",
                code="Conflict",
            )
        if existing is None:
            rec.call(
                f"Creating {name}",
                provider.endpoint_create,
                name=name,
                kind=kind,
                offering_slug=offering.slug,
                content_safety=content_safety,
            )
        else:
            rec.step(22, f"{name} exists already (an earlier attempt created it): continuing")
        rec.attach(
            endpoint=Endpoint.objects.get(workspace=workspace, name=name, deleted_at__isnull=True)
        )
        rec.checkpoint(
            "cancel_note",
            f"Cancelled after {name} was created: it exists and is tracked in the inventory. "
            "Delete it, or retry this job to finish the deployment.",
        )
        rec.checkpoint("endpoint_created")
        rec.audit("endpoint.create", detail=f"{kind} endpoint of {offering.display_name}")

    info = wait_provisioned(rec, provider, name, start=25, end=60)
    endpoint_row_refresh(workspace=workspace, info=info, offering=offering)
    rec.step(60, f"{name} is provisioned")
    if rec.job.endpoint_id is None:
        rec.attach(
            endpoint=Endpoint.objects.get(workspace=workspace, name=name, deleted_at__isnull=True)
        )

    if managed:
        deployment = p.get("deployment_name") or "default"
        if not rec.done("deployment_created"):
            rec.boundary()
            if deployment not in {d.name for d in info.deployments}:
                rec.step(
                    62,
                    f"Creating deployment {deployment} ({p['vm_sku']} x "
                    f"{p['instance_count']}, {p['traffic_percent']}% of traffic)",
                )
                rec.call(
                    f"Creating deployment {deployment}",
                    provider.deployment_create,
                    endpoint_name=name,
                    name=deployment,
                    instance_type=p["vm_sku"],
                    instance_count=p["instance_count"],
                    traffic_percent=p["traffic_percent"],
                )
            rec.checkpoint("deployment_created")
            rec.audit("deployment.create", detail=f"{deployment} on {p['vm_sku']}")
        info = wait_provisioned(rec, provider, name, start=64, end=78, deployment=deployment)
        endpoint_row_refresh(workspace=workspace, info=info, offering=offering)
        rec.step(78, f"Deployment {deployment} is provisioned")

    endpoint = Endpoint.objects.get(workspace=workspace, name=name, deleted_at__isnull=True)
    if not rec.done("keys_published"):
        rec.boundary()
        rec.step(80, "Reading the keys into the secret store")
        keys = rec.call("Reading the keys", provider.keys_get, name=name)
        # Secondary first: the newest version (the primary) is the one consumers take.
        secret_publish(endpoint=endpoint, slot=KeySlot.SECONDARY, value=keys.secondary, job=rec.job)
        current = secret_publish(
            endpoint=endpoint, slot=KeySlot.PRIMARY, value=keys.primary, job=rec.job
        )
        rec.checkpoint("keys_published")
        rec.audit("key.publish", detail=f"initial keys, current version {current.version}")

    rec.step(85, "Smoke test: one short chat call with the published key")
    current = secret_current(endpoint=endpoint)
    assert current is not None
    result = rec.call(
        "Smoke test",
        endpoint_probe,
        scoring_uri=info.scoring_uri or endpoint.scoring_uri,
        key=secret_value(current),
        routes=offering.routes,
    )
    rec.step(95, f"The endpoint answered in {result.ms:.0f} ms: {result.text!r}")
    rec.step(100, f"Deployed. Scoring URI: {info.scoring_uri or endpoint.scoring_uri}")
    rec.audit("endpoint.deploy", detail=f"smoke test answered in {result.ms:.0f} ms")


@runner("delete")
def delete_run(rec: JobRecorder) -> None:
    p = rec.job.params
    workspace = Workspace.objects.select_related("account").get(pk=p["workspace_id"])
    name = p["name"]
    provider = provider_for(rec, workspace)
    row = Endpoint.objects.filter(pk=p.get("endpoint_id")).first()
    if not rec.done("delete_requested"):
        rec.boundary()
        rec.step(10, f"Deleting {name} from {workspace.name}")
        try:
            rec.call(f"Deleting {name}", provider.endpoint_delete, name=name)
        except ProviderError as exc:
            if exc.code != "NotFound":
                raise
            rec.step(20, f"{name} is already gone at the provider")
        rec.checkpoint(
            "cancel_note",
            f"Cancelled after deletion of {name} was asked: the provider deletes it anyway; the "
            "next inventory sync removes its row.",
        )
        rec.checkpoint("delete_requested")
        rec.audit("endpoint.delete.requested")
    # Deletion is under way at the provider and cannot be undone: no cancel point from here.
    deadline = time.monotonic() + settings.OPSPORTAL_DEPLOY_TIMEOUT
    rec.step(40, "Waiting until the endpoint is gone")
    while endpoint_find(rec, provider, name) is not None:
        if time.monotonic() > deadline:
            raise ProviderError(
                f"{name} still exists after {settings.OPSPORTAL_DEPLOY_TIMEOUT:.0f} s; retry "
                "this job to keep waiting.",
                code="Timeout",
            )
        time.sleep(settings.OPSPORTAL_JOB_POLL_SECONDS)
    now = timezone.now()
    if row is not None:
        with transaction.atomic():
            Endpoint.objects.filter(pk=row.pk, deleted_at__isnull=True).update(
                deleted_at=now, provisioning_state=ProvisioningState.DELETING, updated_at=now
            )
            row.deployments.filter(deleted_at__isnull=True).update(deleted_at=now)
            RotationSchedule.objects.filter(endpoint=row).update(enabled=False, next_run_at=None)
        rec.step(80, "Forgetting its keys")
        secrets_forget(endpoint=row)
    rec.step(100, f"{name} is deleted")
    rec.audit("endpoint.delete")
