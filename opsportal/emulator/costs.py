"""Cost Management's Query API over what the emulator metered: Marketplace token meters on the
SaaS resources (written by the data planes per request) and VM hours of managed online
deployments (from each deployment's instance-count segments). Rows appear only once the data
lag has passed on the emulator clock; queries spend the tenant's query processing units (QPU)."""

import math
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

from starlette.responses import Response

from opsportal.emulator.routing import Call, Router, arm_json
from opsportal.emulator.state import ArmError, Deployment, State, UsageRow, new_guid

router = Router()
QPU = "x-ms-ratelimit-microsoft.costmanagement-qpu"
COST_COLUMNS = {"Cost", "PreTaxCost", "CostUSD", "PreTaxCostUSD"}

DIMENSIONS: dict[str, Callable[[UsageRow], str]] = {
    "resourceid": lambda r: r.resource_id.lower(),
    "resourcegroup": lambda r: r.resource_group.lower(),
    "resourcegroupname": lambda r: r.resource_group.lower(),
    "resourcetype": lambda r: r.resource_type.lower(),
    "resourcelocation": lambda r: r.location,
    "meter": lambda r: r.meter,
    "metercategory": lambda r: r.meter_category,
    "metersubcategory": lambda r: r.meter_subcategory,
    "publishertype": lambda r: r.publisher_type,
    "servicename": lambda r: r.service_name,
    "subscriptionid": lambda r: r.subscription,
    "chargetype": lambda r: "Usage",
}


