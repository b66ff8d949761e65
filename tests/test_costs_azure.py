"""The Cost Management pull through the SDK's real pipeline, answered with the published Query
examples (../shared/azure-fixtures/costmanagement/), including a throttled 429 that carries only
Cost Management's own retry header."""

import copy
import json
from datetime import date
from decimal import Decimal

import pytest
import responses

from opsportal.costs.models import CostDaily, CostPull, CostRollup
from opsportal.costs.selectors import cost_overview
from opsportal.costs.services import azure_costs_pull
from opsportal.inventory.models import CloudAccount, MarketplaceSubscription
from opsportal.providers import azure_cloud
from tests.azure_support import ARM, FakeCredential, api_version, body_of, example, url
from tests.factories import EndpointFactory, UserFactory, WorkspaceFactory, offering

pytestmark = pytest.mark.production_path
SUB = "00000000-0000-0000-0000-000000000000"  # the examples' subscription
QUERY = f"{ARM}/subscriptions/{SUB}/providers/Microsoft.CostManagement/query"
SAAS = (
    f"/subscriptions/{SUB}/resourceGroups/rg1/providers/Microsoft.SaaS/resources/"
    "Meta-Llama-3-8B-Instruct-5a1b2c3d"
)
QPU = "x-ms-ratelimit-microsoft.costmanagement-qpu-retry-after"


def managed_query(request) -> tuple[bool, str]:
    """A responses matcher: the second query of a pull, managed compute by endpoint tag."""
    groups = json.loads(request.body or b"{}").get("dataset", {}).get("grouping", [])
    return any(g.get("type") == "TagKey" for g in groups), "not the managed-compute query"


@pytest.fixture
def arm(monkeypatch):
    monkeypatch.setattr(azure_cloud, "CLIENT_DEFAULTS", {"retry_total": 0})
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rs:
        # Registered first, so it answers the managed-compute query; the tests below answer
        # the Marketplace one. A subscription without managed endpoints: no rows.
        rs.add(responses.POST, url(QUERY), status=204, match=[managed_query])
        yield rs


def marketplace_calls(rs) -> list:
    return [c for c in rs.calls if not managed_query(c.request)[0]]


@pytest.fixture
def account(catalog):
    return CloudAccount.objects.create(
        provider="azure", subscription_id=SUB, display_name="Contoso"
    )


def pull(account, **kw):
    waits: list[float] = []
    result = azure_costs_pull(
        account=account, credential=FakeCredential(), sleep=waits.append, **kw
    )
    return result, waits


def billed_example() -> dict:
    """The published SubscriptionQuery answer, regrouped as this console asks (cost and
    quantity per day, resource and meter): the examples group by ResourceGroup only."""
    body = example("costmanagement/Query_SubscriptionQuery.json")
    body["properties"]["columns"] = [
        {"name": "Cost", "type": "Number"},
        {"name": "UsageQuantity", "type": "Number"},
        {"name": "ResourceId", "type": "String"},
        {"name": "Meter", "type": "String"},
        {"name": "UsageDate", "type": "Number"},
        {"name": "Currency", "type": "String"},
    ]
    body["properties"]["rows"] = [
        [0.42, 1400.0, SAAS.lower(), "paygo-inference-input-tokens", 20261120, "USD"],
        [0.61, 160.0, SAAS.lower(), "paygo-inference-output-tokens", 20261120, "USD"],
        [0.40, 1300.0, SAAS.lower(), "paygo-inference-input-tokens", 20261121, "USD"],
    ]
    return body


