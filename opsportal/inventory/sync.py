"""Azure inventory sync: every subscription, workspace, Marketplace subscription and endpoint the
credential can see, pulled into the database (the read model).

Reads run concurrently across workspaces; every HTTP request first takes a token from its
subscription's bucket (ARM's read limits: about 250 burst, 25/s refill per subscription).
Database writes stay on the calling thread. A failing workspace is recorded and the rest go
on; a resource that vanished is marked deleted, not dropped; running it twice changes nothing.
"""

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

from azure.core.pipeline.policies import HeadersPolicy, SansIOHTTPPolicy
from django.db import transaction
from django.utils import timezone

from opsportal.inventory.models import (
    CloudAccount,
    ComputeQuota,
    MarketplaceSubscription,
    Offering,
    Provider,
    VmSize,
    Workspace,
)
from opsportal.inventory.services import endpoint_row_store
from opsportal.providers.azure import (
    AzureProvider,
    EndpointInfo,
    MarketplaceSubscriptionInfo,
    offering_slugs_by_model,
    subscriptions_list,
    workspaces_list,
)
from opsportal.providers.base import ProviderError

log = logging.getLogger(__name__)
Progress = Callable[[int, str], None]


class TokenBucket:
    """Requests per second with a burst, shared by every thread reading one subscription."""

    def __init__(self, *, capacity: float = 250, refill_per_s: float = 25) -> None:
        self.capacity, self.refill = capacity, refill_per_s
        self.tokens = capacity
        self.updated = time.monotonic()
        self.lock = threading.Lock()
        self.taken = 0
        self.waited_s = 0.0

    def take(self) -> None:
        while True:
            with self.lock:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.refill)
                self.updated = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    self.taken += 1
                    return
                wait = (1 - self.tokens) / self.refill
                self.waited_s += wait
            time.sleep(wait)


class BucketPolicy(SansIOHTTPPolicy):
    """Takes a token before each HTTP request the SDK sends, retries included."""

    def __init__(self, bucket: TokenBucket) -> None:
        self.bucket = bucket

    def on_request(self, request: Any) -> None:
        self.bucket.take()


@dataclass
class WorkspaceResult:
    workspace_id: int
    name: str
    subscriptions: list[MarketplaceSubscriptionInfo] = field(default_factory=list)
    endpoints: list[EndpointInfo] = field(default_factory=list)
    error: str = ""


@dataclass
class SyncReport:
    subscriptions: int = 0
    workspaces_ok: int = 0
    workspaces_failed: list[tuple[str, str]] = field(default_factory=list)
    endpoints: int = 0
    marked_deleted: int = 0
    requests: int = 0
    throttle_wait_s: float = 0.0
    lines: list[str] = field(default_factory=list)


def configured_subscription_ids() -> list[str] | None:
    raw = os.environ.get("AZURE_SUBSCRIPTION_IDS", "").strip()
    return [s.strip() for s in raw.split(",") if s.strip()] or None


