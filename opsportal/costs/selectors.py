"""Reading cost: the overview from the monthly and daily rollups, an endpoint's or a Marketplace
subscription's meters from the daily rows. Every read is scoped to what the user may see."""

import calendar
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from django.db.models import Max, Min, QuerySet, Sum
from django.utils import timezone

from opsportal.accounts.permissions import team_ids_for
from opsportal.costs.models import (
    Budget,
    CostDaily,
    CostMonth,
    CostPull,
    CostRollup,
    CostWorkspaceMonth,
)
from opsportal.costs.services import INPUT_METER, OUTPUT_METER
from opsportal.inventory.models import Provider

ZERO = Decimal(0)


def month_bounds(month: date) -> tuple[date, date]:
    first = month.replace(day=1)
    last = first.replace(day=calendar.monthrange(first.year, first.month)[1])
    return first, last


def previous_month(month: date) -> date:
    return (month.replace(day=1) - timedelta(days=1)).replace(day=1)


def _scoped(qs: QuerySet, user: Any) -> QuerySet:
    """Rows of the user's teams; rows no team owns (unmapped) only for superusers."""
    if user.is_superuser:
        return qs
    return qs.filter(team_id__in=team_ids_for(user))


@dataclass
class Overview:
    month: date
    currency: str
    total: Decimal
    last_month: Decimal
    forecast: Decimal | None
    by_offering: list[dict[str, Any]]
    by_meter: list[dict[str, Any]]
    by_workspace: list[dict[str, Any]]
    by_team: list[dict[str, Any]]
    chart: dict[str, Any]
    currencies: list[str] = field(default_factory=list)
    as_of: dict[str, Any] = field(default_factory=dict)
    top: int = 50

    @property
    def top_workspaces(self) -> list[dict[str, Any]]:
        return self.by_workspace[: self.top]

    @property
    def more_workspaces(self) -> int:
        return max(0, len(self.by_workspace) - self.top)


def cost_overview(
    *,
    user: Any,
    month: date,
    team_id: int | None = None,
    workspace_id: int | None = None,
    top: int = 50,
) -> Overview:
    """The month's totals and breakdowns from the monthly rollups, the chart from the daily
    ones; for one workspace, from its own daily meter rows (few)."""
    first, last = month_bounds(month)
    today = timezone.localdate()
    prev = previous_month(first)
    if workspace_id is not None:
        rows = _scoped(CostDaily.objects.filter(workspace_id=workspace_id), user)
        in_month = rows.filter(day__gte=first, day__lte=last)
        before = rows.filter(day__gte=prev, day__lt=first)
        daily, ws_month = in_month, in_month
    else:
        months = _scoped(CostMonth.objects.all(), user)
        days = _scoped(CostRollup.objects.filter(day__gte=first, day__lte=last), user)
        ws = _scoped(CostWorkspaceMonth.objects.filter(month=first), user)
        if team_id is not None:
            months, days, ws = (
                months.filter(team_id=team_id),
                days.filter(team_id=team_id),
                ws.filter(team_id=team_id),
            )
        in_month, before = months.filter(month=first), months.filter(month=prev)
        daily, ws_month = days, ws
    currencies = sorted(in_month.values_list("currency", flat=True).distinct().order_by())
    currency = currencies[0] if currencies else "USD"
    in_month = in_month.filter(currency=currency)
    total = in_month.aggregate(c=Sum("cost"))["c"] or ZERO
    last_month = before.filter(currency=currency).aggregate(c=Sum("cost"))["c"] or ZERO
    forecast = None
    if first <= today <= last:
        forecast = (total / today.day * last.day).quantize(Decimal("0.01"))

    def grouped(qs: QuerySet, *keys: str) -> list[dict[str, Any]]:
        return list(qs.values(*keys).annotate(cost=Sum("cost")).order_by("-cost"))

    by_offering = grouped(
        in_month, "offering__model_name", "offering__model_version", "offering__slug"
    )
    by_meter = list(
        in_month.values("meter", "unit")
        .annotate(cost=Sum("cost"), quantity=Sum("quantity"))
        .order_by("-cost")
    )
    by_team = grouped(in_month, "team__name", "team__slug")
    by_workspace = grouped(ws_month.filter(currency=currency), "workspace_id", "workspace__name")
    # Daily stacked by offering, every day of the month on the axis.
    per_day = (
        daily.filter(currency=currency)
        .values("day", "offering__model_name")
        .annotate(cost=Sum("cost"))
        .order_by()
    )
    series: dict[str, dict[date, float]] = defaultdict(dict)
    for row in per_day:
        series[row["offering__model_name"] or "Other"][row["day"]] = float(row["cost"] or 0)
    axis = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    chart = {
        "labels": [d.strftime("%d") for d in axis],
        "datasets": [
            {"label": name, "data": [round(values.get(d, 0.0), 6) for d in axis]}
            for name, values in sorted(series.items())
        ],
        "currency": currency,
    }
    return Overview(
        month=first,
        currency=currency,
        total=total,
        last_month=last_month,
        forecast=forecast,
        by_offering=by_offering,
        by_meter=by_meter,
        by_workspace=by_workspace,
        by_team=by_team,
        chart=chart,
        currencies=currencies,
        as_of=data_as_of(),
        top=top,
    )


