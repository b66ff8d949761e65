"""Steps the deployment jobs share: finding an endpoint at the provider, keeping its inventory
row in step, waiting for a provisioning state or for something to be gone."""

import time
from collections.abc import Callable

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from opsportal.inventory.models import (
    Endpoint,
    Offering,
    ProvisioningState,
    Workspace,
)
from opsportal.inventory.services import compute_quota_store, endpoint_row_store
from opsportal.jobs.services import JobRecorder
from opsportal.providers.base import (
    EndpointInfo,
    ErrorCode,
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


def call_unless_gone(
    rec: JobRecorder, subject: str, fn: Callable[..., object], progress: int, **kwargs: object
) -> None:
    """Ask the provider to remove `subject`; already gone is as good as removed."""
    try:
        rec.call(f"Removing {subject}", fn, **kwargs)
    except ProviderError as exc:
        if exc.code != ErrorCode.NOT_FOUND:
            raise
        rec.step(progress, f"{subject} is already gone at the provider")


def wait_gone(
    rec: JobRecorder, provider: WorkspaceBackend, name: str, *, deployment: str = ""
) -> EndpointInfo | None:
    """Poll until the endpoint (or only its deployment) is gone at the provider; returns the
    endpoint as it is then (None when the endpoint itself went)."""
    where = f"{name}/{deployment}" if deployment else name
    deadline = time.monotonic() + settings.OPSPORTAL_DEPLOY_TIMEOUT
    while True:
        info = endpoint_find(rec, provider, name)
        if info is None:
            if deployment:
                raise ProviderError(f"{name} disappeared.", code=ErrorCode.NOT_FOUND)
            return None
        if deployment and deployment not in {d.name for d in info.deployments}:
            return info
        if time.monotonic() > deadline:
            raise ProviderError(
                f"{where} still exists after {settings.OPSPORTAL_DEPLOY_TIMEOUT:.0f} s; retry "
                "this job to keep waiting.",
                code=ErrorCode.TIMEOUT,
            )
        time.sleep(settings.OPSPORTAL_JOB_POLL_SECONDS)