def test_it_asks_for_daily_actual_cost_by_resource_and_meter_and_reads_the_example(arm, account):
    arm.add(responses.POST, url(QUERY), json=example("costmanagement/Query_SubscriptionQuery.json"))
    result, waits = pull(account)
    (call,) = marketplace_calls(arm)
    assert api_version(call) == "2025-03-01"
    sent = body_of(call)
    assert (sent["type"], sent["timeframe"], sent["dataset"]["granularity"]) == (
        "ActualCost",
        "Custom",
        "Daily",
    )
    assert sent["dataset"]["grouping"] == [
        {"type": "Dimension", "name": "ResourceId"},
        {"type": "Dimension", "name": "Meter"},
    ]
    assert sent["dataset"]["aggregation"]["totalCost"] == {"name": "Cost", "function": "Sum"}
    filters = json.dumps(sent["dataset"]["filter"])
    assert "Marketplace" in filters and "microsoft.saas/resources" in filters
    assert sent["timePeriod"]["from"].endswith("-01T00:00:00Z")  # the first of last month
    # The published answer as published: PreTaxCost per resource group and yyyymmdd day.
    published = example("costmanagement/Query_SubscriptionQuery.json")["properties"]["rows"]
    rows = {(r.day, r.resource_id): r.cost for r in CostDaily.objects.all()}
    assert rows == {
        (date(2018, 3, 31), "ScreenSharingTest-peer"): Decimal(str(published[0][0])).quantize(
            Decimal("1e-10")
        ),
        (date(2018, 3, 31), "Ict_StratAndPlan_GoldSprova_Prod"): Decimal(
            str(published[1][0])
        ).quantize(Decimal("1e-10")),
        (date(2018, 4, 1), "ssbciotelement01"): Decimal(str(published[2][0])).quantize(
            Decimal("1e-10")
        ),
        (date(2018, 4, 29), "ict_stratandplan_goldsprova_prod"): Decimal(
            str(published[3][0])
        ).quantize(Decimal("1e-10")),
    }
    assert (result.error, result.rows, result.data_as_of) == ("", 4, date(2018, 4, 29))
    assert waits == []


def test_it_maps_saas_resources_to_subscription_offering_endpoint_and_team(arm, account):
    workspace = WorkspaceFactory(account=account, name="ws1", resource_group="rg1")
    llama = offering("meta-llama-3-8b-instruct")
    sub = MarketplaceSubscription.objects.create(
        workspace=workspace, offering=llama, name="llama", state="Succeeded", saas_resource_id=SAAS
    )
    endpoint = EndpointFactory(workspace=workspace, name="llama", kind="serverless", offering=llama)
    arm.add(responses.POST, url(QUERY), json=billed_example())
    pull(account)
    rows = list(CostDaily.objects.order_by("day", "meter"))
    assert len(rows) == 3
    assert {(r.marketplace_subscription, r.endpoint, r.offering, r.team) for r in rows} == {
        (sub, endpoint, llama, workspace.team)
    }
    assert rows[0].unit == "1K tokens" and rows[0].quantity == Decimal(1400)
    # Pulled again (forced): the same rows, updated in place.
    arm.replace(responses.POST, url(QUERY), json=billed_example())
    result, _ = pull(account, force=True)
    assert CostDaily.objects.count() == 3 and result.rows == 3
    assert sum(r.cost for r in CostRollup.objects.filter(day=date(2026, 11, 20))) == Decimal("1.03")
    overview = cost_overview(user=UserFactory(is_superuser=True), month=date(2026, 11, 1))
    assert overview.total == Decimal("1.43")


def test_it_backs_off_on_the_cost_management_retry_header(arm, account):
    arm.add(
        responses.POST,
        url(QUERY),
        status=429,
        headers={QPU: "7"},
        json={"error": {"code": "429", "message": "Too many requests. Please retry."}},
    )
    arm.add(responses.POST, url(QUERY), json=billed_example())
    result, waits = pull(account)
    assert waits == [7.0]  # azure-core did not retry it; we waited as asked
    assert len(marketplace_calls(arm)) == 2
    assert (result.error, result.rows, result.throttled_s) == ("", 3, 7.0)