def data_as_of() -> dict[str, Any]:
    """When each source was last brought up to date."""
    azure = CostPull.objects.filter(account__provider=Provider.AZURE).aggregate(
        pulled=Max("pulled_at"), day=Min("data_as_of")
    )
    local = CostPull.objects.filter(account__provider=Provider.LOCAL).aggregate(at=Max("pulled_at"))
    errors = [
        (p.account.display_name, p.error)
        for p in CostPull.objects.exclude(error="").select_related("account")[:10]
    ]
    return {
        "azure_pulled": azure["pulled"],
        "azure_day": azure["day"],
        "local": local["at"],
        "errors": errors,
    }


@dataclass
class MeterDays:
    rows: list[dict[str, Any]]
    totals: list[dict[str, Any]]
    chart: dict[str, Any]
    drift: list[dict[str, Any]]


def meter_days(qs: QuerySet, *, days: int = 30, offering: Any = None) -> MeterDays:
    """The daily meter rows of one endpoint or subscription over the last `days` days, with
    totals per meter, a chart per meter, and the estimate-vs-bill drift per meter."""
    since = timezone.localdate() - timedelta(days=days - 1)
    rows = list(
        qs.filter(day__gte=since)
        .values("day", "meter", "unit", "currency", "source")
        .annotate(quantity=Sum("quantity"), cost=Sum("cost"))
        .order_by("-day", "meter")
    )
    totals: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for r in rows:
        key = (r["meter"], r["unit"], r["currency"], r["source"])
        t = totals.setdefault(
            key,
            {
                "meter": r["meter"],
                "unit": r["unit"],
                "currency": r["currency"],
                "source": r["source"],
                "quantity": ZERO,
                "cost": ZERO,
            },
        )
        t["quantity"] += r["quantity"] or ZERO
        t["cost"] += r["cost"] or ZERO
    axis = [since + timedelta(days=i) for i in range(days)]
    per_meter: dict[str, dict[date, float]] = defaultdict(dict)
    for r in rows:
        per_meter[r["meter"]][r["day"]] = float(r["cost"] or 0)
    chart = {
        "labels": [d.strftime("%m-%d") for d in axis],
        "datasets": [
            {"label": m, "data": [round(v.get(d, 0.0), 6) for d in axis]}
            for m, v in sorted(per_meter.items())
        ],
        "currency": rows[0]["currency"] if rows else "USD",
    }
    return MeterDays(
        rows=rows, totals=list(totals.values()), chart=chart, drift=drift(totals.values(), offering)
    )


def drift(totals: Any, offering: Any) -> list[dict[str, Any]]:
    """Per token meter: the estimate (billed quantity x catalog price) next to the bill."""
    if offering is None:
        return []
    prices = {
        INPUT_METER: offering.input_price_per_million,
        OUTPUT_METER: offering.output_price_per_million,
    }
    out = []
    for t in totals:
        price = prices.get(t["meter"])
        if price is None or not t["quantity"]:
            continue
        estimate = (t["quantity"] * 1000 * price / 1_000_000).quantize(Decimal("0.0000000001"))
        billed = t["cost"]
        pct = None if not estimate else float((billed - estimate) / estimate * 100)
        out.append(
            {
                "meter": t["meter"],
                "source": t["source"],
                "estimate": estimate,
                "billed": billed,
                "drift_percent": pct,
                "currency": t["currency"],
            }
        )
    return out


@dataclass
class BudgetStatus:
    team: Any
    budget: Budget
    spent: Decimal
    forecast: Decimal
    percent: float
    warn: bool


def budget_statuses(*, user: Any) -> list[BudgetStatus]:
    """Each visible team's month to date against its budget (dashboard warnings)."""
    today = timezone.localdate()
    first, last = month_bounds(today)
    budgets = Budget.objects.select_related("team")
    if not user.is_superuser:
        budgets = budgets.filter(team_id__in=team_ids_for(user))
    budgets = list(budgets)
    if not budgets:
        return []
    spent = {
        (r["team"], r["currency"]): r["c"]
        for r in CostRollup.objects.filter(
            day__gte=first, day__lte=today, team_id__in=[b.team_id for b in budgets]
        )
        .values("team", "currency")
        .annotate(c=Sum("cost"))
        .order_by()
    }
    out = []
    for b in budgets:
        s = spent.get((b.team_id, b.currency)) or ZERO
        forecast = (s / today.day * last.day).quantize(Decimal("0.01"))
        percent = float(s / b.monthly_amount * 100)
        warn = percent >= b.warn_percent or forecast > b.monthly_amount
        out.append(BudgetStatus(b.team, b, s, forecast, percent, warn))
    return sorted(out, key=lambda x: -x.percent)
