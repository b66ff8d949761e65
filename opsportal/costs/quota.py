"""How close each serverless deployment is to its rate limits, and each region to its cores.

Local endpoints: measured per minute from the gateway's metering (the current minute, and the
busiest minute of the last hour and day). Azure serverless endpoints publish no per-minute
metrics: their daily token volume from the billed meters, as an average rate, plus the
per-minute figures of the console's own test-chat traffic, each labelled as what it is.
"""

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.db.models import Count, F, Max, Sum, Value
from django.db.models.functions import Coalesce, TruncMinute
from django.utils import timezone

from opsportal.chat.models import ChatTurn
from opsportal.costs.models import CostDaily
from opsportal.costs.services import INPUT_METER, OUTPUT_METER
from opsportal.inventory.models import ComputeQuota, Endpoint, Provider, Workspace
from opsportal.providers import for_workspace
from opsportal.runtime.models import UsageRecord

WARN_AT = 80.0
MINUTES_PER_DAY = 1440
# Refused before the limiter counted them: a wrong key, or the limit itself.
NOT_COUNTED = (401, 429)


@dataclass(frozen=True)
class Gauge:
    label: str
    value: float
    limit: float
    unit: str
    note: str = ""

    @property
    def percent(self) -> float:
        return 100.0 * self.value / self.limit if self.limit else 0.0

    @property
    def level(self) -> str:
        p = self.percent
        return "over" if p >= 100 else "warn" if p >= WARN_AT else "ok"

    @property
    def bar(self) -> float:
        return min(100.0, self.percent)


@dataclass
class EndpointQuota:
    endpoint: Endpoint
    source: str  # measured | billed
    gauges: list[Gauge] = field(default_factory=list)
    explanation: str = ""

    @property
    def warn(self) -> bool:
        return any(g.level != "ok" for g in self.gauges)

    @property
    def headline(self) -> list[Gauge]:
        """For lists: the two figures that matter most, and any gauge over 80%."""
        return [g for i, g in enumerate(self.gauges) if i < 2 or g.level != "ok"]


def _per_minute(rows: Any) -> dict[int, list[tuple[Any, int, int]]]:
    out: dict[int, list[tuple[Any, int, int]]] = defaultdict(list)
    for r in rows:
        out[r["endpoint"]].append((r["minute"], r["requests"], r["tokens"] or 0))
    return out


def _peaks(minutes: list[tuple[Any, int, int]], since: Any) -> tuple[int, int]:
    inside = [(r, t) for m, r, t in minutes if m >= since]
    return (max((r for r, _ in inside), default=0), max((t for _, t in inside), default=0))


def _measured_gauges(
    ep: Endpoint, current: tuple[int, int], hour: tuple[int, int], day: tuple[int, int], note: str
) -> list[Gauge]:
    offering = ep.offering
    tpm = offering.tokens_per_minute if offering else 200_000
    rpm = offering.requests_per_minute if offering else 1_000
    return [
        Gauge("Tokens, last minute", current[1], tpm, "tokens/min", note),
        Gauge("Requests, last minute", current[0], rpm, "requests/min", note),
        Gauge("Tokens, busiest minute of the last hour", hour[1], tpm, "tokens/min", note),
        Gauge("Requests, busiest minute of the last hour", hour[0], rpm, "requests/min", note),
        Gauge("Tokens, busiest minute of the last day", day[1], tpm, "tokens/min", note),
        Gauge("Requests, busiest minute of the last day", day[0], rpm, "requests/min", note),
    ]