def parse_moment(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        raise ArmError(400, "BadRequest", f"Invalid date '{text}' in timePeriod.") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def period(body: dict[str, Any], now: datetime) -> tuple[date, date]:
    frame = str(body.get("timeframe") or "")
    first = now.date().replace(day=1)
    if frame == "Custom":
        tp = body.get("timePeriod") or {}
        if "from" not in tp or "to" not in tp:
            raise ArmError(
                400, "BadRequest", "timeframe Custom needs timePeriod.from and timePeriod.to."
            )
        start, end = parse_moment(tp["from"]).date(), parse_moment(tp["to"]).date()
    elif frame in ("MonthToDate", "BillingMonthToDate", "TheCurrentMonth"):
        start, end = first, now.date()
    elif frame in ("TheLastMonth", "TheLastBillingMonth"):
        end = first - timedelta(days=1)
        start = end.replace(day=1)
    elif frame == "WeekToDate":
        start, end = now.date() - timedelta(days=now.weekday()), now.date()
    else:
        raise ArmError(501, "NotImplemented", f"The emulator does not model timeframe '{frame}'.")
    if start > end:
        start, end = end, start
    return start, end


def months_spanned(start: date, end: date) -> int:
    return (end.year - start.year) * 12 + end.month - start.month + 1


def qpu_take(state: State, tenant: str, cost: int) -> tuple[bool, float, dict[str, int]]:
    """Spend `cost` QPU of the tenant's windows (real time). Returns (allowed, seconds to wait,
    what remains per window)."""
    limits = {int(k): int(v) for k, v in state.world["cost"]["qpu"].items()}
    now = time.monotonic()
    longest = max(limits) if limits else 0
    while state.qpu_spent and now - state.qpu_spent[0][0] > longest:
        state.qpu_spent.popleft()
    remaining, wait = {}, 0.0
    for window, limit in limits.items():
        inside = [(t, n) for t, who, n in state.qpu_spent if who == tenant and now - t < window]
        spent = sum(n for _, n in inside)
        remaining[window] = limit - spent
        if spent + cost > limit:
            # Wait until enough of the oldest spending in this window has aged out.
            freed, need = 0, spent + cost - limit
            for t, n in inside:
                freed += n
                if freed >= need:
                    wait = max(wait, window - (now - t))
                    break
            else:
                wait = max(wait, float(window))
    if wait > 0:
        return False, wait, remaining
    state.qpu_spent.append((now, tenant, cost))
    return True, 0.0, {w: r - cost for w, r in remaining.items()}


def remaining_header(remaining: dict[int, int]) -> str:
    names = {10: "QueriesPer10Sec", 60: "QueriesPerMin", 3600: "QueriesPerHour"}
    return ",".join(
        f"{names.get(w, f'QueriesPer{w}Sec')}:{max(0, r)}" for w, r in sorted(remaining.items())
    )


def vm_rows(state: State, deployments: list[Deployment], upto: datetime) -> list[UsageRow]:
    """VM hours per UTC day of each deployment's segments, billed on the workspace resource with
    the azuremlendpoint/azuremldeployment tags (Microsoft's cost doc for online endpoints)."""
    rows = []
    for dep in deployments:
        ws = dep.endpoint.workspace
        for start, end, capacity, size_name in dep.segments:
            stop = min(end or upto, upto)
            size = state.vm_sizes.get(size_name, {})
            moment = start
            while moment < stop:
                next_day = datetime.combine(
                    moment.date() + timedelta(days=1), datetime.min.time(), UTC
                )
                piece_end = min(stop, next_day)
                hours = (piece_end - moment).total_seconds() / 3600 * capacity
                rows.append(
                    UsageRow(
                        at=moment,
                        subscription=ws.subscription,
                        resource_id=ws.id,
                        resource_type="Microsoft.MachineLearningServices/workspaces",
                        resource_group=ws.resource_group,
                        location=ws.location,
                        meter=size.get("meter", size_name),
                        meter_category="Virtual Machines",
                        meter_subcategory=f"{size.get('meter', size_name)} Series",
                        quantity=hours,
                        cost=hours * float(size.get("price_per_hour", 0)),
                        publisher_type="Azure",
                        service_name="Azure Machine Learning",
                        tags={"azuremlendpoint": dep.endpoint.name, "azuremldeployment": dep.name},
                    )
                )
                moment = piece_end
    return rows


def matches(row: UsageRow, expression: dict[str, Any]) -> bool:
    if not expression:
        return True
    if "and" in expression:
        return all(matches(row, e) for e in expression["and"])
    if "or" in expression:
        return any(matches(row, e) for e in expression["or"])
    if "not" in expression:
        return not matches(row, expression["not"])
    if "dimensions" in expression:
        d = expression["dimensions"]
        getter = DIMENSIONS.get(str(d.get("name", "")).lower())
        if getter is None:
            raise ArmError(
                400, "BadRequest", f"Invalid dimension name '{d.get('name')}' in the filter."
            )
        return d.get("operator", "In") == "In" and getter(row).lower() in {
            str(v).lower() for v in d.get("values", [])
        }
    if "tags" in expression:
        t = expression["tags"]
        value = row.tags.get(str(t.get("name", "")))
        return value is not None and value.lower() in {str(v).lower() for v in t.get("values", [])}
    raise ArmError(400, "BadRequest", "A filter needs and, or, not, dimensions or tags.")


@router.add(
    "POST",
    "/{scope:path}/providers/Microsoft.CostManagement/query",
    "CostManagement.Query",
    throttle="",
)
def query(emu: Any, call: Call) -> Response:
    state = emu.state
    scope = "/" + call.params["scope"].strip("/")
    parts = scope.strip("/").split("/")
    if len(parts) < 2 or parts[0].lower() != "subscriptions" or len(parts) not in (2, 4):
        raise ArmError(
            501,
            "NotImplemented",
            f"The emulator models subscription and resource group scopes, not {scope}.",
        )
    sub = state.subscription(parts[1])["id"]
    rg = parts[3].lower() if len(parts) == 4 else None
    body = call.json()
    dataset = body.get("dataset") or {}
    now = state.clock.now()
    start, end = period(body, now)
    if str(body.get("type", "")) not in ("ActualCost", "AmortizedCost", "Usage"):
        raise ArmError(
            400,
            "BadRequest",
            f"Query type '{body.get('type')}' is not ActualCost, AmortizedCost or Usage.",
        )
    granularity = dataset.get("granularity") or "None"
    if granularity not in ("Daily", "None"):
        raise ArmError(
            501,
            "NotImplemented",
            f"The emulator models granularity Daily and None, not {granularity}.",
        )
    aggregations = list((dataset.get("aggregation") or {}).items())
    for _, agg in aggregations:
        if (
            agg.get("name") not in COST_COLUMNS | {"UsageQuantity"}
            or agg.get("function", "Sum") != "Sum"
        ):
            raise ArmError(
                400,
                "BadRequest",
                f"Aggregation {agg} is not a Sum of a cost column or UsageQuantity.",
            )
    grouping = dataset.get("grouping") or []
    if len(grouping) > 2:
        raise ArmError(400, "BadRequest", "At most 2 grouping clauses are allowed.")
    groupers: list[tuple[str, Callable[[UsageRow], str]]] = []
    for g in grouping:
        name = str(g.get("name", ""))
        if g.get("type") == "TagKey":
            groupers.append((name, lambda r, key=name: r.tags.get(key, "")))
        elif name.lower() in DIMENSIONS:
            groupers.append((name, DIMENSIONS[name.lower()]))
        else:
            raise ArmError(400, "BadRequest", f"Invalid dimension name '{name}' in the grouping.")

    tenant = (call.claims or {}).get("tid", "")
    allowed, wait, remaining = qpu_take(state, tenant, months_spanned(start, end))
    if not allowed:
        seconds = str(max(1, math.ceil(wait)))
        return arm_json(
            {"error": {"code": "429", "message": "Too many requests. Please retry."}},
            429,
            {
                f"{QPU}-retry-after": seconds,
                "x-ms-ratelimit-microsoft.costmanagement-tenant-retry-after": seconds,
            },
        )

    upto = now - timedelta(hours=float(state.world["cost"]["lag_hours"]))
    deployments = [
        d for ep in state.online.values() for d in ep.deployments.values()
    ] + state.deployment_history
    candidates = [r for r in state.usage if r.at <= upto] + vm_rows(state, deployments, upto)
    totals: dict[tuple[Any, ...], list[float]] = defaultdict(lambda: [0.0] * len(aggregations))
    for row in candidates:
        if row.subscription != sub or (rg and row.resource_group.lower() != rg):
            continue
        if not start <= row.at.date() <= end or not matches(row, dataset.get("filter") or {}):
            continue
        key = tuple(getter(row) for _, getter in groupers)
        if granularity == "Daily":
            key = (*key, int(row.at.strftime("%Y%m%d")))
        sums = totals[key]
        for i, (_, agg) in enumerate(aggregations):
            sums[i] += row.quantity if agg["name"] == "UsageQuantity" else row.cost
    currency = state.world["cost"]["currency"]
    columns = [{"name": agg["name"], "type": "Number"} for _, agg in aggregations]
    columns += [{"name": name, "type": "String"} for name, _ in groupers]
    if granularity == "Daily":
        columns.append({"name": "UsageDate", "type": "Number"})
    columns.append({"name": "Currency", "type": "String"})
    rows = [
        [*(round(v, 10) for v in sums), *key, currency]
        for key, sums in sorted(totals.items(), key=lambda kv: kv[0][::-1])
    ]

    size = int(state.world["cost"].get("page_size", 1000))
    try:
        offset = max(0, int(call.query.get("$skiptoken", "0")))
    except ValueError:
        offset = 0
    page = rows[offset : offset + size]
    next_link = None
    if offset + size < len(rows):
        next_link = (
            f"{state.base_url}{call.path}?api-version={call.api_version}&$skiptoken={offset + size}"
        )
    query_id = new_guid(state.rng)
    return arm_json(
        {
            "id": f"{scope}/providers/Microsoft.CostManagement/query/{query_id}",
            "name": query_id,
            "type": "Microsoft.CostManagement/query",
            "location": None,
            "sku": None,
            "eTag": None,
            "properties": {"nextLink": next_link, "columns": columns, "rows": page},
        },
        200,
        {
            f"{QPU}-consumed": str(months_spanned(start, end)),
            f"{QPU}-remaining": remaining_header(remaining),
        },
    )