def test_it_gives_up_for_now_when_throttled_too_long_and_says_so(arm, account):
    arm.add(
        responses.POST,
        url(QUERY),
        status=429,
        headers={QPU: "200"},
        json={"error": {"code": "429", "message": "Too many requests."}},
    )
    result, waits = pull(account)
    assert waits == [200.0]
    assert "throttling" in result.error and result.rows == 0
    assert not CostDaily.objects.exists()


def test_an_empty_answer_and_the_pull_interval(arm, account):
    arm.add(responses.POST, url(QUERY), status=204)
    result, _ = pull(account)
    assert (result.error, result.rows) == ("", 0) and result.pulled_at is not None
    pull(account)  # within OPSPORTAL_COST_PULL_HOURS: no second query
    assert len(marketplace_calls(arm)) == 1


def test_it_follows_next_link(arm, account):
    first = billed_example()
    second = copy.deepcopy(first)
    second["properties"]["rows"] = [
        [0.05, 10.0, SAAS.lower(), "paygo-inference-output-tokens", 20261121, "USD"]
    ]
    next_url = f"{QUERY}?api-version=2025-03-01&$skiptoken=page2"
    first["properties"]["nextLink"] = next_url
    arm.add(responses.POST, url(QUERY), json=first)
    arm.add(responses.POST, next_url, json=second)
    result, _ = pull(account)
    assert result.rows == 4 and CostDaily.objects.count() == 4
    calls = marketplace_calls(arm)
    assert body_of(calls[1]) == body_of(calls[0])


def test_a_refused_query_is_recorded_not_raised(arm, account):
    arm.add(
        responses.POST,
        url(QUERY),
        status=403,
        json={"error": {"code": "AuthorizationFailed", "message": "no"}},
    )
    result, _ = pull(account)
    assert "refused" in result.error.lower()
    assert CostPull.objects.get(account=account).error == result.error


def test_managed_compute_hours_are_read_from_the_workspace_by_endpoint_tag(arm, account):
    workspace = WorkspaceFactory(account=account, name="ws1", resource_group="rg1")
    mixtral = offering("mixtral-8x7b-instruct-v01")
    endpoint = EndpointFactory(
        workspace=workspace, name="mixtral", kind="managed", offering=mixtral, content_safety=False
    )
    ws_id = (
        f"/subscriptions/{SUB}/resourceGroups/rg1/providers/"
        "Microsoft.MachineLearningServices/workspaces/ws1"
    )
    answer = billed_example()
    answer["properties"]["columns"] = [
        {"name": "Cost", "type": "Number"},
        {"name": "UsageQuantity", "type": "Number"},
        {"name": "ResourceId", "type": "String"},
        {"name": "azuremlendpoint", "type": "String"},
        {"name": "UsageDate", "type": "Number"},
        {"name": "Currency", "type": "String"},
    ]
    answer["properties"]["rows"] = [
        [88.16, 24.0, ws_id.lower(), "mixtral", 20261120, "USD"],
        [3.10, 2.0, ws_id.lower(), "", 20261120, "USD"],  # the workspace's other compute
    ]
    arm.replace(responses.POST, url(QUERY), json=answer, match=[managed_query])
    arm.add(responses.POST, url(QUERY), status=204)
    pull(account)
    (managed,) = [c for c in arm.calls if managed_query(c.request)[0]]
    sent = body_of(managed)["dataset"]
    assert sent["grouping"] == [
        {"type": "Dimension", "name": "ResourceId"},
        {"type": "TagKey", "name": "azuremlendpoint"},
    ]
    assert "microsoft.machinelearningservices/workspaces" in json.dumps(sent["filter"])
    (row,) = CostDaily.objects.all()
    assert (row.endpoint, row.offering, row.team, row.meter, row.unit) == (
        endpoint,
        mixtral,
        workspace.team,
        "managed-compute",
        "VM hours",
    )
    assert row.cost == Decimal("88.16") and row.quantity == Decimal(24)