def endpoint_quotas(endpoints: list[Endpoint], *, now: Any = None) -> list[EndpointQuota]:
    """Gauges for each serverless endpoint, in a fixed number of queries."""
    now = now or timezone.now()
    day_ago, hour_ago, minute_ago = (
        now - timedelta(days=1),
        now - timedelta(hours=1),
        now - timedelta(minutes=1),
    )
    serverless = [e for e in endpoints if e.kind == Endpoint.Kind.SERVERLESS]
    local = [e.pk for e in serverless if e.workspace.provider == Provider.LOCAL]
    azure = [e.pk for e in serverless if e.workspace.provider != Provider.LOCAL]
    tokens = Coalesce(F("prompt_tokens"), Value(0)) + Coalesce(F("completion_tokens"), Value(0))

    def minutes(qs: Any) -> dict[int, list[tuple[Any, int, int]]]:
        return _per_minute(
            qs.annotate(minute=TruncMinute("created_at"))
            .values("endpoint", "minute")
            .annotate(requests=Count("id"), tokens=Sum(tokens))
            .order_by()
        )

    def last_minute(qs: Any) -> dict[int, tuple[int, int]]:
        return {
            r["endpoint"]: (r["requests"], r["tokens"] or 0)
            for r in qs.filter(created_at__gte=minute_ago)
            .values("endpoint")
            .annotate(requests=Count("id"), tokens=Sum(tokens))
            .order_by()
        }

    metered = UsageRecord.objects.filter(endpoint_id__in=local, created_at__gte=day_ago).exclude(
        status_code__in=NOT_COUNTED
    )
    local_minutes, local_now = minutes(metered), last_minute(metered)
    console = ChatTurn.objects.filter(endpoint_id__in=azure, created_at__gte=day_ago)
    console_minutes, console_now = minutes(console), last_minute(console)
    # The newest day with billed token meters, per endpoint.
    billed: dict[int, tuple[Any, Decimal]] = {}
    latest = (
        CostDaily.objects.filter(endpoint_id__in=azure, meter__in=[INPUT_METER, OUTPUT_METER])
        .values("endpoint")
        .annotate(day=Max("day"))
        .order_by()
    )
    newest = {r["endpoint"]: r["day"] for r in latest}
    if newest:
        for r in (
            CostDaily.objects.filter(
                endpoint_id__in=list(newest),
                meter__in=[INPUT_METER, OUTPUT_METER],
                day__in=set(newest.values()),
            )
            .values("endpoint", "day")
            .annotate(q=Sum("quantity"))
            .order_by()
        ):
            if newest[r["endpoint"]] == r["day"]:
                billed[r["endpoint"]] = (r["day"], r["q"] or Decimal(0))

    out = []
    for ep in serverless:
        if ep.pk in local:
            m = local_minutes.get(ep.pk, [])
            out.append(
                EndpointQuota(
                    ep,
                    "measured",
                    _measured_gauges(
                        ep,
                        local_now.get(ep.pk, (0, 0)),
                        _peaks(m, hour_ago),
                        _peaks(m, day_ago),
                        "measured by the local gateway",
                    ),
                    "Measured per minute by the local gateway (requests it admitted, and their "
                    "prompt and completion tokens).",
                )
            )
            continue
        gauges = []
        tpm = ep.offering.tokens_per_minute if ep.offering else 200_000
        if ep.pk in billed:
            day, thousands = billed[ep.pk]
            average = float(thousands) * 1000 / MINUTES_PER_DAY
            gauges.append(
                Gauge(
                    f"Tokens, average over {day:%Y-%m-%d} (billed)",
                    round(average, 1),
                    tpm,
                    "tokens/min",
                    "from the billed input and output token meters",
                )
            )
        m = console_minutes.get(ep.pk, [])
        gauges += [
            g
            for g in _measured_gauges(
                ep,
                console_now.get(ep.pk, (0, 0)),
                _peaks(m, hour_ago),
                _peaks(m, day_ago),
                "the console's own test-chat traffic only",
            )
            if "hour" not in g.label
        ]
        out.append(
            EndpointQuota(
                ep,
                "billed",
                gauges,
                "Azure publishes no per-minute metrics for serverless endpoints: the first gauge "
                "is the daily token volume of the billed meters spread over the day (peaks are "
                "higher); the others count only the console's own test-chat traffic."
                if ep.pk in billed
                else "Azure publishes no per-minute metrics for serverless endpoints, and no "
                "billed token meters have been pulled for this one yet: the gauges count only "
                "the console's own test-chat traffic.",
            )
        )
    return out


def core_gauges(*, accounts: Any = None, include_local: bool = True) -> list[Gauge]:
    """VM core usage against the limit, per region and VM family."""
    gauges = []
    local = (
        Workspace.objects.alive().filter(provider=Provider.LOCAL).first() if include_local else None
    )
    if local is not None:
        for usage in for_workspace(local).core_usage():
            gauges.append(
                Gauge(
                    f"This machine ({usage.family} cores)",
                    usage.used,
                    usage.limit,
                    "cores",
                    "managed local deployments",
                )
            )
    rows = ComputeQuota.objects.select_related("account").filter(limit__gt=0)
    if accounts is not None:
        rows = rows.filter(account__in=accounts)
    for q in rows.order_by("account__display_name", "region", "family"):
        gauges.append(
            Gauge(
                f"{q.account.display_name}, {q.region}, {q.family}",
                q.used,
                q.limit,
                "cores",
                f"as of {q.updated_at:%Y-%m-%d %H:%M}",
            )
        )
    return gauges