def inventory_sync_azure(
    *,
    credential: Any,
    subscription_ids: list[str] | None = None,
    client_kwargs: dict[str, Any] | None = None,
    progress: Progress | None = None,
    max_workers: int = 16,
    bucket: Callable[[], TokenBucket] = TokenBucket,
    correlation_id: str | None = None,
) -> SyncReport:
    report = SyncReport()
    say = progress or (lambda pct, msg: None)
    kwargs = dict(client_kwargs or {})
    # The job's correlation id travels as Azure's client request id on every request.
    tagging = [HeadersPolicy({"x-ms-client-request-id": correlation_id})] if correlation_id else []
    kwargs["per_call_policies"] = tagging
    now = timezone.now()

    if subscription_ids:
        wanted, known = subscription_ids, {}
    else:
        found_subs = subscriptions_list(credential, **kwargs)
        wanted = [s.subscription_id for s in found_subs]
        known = {s.subscription_id: s for s in found_subs}
    buckets = {sub_id: bucket() for sub_id in wanted}
    jobs: list[tuple[Workspace, dict[str, Any]]] = []
    for sub_id in wanted:
        info = known.get(sub_id)
        account, _ = CloudAccount.objects.update_or_create(
            provider=Provider.AZURE,
            subscription_id=sub_id,
            defaults={
                "display_name": info.display_name if info else sub_id,
                **({"tenant_id": info.tenant_id} if info else {}),
            },
        )
        report.subscriptions += 1
        sub_kwargs = {**kwargs, "per_call_policies": [*tagging, BucketPolicy(buckets[sub_id])]}
        try:
            found = workspaces_list(credential, sub_id, **sub_kwargs)
        except ProviderError as exc:
            CloudAccount.objects.filter(pk=account.pk).update(
                status=CloudAccount.Status.ERROR, last_error=exc.message, last_sync_at=now
            )
            report.lines.append(f"{account.display_name}: {exc.message}")
            continue
        CloudAccount.objects.filter(pk=account.pk).update(
            status=CloudAccount.Status.OK, last_error="", last_sync_at=now
        )
        seen = []
        for w in found:
            workspace, _ = Workspace.objects.update_or_create(
                account=account,
                resource_group=w.resource_group,
                name=w.name,
                defaults={
                    "region": w.region,
                    "provider": Provider.AZURE,
                    "azure_resource_id": w.resource_id,
                    "deleted_at": None,
                },
            )
            workspace.account = account  # cached: worker threads must not query
            seen.append(workspace.pk)
            jobs.append((workspace, sub_kwargs))
        report.marked_deleted += (
            Workspace.objects.filter(account=account, deleted_at__isnull=True)
            .exclude(pk__in=seen)
            .update(deleted_at=now)
        )
        say(5, f"{account.display_name}: {len(found)} workspaces")

    done = 0
    jobs = _round_robin(jobs)
    slugs = offering_slugs_by_model()
    catalog = list(Offering.objects.exclude(registry_model_id=""))  # read once per sync
    # VM sizes and core quota are per subscription and region: read once per pair, through the
    # first workspace there (the deploy wizard's pre-flight reads them from the database).
    regions: dict[tuple[int, str], tuple[Workspace, dict[str, Any]]] = {}
    for ws, kw in jobs:
        regions.setdefault((ws.account_id, ws.region), (ws, kw))
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        compute = [pool.submit(_read_compute, ws, credential, kw) for ws, kw in regions.values()]
        futures = [pool.submit(_read_workspace, ws, credential, kw, slugs) for ws, kw in jobs]
        for future in as_completed(compute):
            _write_compute(future.result(), report)
        for future in as_completed(futures):
            result = future.result()
            done += 1
            _write_workspace(result, report, now, catalog)
            counts = f"{len(result.endpoints)} endpoints, {len(result.subscriptions)} subscriptions"
            say(5 + int(90 * done / max(1, len(jobs))), f"{result.name}: {result.error or counts}")
    report.requests = sum(b.taken for b in buckets.values())
    report.throttle_wait_s = sum(b.waited_s for b in buckets.values())
    return report


def _round_robin(jobs: list[tuple[Workspace, dict[str, Any]]]) -> list[tuple[Workspace, Any]]:
    """Interleave subscriptions, so the pool spreads over every subscription's bucket instead
    of draining one subscription's budget while the others wait."""
    by_sub: dict[int, list[tuple[Workspace, Any]]] = {}
    for job in jobs:
        by_sub.setdefault(job[0].account_id, []).append(job)
    lanes = list(by_sub.values())
    return [job for round_ in itertools.zip_longest(*lanes) for job in round_ if job]


def _read_workspace(
    workspace: Workspace, credential: Any, kwargs: dict[str, Any], slugs: dict[str, str]
) -> WorkspaceResult:
    """Runs on a worker thread: Azure reads only, no database access at all."""
    result = WorkspaceResult(workspace.pk, workspace.name)
    try:
        provider = AzureProvider(
            workspace, credential=credential, client_kwargs=kwargs, offering_slugs=slugs
        )
        result.subscriptions = provider.marketplace_subscriptions_list()
        result.endpoints = provider.serverless_endpoints_list() + provider.online_endpoints_list()
    except ProviderError as exc:
        result.error = exc.message
    except Exception as exc:  # one broken workspace must not stop the sync
        log.exception("reading workspace %s failed", workspace.name)
        result.error = f"Unexpected error: {type(exc).__name__}"
    return result


@dataclass
class ComputeResult:
    account_id: int
    region: str
    sizes: list[Any] = field(default_factory=list)
    usage: list[Any] = field(default_factory=list)
    error: str = ""


def _read_compute(workspace: Workspace, credential: Any, kwargs: dict[str, Any]) -> ComputeResult:
    """Runs on a worker thread: Azure reads only."""
    result = ComputeResult(workspace.account_id, workspace.region)
    try:
        provider = AzureProvider(
            workspace, credential=credential, client_kwargs=kwargs, offering_slugs={}
        )
        result.sizes = provider.instance_types()
        result.usage = provider.core_usage()
    except ProviderError as exc:
        result.error = exc.message
    except Exception as exc:
        log.exception("reading compute of %s failed", workspace.region)
        result.error = f"Unexpected error: {type(exc).__name__}"
    return result


