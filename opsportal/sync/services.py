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

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from opsportal.accounts.models import Team
from opsportal.inventory.models import (
    CloudAccount,
    MarketplaceSubscription,
    Offering,
    Provider,
    VmSize,
    Workspace,
)
from opsportal.inventory.services import compute_quota_store, endpoint_row_store
from opsportal.providers.azure import AzureProvider
from opsportal.providers.azure_arm import (
    BucketPolicy,
    ResourceGroupInfo,
    WorkspaceInfo,
    client_policies,
    offering_slugs_by_model,
    resource_group_read,
    subscriptions_list,
    unversioned,
    workspaces_list,
)
from opsportal.providers.base import EndpointInfo, MarketplaceSubscriptionInfo, ProviderError

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
    # The job's correlation id travels as ARM's x-ms-correlation-request-id on every request.
    tagging = client_policies(correlation_id).get("per_call_policies", [])
    kwargs["per_call_policies"] = tagging
    now = timezone.now()

    found_subs = subscriptions_list(credential, **kwargs)
    known = {s.subscription_id: s for s in found_subs}
    wanted = subscription_ids or list(known)
    buckets = {sub_id: bucket() for sub_id in wanted}
    jobs: list[tuple[Workspace, dict[str, Any]]] = []
    teams = {t.slug.lower(): t for t in Team.objects.all()} | {
        t.name.lower(): t for t in Team.objects.all()
    }
    for sub_id in wanted:
        info = known.get(sub_id)
        account, _ = CloudAccount.objects.update_or_create(
            provider=Provider.AZURE,
            subscription_id=sub_id,
            defaults={
                "display_name": info.display_name if info else sub_id,
                **({"tenant_id": info.tenant_id, "quota_id": info.quota_id} if info else {}),
            },
        )
        report.subscriptions += 1
        if info is None:
            message = (
                f"Subscription {sub_id} (AZURE_SUBSCRIPTION_IDS) is not visible to the "
                "credential: give it the Reader role there, or remove the id."
            )
            CloudAccount.objects.filter(pk=account.pk).update(
                status=CloudAccount.Status.ERROR, last_error=message, last_sync_at=now
            )
            report.lines.append(message)
            continue
        sub_kwargs = {**kwargs, "per_call_policies": [*tagging, BucketPolicy(buckets[sub_id].take)]}
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
            workspace = _workspace_store(account, w, teams, report)
            workspace.account = account  # cached: worker threads must not query
            seen.append(workspace.pk)
            jobs.append((workspace, sub_kwargs))
        report.marked_deleted += (
            Workspace.objects.alive()
            .filter(account=account)
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
    groups: dict[tuple[int, str], tuple[Workspace, dict[str, Any]]] = {}
    for ws, kw in jobs:
        regions.setdefault((ws.account_id, ws.region), (ws, kw))
        groups.setdefault((ws.account_id, ws.resource_group.lower()), (ws, kw))
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        compute = [pool.submit(_read_compute, ws, credential, kw) for ws, kw in regions.values()]
        group_reads = [pool.submit(_read_group, ws, credential, kw) for ws, kw in groups.values()]
        futures = [pool.submit(_read_workspace, ws, credential, kw, slugs) for ws, kw in jobs]
        for future in as_completed(compute):
            _write_compute(future.result(), report)
        for future in as_completed(futures):
            result = future.result()
            done += 1
            _write_workspace(result, report, now, catalog)
            counts = f"{len(result.endpoints)} endpoints, {len(result.subscriptions)} subscriptions"
            say(5 + int(90 * done / max(1, len(jobs))), f"{result.name}: {result.error or counts}")
        # After the workspaces: their Marketplace subscriptions are there to be matched.
        for future in as_completed(group_reads):
            _write_group(future.result(), report, teams)
    report.requests = sum(b.taken for b in buckets.values())
    report.throttle_wait_s = sum(b.waited_s for b in buckets.values())
    return report


def _workspace_store(
    account: CloudAccount, w: WorkspaceInfo, teams: dict[str, Team], report: SyncReport
) -> Workspace:
    """The workspace's row; its team from the Azure tag named by OPSPORTAL_TEAM_TAG (a team's
    slug or name), unless a superuser assigned one in the console."""
    workspace, _ = Workspace.objects.update_or_create(
        account=account,
        resource_group=w.resource_group,
        name=w.name,
        defaults={
            "region": w.region,
            "provider": Provider.AZURE,
            "azure_resource_id": w.resource_id,
            "tags": w.tags,
            "deleted_at": None,
        },
    )
    tagged = {k.lower(): v for k, v in w.tags.items()}.get(settings.OPSPORTAL_TEAM_TAG.lower())
    if workspace.team_source == Workspace.TeamSource.MANUAL or tagged is None:
        return workspace  # by hand; or the resource group's tag decides (_write_group)
    team = teams.get(tagged.strip().lower())
    if tagged and team is None:
        report.lines.append(
            f"{w.name}: tag {settings.OPSPORTAL_TEAM_TAG}={tagged} names no team of the console; "
            "create the team, or assign the workspace on its page."
        )
    source = Workspace.TeamSource.TAG if team else Workspace.TeamSource.NONE
    if (workspace.team_id, workspace.team_source) != (team.pk if team else None, source):
        Workspace.objects.filter(pk=workspace.pk).update(team=team, team_source=source)
        workspace.team, workspace.team_source = team, source
    return workspace


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


@dataclass
class GroupResult:
    account_id: int
    name: str
    info: ResourceGroupInfo | None = None
    error: str = ""


def _read_group(workspace: Workspace, credential: Any, kwargs: dict[str, Any]) -> GroupResult:
    """Runs on a worker thread: the resource group's tags and SaaS billing resources."""
    result = GroupResult(workspace.account_id, workspace.resource_group)
    try:
        result.info = resource_group_read(
            credential, workspace.account.subscription_id, workspace.resource_group, **kwargs
        )
    except ProviderError as exc:
        result.error = exc.message
    except Exception as exc:
        log.exception("reading resource group %s failed", workspace.resource_group)
        result.error = f"Unexpected error: {type(exc).__name__}"
    return result


@transaction.atomic
def _write_group(result: GroupResult, report: SyncReport, teams: dict[str, Team]) -> None:
    """Link each Marketplace subscription of the group's workspaces to its SaaS billing resource
    (same publisher, offer and plan: Cost Management bills it there), and give the workspaces
    without a team tag of their own the team of the group's tag."""
    if result.error or result.info is None:
        report.lines.append(f"Resource group {result.name}: {result.error}")
        return
    workspaces = list(
        Workspace.objects.alive().filter(
            account_id=result.account_id, resource_group__iexact=result.name
        )
    )
    subs = list(
        MarketplaceSubscription.objects.alive()
        .filter(workspace__in=workspaces)
        .select_related("workspace")
    )

    def plan(publisher: str, offer: str, plan_id: str) -> tuple[str, str, str]:
        return (publisher.lower(), offer.lower(), plan_id.lower())

    for sub in subs:
        key = plan(sub.publisher_id, sub.offer_id, sub.plan_id)
        saas = [s for s in result.info.saas if plan(s.publisher, s.offer, s.plan) == key]
        rivals = [s for s in subs if plan(s.publisher_id, s.offer_id, s.plan_id) == key]
        if len(saas) == 1 and len(rivals) == 1:
            if sub.saas_resource_id != saas[0].resource_id:
                MarketplaceSubscription.objects.filter(pk=sub.pk).update(
                    saas_resource_id=saas[0].resource_id
                )
        elif saas and len(rivals) > 1:
            report.lines.append(
                f"{result.name}: {len(rivals)} workspaces subscribe to the same Marketplace plan "
                f"({sub.offer_id}), so their billing resources cannot be told apart; their cost "
                "counts for the Azure subscription, not for a workspace or team."
            )
    tag = settings.OPSPORTAL_TEAM_TAG.lower()
    tagged = {k.lower(): v for k, v in result.info.tags.items()}.get(tag)
    team = teams.get((tagged or "").strip().lower())
    if tagged and team is None:
        report.lines.append(
            f"Resource group {result.name}: tag {settings.OPSPORTAL_TEAM_TAG}={tagged} names no "
            "team of the console."
        )
    for ws in workspaces:
        if ws.team_source == Workspace.TeamSource.MANUAL or tag in {k.lower() for k in ws.tags}:
            continue  # assigned by hand, or by the workspace's own tag
        if team is None and ws.team_source != Workspace.TeamSource.TAG:
            continue  # nothing to apply, nothing a tag gave to take back
        source = Workspace.TeamSource.TAG if team else Workspace.TeamSource.NONE
        if (ws.team_id, ws.team_source) != (team.pk if team else None, source):
            Workspace.objects.filter(pk=ws.pk).update(team=team, team_source=source)


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
    compute_quota_store(account_id=result.account_id, region=result.region, usage=result.usage)
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
    offerings = {unversioned(o.registry_model_id): o for o in catalog}
    by_slug = {o.slug: o for o in catalog}
    sub_names = []
    for s in result.subscriptions:
        offering = offerings.get(unversioned(s.model_id))
        if offering is None:
            report.lines.append(
                f"{workspace.name}: Marketplace subscription {s.name} is for "
                f"{s.model_id}, which the catalog does not list; not recorded."
            )
            continue
        state = {"Subscribed": "Succeeded"}.get(s.status, s.status or "Pending")
        MarketplaceSubscription.objects.alive().update_or_create(
            workspace=workspace,
            offering=offering,
            defaults={
                "name": s.name,
                "state": state,
                "azure_resource_id": s.resource_id,
                "publisher_id": s.publisher_id,
                "offer_id": s.offer_id,
                "plan_id": s.plan_id,
            },
        )
        sub_names.append(s.name)
    report.marked_deleted += (
        workspace.marketplace_subscriptions.alive()
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
        workspace.endpoints.alive().exclude(name__in=names).update(deleted_at=now)
    )
    Workspace.objects.filter(pk=workspace.pk).update(sync_error="", last_sync_at=now)
    report.workspaces_ok += 1
    report.lines.append(
        f"{workspace.name}: {len(names)} endpoints, {len(sub_names)} Marketplace subscriptions"
    )
