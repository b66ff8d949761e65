"""Cost Management's Query API: the Marketplace meters and managed compute's VM hours of one
subscription, per day, resource and meter, with Cost Management's own throttling honoured."""

import logging
import time
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from azure.core.exceptions import HttpResponseError
from azure.core.rest import HttpRequest
from azure.mgmt.costmanagement import CostManagementClient

from opsportal.providers import azure_cloud
from opsportal.providers.azure_arm import client_policies
from opsportal.providers.azure_errors import raise_for_status, retry_after, translate
from opsportal.providers.base import ErrorCode, ProviderError

log = logging.getLogger(__name__)

# Cost Management's throttling headers (NOTES.md §4): azure-core retries none of them, so the
# back-off is ours.
COST_RETRY_HEADERS = (
    "x-ms-ratelimit-microsoft.costmanagement-qpu-retry-after",
    "x-ms-ratelimit-microsoft.costmanagement-entity-retry-after",
    "x-ms-ratelimit-microsoft.costmanagement-tenant-retry-after",
    "retry-after",
)
COST_COLUMNS = ("Cost", "PreTaxCost", "CostUSD", "PreTaxCostUSD")
# Marketplace model subscriptions bill on SaaS resources; managed compute on the VMs behind
# online endpoints.
COST_RESOURCE_TYPES = [
    "microsoft.saas/resources",
    "microsoft.machinelearningservices/workspaces/onlineendpoints",
    "microsoft.machinelearningservices/workspaces/onlineendpoints/deployments",
]


@dataclass(frozen=True)
class CostRow:
    day: date
    resource_id: str
    meter: str
    quantity: Decimal
    cost: Decimal
    currency: str


def cost_query_body(start: date, end: date) -> dict[str, Any]:
    """Actual cost per day, resource and meter, for Marketplace and managed compute resources."""
    return {
        "type": "ActualCost",
        "timeframe": "Custom",
        "timePeriod": {
            "from": f"{start.isoformat()}T00:00:00Z",
            "to": f"{end.isoformat()}T23:59:59Z",
        },
        "dataset": {
            "granularity": "Daily",
            "aggregation": {
                "totalCost": {"name": "Cost", "function": "Sum"},
                "totalQuantity": {"name": "UsageQuantity", "function": "Sum"},
            },
            "grouping": [
                {"type": "Dimension", "name": "ResourceId"},
                {"type": "Dimension", "name": "Meter"},
            ],
            "filter": {
                "or": [
                    {
                        "dimensions": {
                            "name": "PublisherType",
                            "operator": "In",
                            "values": ["Marketplace"],
                        }
                    },
                    {
                        "dimensions": {
                            "name": "ResourceType",
                            "operator": "In",
                            "values": COST_RESOURCE_TYPES,
                        }
                    },
                ]
            },
        },
    }


def cost_rows_parse(columns: list[str], rows: list[list[Any]]) -> list[CostRow]:
    """Rows of a Query result, by column name (the API orders them: aggregations, groupings,
    UsageDate, Currency). UsageDate is a yyyymmdd number for daily granularity."""
    index = {name: i for i, name in enumerate(columns)}
    cost_at = next((index[c] for c in COST_COLUMNS if c in index), None)
    if cost_at is None or "UsageDate" not in index:
        raise ProviderError(
            f"Cost Management answered without a cost or date column ({', '.join(columns)}).",
            code=ErrorCode.BAD_RESPONSE,
        )
    known = {*COST_COLUMNS, "UsageQuantity", "UsageDate", "Currency", "Meter"}
    resource_at = index.get("ResourceId")
    if resource_at is None:  # grouped by something else: that is the resource
        resource_at = next((i for name, i in index.items() if name not in known), None)
    out = []
    for row in rows:
        raw_day = str(row[index["UsageDate"]])
        day = (
            date(int(raw_day[:4]), int(raw_day[4:6]), int(raw_day[6:8]))
            if raw_day.isdigit()
            else (date.fromisoformat(raw_day[:10]))
        )
        out.append(
            CostRow(
                day=day,
                resource_id=str(row[resource_at]) if resource_at is not None else "",
                meter=str(row[index["Meter"]]) if "Meter" in index else "",
                quantity=Decimal(str(row[index["UsageQuantity"]]))
                if "UsageQuantity" in index
                else Decimal(0),
                cost=Decimal(str(row[cost_at])),
                currency=str(row[index["Currency"]]) if "Currency" in index else "USD",
            )
        )
    return out


# Managed online deployments' VM hours are billed on the workspace resource, tagged with the
# endpoint and deployment they serve (Microsoft, "View costs for an Azure Machine Learning
# managed online endpoint": filter by the workspace, then by these tags).
ENDPOINT_TAG = "azuremlendpoint"
MANAGED_METER = "managed-compute"


