"""Writing cost: the local runtime's daily meters from its usage rows, Azure's from Cost
Management, both as CostDaily rows, and the per-day rollups the overview reads."""

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet, Sum
from django.utils import timezone

from opsportal.costs.models import (
    CostDaily,
    CostMonth,
    CostPull,
    CostRollup,
    CostSource,
    CostWorkspaceDay,
    CostWorkspaceMonth,
    MeterTotals,
    WorkspaceTotals,
)
from opsportal.inventory.models import (
    CloudAccount,
    Endpoint,
    MarketplaceSubscription,
    Provider,
    Workspace,
)
from opsportal.providers.azure_costs import MANAGED_METER, cost_query
from opsportal.providers.base import ProviderError
from opsportal.runtime.models import UsageRecord

log = logging.getLogger(__name__)
INPUT_METER = "paygo-inference-input-tokens"
OUTPUT_METER = "paygo-inference-output-tokens"
# Marketplace model meters are billed per thousand tokens.
TOKENS_UNIT_NAME = "1K tokens"
THOUSAND = Decimal(1000)
MILLION = Decimal(1_000_000)
COST_PLACES = Decimal("0.0000000001")  # the cost columns' 10 decimal places


def day_bounds(day: date) -> tuple[datetime, datetime]:
    tz = timezone.get_current_timezone()
    start = datetime.combine(day, time.min, tzinfo=tz)
    return start, start + timedelta(days=1)


def local_resource_id(endpoint: Endpoint) -> str:
    return f"local/{endpoint.workspace.name}/{endpoint.name}#{endpoint.pk}"


# --- local ----------------------------------------------------------------------------------