@transaction.atomic
def _write_compute(result: ComputeResult, report: SyncReport) -> None:
    if result.error:
        report.lines.append(f"VM sizes and core quota of {result.region}: {result.error}")
        return
    for size in result.sizes:
        VmSize.objects.update_or_create(
            account_id=result.account_id,
            region=result.region,
            name=size.name,
            defaults={"cores": size.cores, "family": size.family, "memory_gb": size.memory_gb},
        )
    for usage in result.usage:
        ComputeQuota.objects.update_or_create(
            account_id=result.account_id,
            region=result.region,
            family=usage.family,
            defaults={"used": max(0, usage.used), "limit": max(0, usage.limit)},
        )
    report.lines.append(
        f"{result.region}: {len(result.sizes)} VM sizes, {len(result.usage)} core quotas"
    )


@transaction.atomic
def _write_workspace(
    result: WorkspaceResult, report: SyncReport, now: Any, catalog: list[Offering]
) -> None:
    workspace = Workspace.objects.get(pk=result.workspace_id)
    if result.error:
        Workspace.objects.filter(pk=workspace.pk).update(sync_error=result.error)
        report.workspaces_failed.append((workspace.name, result.error))
        report.lines.append(f"{workspace.name}: FAILED: {result.error}")
        return
    offerings = {o.registry_model_id.lower(): o for o in catalog}
    by_slug = {o.slug: o for o in catalog}
    sub_names = []
    for s in result.subscriptions:
        offering = offerings.get(s.model_id.lower())
        if offering is None:
            report.lines.append(
                f"{workspace.name}: Marketplace subscription {s.name} is for "
                f"{s.model_id}, which the catalog does not list; not recorded."
            )
            continue
        state = {"Subscribed": "Succeeded"}.get(s.status, s.status or "Pending")
        MarketplaceSubscription.objects.update_or_create(
            workspace=workspace,
            offering=offering,
            deleted_at__isnull=True,
            defaults={"name": s.name, "state": state, "saas_resource_id": s.resource_id},
        )
        sub_names.append(s.name)
    report.marked_deleted += (
        workspace.marketplace_subscriptions.filter(deleted_at__isnull=True)
        .exclude(name__in=sub_names)
        .update(deleted_at=now)
    )

    names = []
    for e in result.endpoints:
        names.append(e.name)
        endpoint_row_store(
            workspace=workspace, info=e, offering=by_slug.get(e.offering_slug), now=now
        )
    report.endpoints += len(names)
    report.marked_deleted += (
        workspace.endpoints.filter(deleted_at__isnull=True)
        .exclude(name__in=names)
        .update(deleted_at=now)
    )
    Workspace.objects.filter(pk=workspace.pk).update(sync_error="", last_sync_at=now)
    report.workspaces_ok += 1
    report.lines.append(
        f"{workspace.name}: {len(names)} endpoints, {len(sub_names)} Marketplace subscriptions"
    )


def azure_sync_job_run(
    *, job: Any, credential: Any, how: str = "", client_kwargs: dict[str, Any] | None = None
) -> SyncReport | None:
    """One sync as a job: progress and a line per workspace in the job's log."""
    from opsportal.jobs.services import JobRecorder

    recorder = JobRecorder(job)
    recorder.start()
    recorder.step(
        1, f"Signing in to Azure{f' ({how})' if how else ''}; correlation id {job.correlation_id}"
    )
    try:
        report = inventory_sync_azure(
            credential=credential,
            subscription_ids=configured_subscription_ids(),
            client_kwargs=client_kwargs,
            progress=recorder.step,
            correlation_id=str(job.correlation_id),
        )
    except ProviderError as exc:
        recorder.finish(error=exc.message)
        return None
    for line in report.lines:
        recorder.step(99, line)
    recorder.step(
        100,
        f"{report.subscriptions} subscriptions, {report.workspaces_ok} "
        f"workspaces synced, {len(report.workspaces_failed)} failed, "
        f"{report.endpoints} endpoints, {report.marked_deleted} marked deleted, "
        f"{report.requests} Azure requests",
    )
    failed = "; ".join(f"{name}: {err}" for name, err in report.workspaces_failed)
    recorder.finish(error=f"Some workspaces failed: {failed}" if failed else "")
    return report