def managed_cost_query_body(start: date, end: date) -> dict[str, Any]:
    """Actual cost per day of the workspaces' resources, by resource and endpoint tag."""
    body = cost_query_body(start, end)
    body["dataset"]["grouping"] = [
        {"type": "Dimension", "name": "ResourceId"},
        {"type": "TagKey", "name": ENDPOINT_TAG},
    ]
    body["dataset"]["filter"] = {
        "dimensions": {
            "name": "ResourceType",
            "operator": "In",
            "values": ["microsoft.machinelearningservices/workspaces"],
        }
    }
    return body


def managed_rows(columns: list[str], rows: list[list[Any]]) -> list[CostRow]:
    """The endpoint-tagged rows of the workspace query, each as the endpoint's own resource
    (`{workspace id}/onlineEndpoints/{name}`), under one managed-compute meter. Untagged rows
    are the workspace's other compute, not an endpoint's."""
    index = {name.lower(): i for i, name in enumerate(columns)}
    tag_at = index.get(ENDPOINT_TAG, index.get("tagvalue"))
    out = []
    parsed = cost_rows_parse(columns, rows)
    for raw, row in zip(rows, parsed, strict=True):
        endpoint = str(raw[tag_at]) if tag_at is not None and raw[tag_at] else ""
        if ":" in endpoint and tag_at == index.get("tagvalue"):
            endpoint = endpoint.split(":", 1)[1]
        if not endpoint:
            continue
        out.append(
            CostRow(
                day=row.day,
                resource_id=f"{row.resource_id.rstrip('/')}/onlineEndpoints/{endpoint}",
                meter=MANAGED_METER,
                quantity=row.quantity,
                cost=row.cost,
                currency=row.currency,
            )
        )
    return out


def cost_query(
    credential: Any,
    subscription_id: str,
    start: date,
    end: date,
    *,
    client_kwargs: dict[str, Any] | None = None,
    sleep: Any = None,
    max_wait_s: float = 300.0,
    correlation_id: str | None = None,
) -> tuple[list[CostRow], float]:
    """Daily cost rows of one subscription: the Marketplace meters (and anything billed on
    online endpoint resources), then managed compute's VM hours by endpoint. Returns (rows,
    seconds spent waiting out 429s)."""
    kwargs = {
        **azure_cloud.CLIENT_DEFAULTS,
        **(client_kwargs or {}),
        **client_policies(correlation_id),
    }
    sleep = sleep or time.sleep
    client = CostManagementClient(credential, **{**azure_cloud.mgmt_client_kwargs(), **kwargs})
    waited = 0.0

    def throttled(call: Any) -> Any:
        nonlocal waited
        while True:
            try:
                return call()
            except HttpResponseError as exc:
                if exc.status_code != 429:
                    raise translate(exc, what=f"cost of subscription {subscription_id}") from exc
                wait = retry_after(exc, COST_RETRY_HEADERS)
                wait = 60.0 if wait is None else wait
                if waited + wait > max_wait_s:
                    raise ProviderError(
                        f"Cost Management is throttling this tenant (asked to wait {wait:g} s); "
                        "the next scheduled pull tries again.",
                        retryable=True,
                        retry_after=wait,
                        code=ErrorCode.THROTTLED,
                    ) from exc
                log.info("cost query throttled; waiting %.0f s", wait)
                sleep(wait)
                waited += wait
            except ProviderError:
                raise
            except Exception as exc:
                raise translate(exc, what=f"cost of subscription {subscription_id}") from exc

    def query(body: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
        result = throttled(
            lambda: client.query.usage(scope=f"/subscriptions/{subscription_id}", parameters=body)
        )
        if result is None or result.properties is None:  # 204: no data for the period
            return [], []
        props = result.properties
        columns = [c.name for c in props.columns or []]
        rows = list(props.rows or [])
        next_link = props.next_link
        pages = 1
        while next_link and pages < 100:
            # No pager for Query: the next page is the same body posted to nextLink.
            response = throttled(
                lambda link=next_link: raise_for_status(
                    client._client.send_request(HttpRequest("POST", link, json=body))
                )
            )
            page = response.json().get("properties") or {}
            rows += page.get("rows") or []
            next_link = page.get("nextLink")
            pages += 1
        return columns, rows

    columns, rows = query(cost_query_body(start, end))
    found = cost_rows_parse(columns, rows) if columns else []
    columns, rows = query(managed_cost_query_body(start, end))
    found += managed_rows(columns, rows) if columns else []
    return found, waited