def local_costs_compute(*, days: Iterable[date] | None = None) -> int:
    """The local runtime's meters for the given days (default: today and yesterday): the
    gateway's metered tokens x the offering's input and output prices. Idempotent."""
    today = timezone.localdate()
    days = sorted(set(days or [today - timedelta(days=1), today]))
    written = 0
    for day in days:
        start, end = day_bounds(day)
        usage = (
            UsageRecord.objects.filter(
                created_at__gte=start,
                created_at__lt=end,
                endpoint__workspace__provider=Provider.LOCAL,
            )
            .values("endpoint")
            .annotate(prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"))
        )
        by_endpoint = {u["endpoint"]: u for u in usage}
        endpoints = Endpoint.objects.select_related(
            "workspace", "workspace__account", "offering"
        ).in_bulk(list(by_endpoint))
        rows = []
        for pk, u in by_endpoint.items():
            ep = endpoints[pk]
            offering = ep.offering
            prices = (
                (
                    INPUT_METER,
                    u["prompt"] or 0,
                    offering.input_price_per_million if offering else None,
                ),
                (
                    OUTPUT_METER,
                    u["completion"] or 0,
                    offering.output_price_per_million if offering else None,
                ),
            )
            for meter, tokens, price in prices:
                rows.append(
                    CostDaily(
                        source=CostSource.LOCAL,
                        day=day,
                        account=ep.workspace.account,
                        resource_id=local_resource_id(ep),
                        meter=meter,
                        quantity=Decimal(tokens) / THOUSAND,
                        unit=TOKENS_UNIT_NAME,
                        cost=(Decimal(tokens) * (price or 0) / MILLION).quantize(COST_PLACES),
                        currency=offering.currency if offering else "USD",
                        workspace=ep.workspace,
                        endpoint=ep,
                        offering=offering,
                        team_id=ep.workspace.team_id,
                    )
                )
        written += _upsert(CostSource.LOCAL, day, rows, replace_day=True)
        rollups_rebuild(days=[day])
    # "Data as of" for the local runtime, read by the cost pages without scanning the rows.
    for account in CloudAccount.objects.filter(provider=Provider.LOCAL):
        CostPull.objects.update_or_create(
            account=account,
            defaults={"pulled_at": timezone.now(), "data_as_of": max(days), "error": ""},
        )
    return written


def _upsert(source: str, day: date, rows: list[CostDaily], *, replace_day: bool) -> int:
    """Insert or update the day's rows by (resource, meter); with replace_day, rows of that
    day and source that are no longer reported go."""
    fields = [
        "quantity",
        "unit",
        "cost",
        "currency",
        "workspace",
        "endpoint",
        "marketplace_subscription",
        "offering",
        "team",
        "account",
    ]
    with transaction.atomic():
        existing = {
            (r.resource_id, r.meter): r for r in CostDaily.objects.filter(source=source, day=day)
        }
        create, update = [], []
        for row in rows:
            found = existing.pop((row.resource_id, row.meter), None)
            if found is None:
                create.append(row)
            else:
                row.pk = found.pk
                update.append(row)
        CostDaily.objects.bulk_create(create, batch_size=500)
        if update:
            CostDaily.objects.bulk_update(update, fields, batch_size=500)
        if replace_day and existing:
            CostDaily.objects.filter(pk__in=[r.pk for r in existing.values()]).delete()
    return len(rows)


def rollups_rebuild(*, days: Iterable[date]) -> None:
    """The overview's per-day totals from the meter rows of those days, then their months'."""
    days = sorted(set(days))
    if not days:
        return
    with transaction.atomic():
        rows = CostDaily.objects.filter(day__in=days)
        totals_replace(CostRollup, {"day__in": days}, rows, ("day", *METER_KEYS))
        totals_replace(CostWorkspaceDay, {"day__in": days}, rows, ("day", *WORKSPACE_KEYS))
        months_rebuild(months={d.replace(day=1) for d in days})


def months_rebuild(*, months: Iterable[date]) -> None:
    """Monthly totals from the daily rollups of those months."""
    for first in sorted(set(months)):
        last = (first + timedelta(days=32)).replace(day=1) - timedelta(days=1)
        in_month = {"day__gte": first, "day__lte": last}
        meters = CostRollup.objects.filter(**in_month)
        totals_replace(CostMonth, {"month": first}, meters, METER_KEYS, month=first)
        workspaces = CostWorkspaceDay.objects.filter(**in_month)
        totals_replace(
            CostWorkspaceMonth, {"month": first}, workspaces, WORKSPACE_KEYS, month=first
        )


METER_KEYS = ("team", "offering", "meter", "unit", "currency")
WORKSPACE_KEYS = ("workspace", "team", "currency")


def totals_replace(
    model: type[MeterTotals | WorkspaceTotals],
    period: dict[str, object],
    source: QuerySet[Any],
    keys: tuple[str, ...],
    **fixed: object,
) -> None:
    """Replace `model`'s rows of `period` with `source` summed by `keys` (quantity and cost, as
    far as the model has them); `fixed` fields are the same on every new row."""
    sums = [f for f in ("quantity", "cost") if any(x.name == f for x in model._meta.fields)]
    model.objects.filter(**period).delete()
    grouped = source.values(*keys).annotate(**{f"sum_{f}": Sum(f) for f in sums}).order_by()
    model.objects.bulk_create(
        [
            model(
                **fixed,
                **{model._meta.get_field(k).attname: row[k] for k in keys},
                **{f: row[f"sum_{f}"] or 0 for f in sums},
            )
            for row in grouped
        ],
        batch_size=1000,
    )


# --- Azure ----------------------------------------------------------------------------------


@dataclass
class ResourceMap:
    """Which inventory rows a billed resource belongs to."""

    by_saas: dict[str, MarketplaceSubscription]
    serverless: dict[tuple[int, int], Endpoint]  # (workspace, offering) -> endpoint
    online: dict[tuple[str, str, str], Endpoint]  # (resource group, workspace, name) -> endpoint
    workspaces: dict[tuple[str, str], Workspace]

    @classmethod
    def for_account(cls, account: CloudAccount) -> "ResourceMap":
        subs = MarketplaceSubscription.objects.filter(workspace__account=account).select_related(
            "workspace", "offering"
        )
        endpoints = Endpoint.objects.filter(workspace__account=account).select_related(
            "workspace", "offering"
        )
        live_first = sorted(endpoints, key=lambda e: e.deleted_at is None)
        return cls(
            by_saas={s.saas_resource_id.lower(): s for s in subs if s.saas_resource_id},
            serverless={
                (e.workspace_id, e.offering_id): e
                for e in live_first
                if e.kind == Endpoint.Kind.SERVERLESS and e.offering_id
            },
            online={
                (e.workspace.resource_group.lower(), e.workspace.name.lower(), e.name.lower()): e
                for e in live_first
                if e.kind == Endpoint.Kind.MANAGED
            },
            workspaces={
                (w.resource_group.lower(), w.name.lower()): w
                for w in Workspace.objects.filter(account=account)
            },
        )

    def place(self, row: CostDaily) -> None:
        rid = row.resource_id.lower()
        sub = self.by_saas.get(rid)
        if sub is not None:
            row.marketplace_subscription = sub
            row.workspace = sub.workspace
            row.offering = sub.offering
            row.endpoint = self.serverless.get((sub.workspace_id, sub.offering_id))
        else:
            parts = rid.strip("/").split("/")
            try:
                rg = parts[parts.index("resourcegroups") + 1]
                ws = parts[parts.index("workspaces") + 1]
            except (ValueError, IndexError):
                return
            row.workspace = self.workspaces.get((rg, ws))
            if "onlineendpoints" in parts:
                name = parts[parts.index("onlineendpoints") + 1]
                row.endpoint = self.online.get((rg, ws, name))
                if row.endpoint is not None:
                    row.offering = row.endpoint.offering
        if row.workspace is not None:
            row.team_id = row.workspace.team_id


def azure_costs_pull(
    *,
    account: CloudAccount,
    credential: Any,
    client_kwargs: dict[str, Any] | None = None,
    force: bool = False,
    sleep: Callable[[float], None] | None = None,
    correlation_id: str | None = None,
) -> CostPull:
    """Pull last month and this month of one subscription, at most every
    OPSPORTAL_COST_PULL_HOURS unless forced. Upserts are idempotent."""
    pull, _ = CostPull.objects.get_or_create(account=account)
    now = timezone.now()
    every = timedelta(hours=settings.OPSPORTAL_COST_PULL_HOURS)
    if not force and pull.pulled_at and now - pull.pulled_at < every and not pull.error:
        return pull
    today = timezone.localdate()
    start = (today.replace(day=1) - timedelta(days=1)).replace(day=1)
    try:
        found, waited = cost_query(
            credential,
            account.subscription_id,
            start,
            today,
            client_kwargs=client_kwargs,
            sleep=sleep,
            correlation_id=correlation_id,
        )
    except ProviderError as exc:
        CostPull.objects.filter(pk=pull.pk).update(pulled_at=now, error=exc.message)
        pull.refresh_from_db()
        return pull
    places = ResourceMap.for_account(account)
    by_day: dict[date, dict[tuple[str, str], CostDaily]] = {}
    for r in found:
        key = (r.resource_id, r.meter)
        day_rows = by_day.setdefault(r.day, {})
        if key in day_rows:  # the same meter in two currencies or pages: add up
            day_rows[key].cost += r.cost
            day_rows[key].quantity += r.quantity
            continue
        row = CostDaily(
            source=CostSource.AZURE,
            day=r.day,
            account=account,
            resource_id=r.resource_id,
            meter=r.meter,
            quantity=r.quantity,
            unit=TOKENS_UNIT_NAME
            if r.meter.endswith("-tokens")
            else ("VM hours" if r.meter == MANAGED_METER else ""),
            cost=r.cost,
            currency=r.currency,
        )
        places.place(row)
        day_rows[key] = row
    for day, rows in by_day.items():
        _upsert(CostSource.AZURE, day, list(rows.values()), replace_day=False)
    rollups_rebuild(days=by_day)
    CostPull.objects.filter(pk=pull.pk).update(
        pulled_at=now,
        data_as_of=max(by_day) if by_day else pull.data_as_of,
        rows=len(found),
        error="",
        throttled_s=waited,
    )
    pull.refresh_from_db()
    return pull


def azure_costs_pull_all(*, credential: Any, force: bool = False, **kwargs: Any) -> list[CostPull]:
    return [
        azure_costs_pull(account=account, credential=credential, force=force, **kwargs)
        for account in CloudAccount.objects.filter(provider=Provider.AZURE, is_demo=False)
    ]
