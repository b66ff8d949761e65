"""Local cost from the gateway's usage rows x catalog prices, the rollups and overview, CSV,
budgets on the dashboard, and the quota gauges."""

import csv
import io
from datetime import timedelta
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from opsportal.accounts.models import Role
from opsportal.chat.models import ChatTurn
from opsportal.costs.models import Budget, CostDaily, CostRollup, CostWorkspaceDay
from opsportal.costs.quota import core_gauges, endpoint_quotas
from opsportal.costs.selectors import cost_overview
from opsportal.costs.services import INPUT_METER, OUTPUT_METER, local_costs_compute
from opsportal.inventory.models import ComputeQuota, Endpoint
from opsportal.inventory.services import local_workspace_ensure
from opsportal.runtime.models import UsageRecord
from tests.conftest import client_for
from tests.factories import EndpointFactory, MembershipFactory, UserFactory, offering

pytestmark = pytest.mark.production_path
SMOL = "smollm2-135m-instruct"


@pytest.fixture
def local(world):
    workspace = local_workspace_ensure()
    MembershipFactory(team=workspace.team, user=world.operator, role=Role.OPERATOR)
    endpoint = EndpointFactory(
        workspace=workspace, name="smol", kind="serverless", offering=offering(SMOL)
    )
    return endpoint


def usage(endpoint, prompt: int, completion: int, *, at=None, status: int = 200) -> None:
    UsageRecord.objects.create(
        endpoint=endpoint,
        route="/v1/chat/completions",
        status_code=status,
        prompt_tokens=prompt,
        completion_tokens=completion,
        created_at=at or timezone.now(),
    )


def test_local_meters_are_tokens_times_catalog_prices_and_idempotent(local):
    today = timezone.localdate()
    usage(local, 1000, 400)
    usage(local, 500, 100)
    usage(local, 7, 0, status=401)  # metered, no tokens served
    usage(local, 2000, 2000, at=timezone.now() - timedelta(days=1))
    assert local_costs_compute() == 4
    local_costs_compute()  # twice changes nothing
    rows = {(r.day, r.meter): r for r in CostDaily.objects.filter(endpoint=local).order_by("day")}
    assert len(rows) == 4
    smol = offering(SMOL)
    inp, out = rows[(today, INPUT_METER)], rows[(today, OUTPUT_METER)]
    assert inp.quantity == Decimal("1.507") and inp.unit == "1K tokens"  # 1507 tokens
    assert inp.cost == Decimal(1507) * smol.input_price_per_million / 1_000_000
    assert out.cost == Decimal(500) * smol.output_price_per_million / 1_000_000
    assert (inp.team, inp.workspace, inp.offering, inp.source) == (
        local.workspace.team,
        local.workspace,
        smol,
        "local",
    )
    assert rows[(today - timedelta(days=1), INPUT_METER)].quantity == Decimal(2)
    # The rollups hold the same totals.
    assert sum(r.cost for r in CostRollup.objects.filter(day=today)) == inp.cost + out.cost
    assert CostWorkspaceDay.objects.get(day=today).cost == inp.cost + out.cost


def seed_cost(endpoint, day, meter, cost: str, quantity: str = "1") -> None:
    CostDaily.objects.create(
        source="azure",
        day=day,
        account=endpoint.workspace.account,
        resource_id=f"/saas/{endpoint.name}",
        meter=meter,
        quantity=Decimal(quantity),
        unit="1K tokens",
        cost=Decimal(cost),
        currency="USD",
        workspace=endpoint.workspace,
        endpoint=endpoint,
        offering=endpoint.offering,
        team=endpoint.workspace.team,
    )


def rebuild(*days):
    from opsportal.costs.services import rollups_rebuild

    rollups_rebuild(days=days)


def test_the_overview_totals_forecast_breakdowns_and_scope(world):
    today = timezone.localdate()
    first = today.replace(day=1)
    last_month = first - timedelta(days=1)
    seed_cost(world.endpoint_a, first, INPUT_METER, "10")
    seed_cost(world.endpoint_a, today, OUTPUT_METER, "5")
    seed_cost(world.endpoint_a, last_month, INPUT_METER, "7")
    seed_cost(world.endpoint_b, today, INPUT_METER, "100")  # another team's
    rebuild(first, today, last_month)
    o = cost_overview(user=world.viewer, month=today)
    assert o.total == Decimal(15) and o.last_month == Decimal(7)
    days_in_month = (
        first.replace(month=first.month % 12 + 1, year=first.year + first.month // 12) - first
    ).days
    assert o.forecast == (Decimal(15) / today.day * days_in_month).quantize(Decimal("0.01"))
    assert {r["meter"]: r["cost"] for r in o.by_meter} == {INPUT_METER: 10, OUTPUT_METER: 5}
    assert [r["workspace__name"] for r in o.by_workspace] == ["ws-alpha"]
    assert [r["team__name"] for r in o.by_team] == ["Alpha"]
    stacked = o.chart["datasets"]
    assert len(o.chart["labels"]) == days_in_month and sum(sum(d["data"]) for d in stacked) == 15
    assert cost_overview(user=world.outsider, month=today).total == Decimal(100)
    everything = cost_overview(user=UserFactory(is_superuser=True), month=today)
    assert everything.total == Decimal(115)
    by_ws = cost_overview(user=world.viewer, month=today, workspace_id=world.ws_a.pk)
    assert by_ws.total == Decimal(15)


def test_the_overview_page_chart_and_csv(world):
    today = timezone.localdate()
    seed_cost(world.endpoint_a, today, INPUT_METER, "1.25", "3")
    rebuild(today)
    client = client_for(world.viewer)
    page = client.get(reverse("costs")).content.decode()
    assert 'id="cost-chart"' in page and 'id="cost-chart-data"' in page
    assert "1.25" in page and INPUT_METER in page and "USD" in page
    assert "Data as of" in page
    response = client.get(reverse("costs_export"), {"month": today.strftime("%Y-%m")})
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows[0] == ["section", "name", "meter", "unit", "quantity", "cost", "currency"]
    (meter,) = [r for r in rows if r[0] == "meter"]
    assert meter[2:4] == [INPUT_METER, "1K tokens"] and meter[6] == "USD"
    assert (Decimal(meter[4]), Decimal(meter[5])) == (3, Decimal("1.25"))
    assert any(r[0] == "daily" and r[1] == today.isoformat() for r in rows)
    bad = client.get(reverse("costs"), {"month": "2026-13"})
    assert bad.status_code == 200 and "YYYY-MM" in bad.content.decode()
    other = client.get(reverse("costs"), {"month": "2001-01"}).content.decode()
    assert "No cost for January 2001" in other


def test_the_endpoint_tab_shows_meters_drift_and_gauges(local, world):
    usage(local, 3000, 1000)
    local_costs_compute()
    page = client_for(world.operator).get(local.get_absolute_url() + "?tab=usage").content.decode()
    assert INPUT_METER in page and OUTPUT_METER in page
    assert 'id="endpoint-chart"' in page
    assert "Estimate against the bill" in page and "0.0%" in page
    assert "Tokens, last minute" in page and "4000" in page
    csv_page = client_for(world.operator).get(reverse("endpoint_costs_export", args=[local.pk]))
    assert INPUT_METER in csv_page.content.decode()


def test_budgets_warn_on_the_dashboard(world):
    today = timezone.localdate()
    seed_cost(world.endpoint_a, today, INPUT_METER, "85")
    rebuild(today)
    Budget.objects.create(team=world.team_a, monthly_amount=Decimal(100), warn_percent=80)
    page = client_for(world.viewer).get(reverse("dashboard")).content.decode()
    assert "Budget warning" in page and "85.00 USD" in page
    assert "Beta" not in page.split("Budgets this month")[1].split("</section>")[0]
    # An admin sets a budget from the team page; the checks are field errors.
    client = client_for(world.admin)
    url = reverse("budget_set", args=["alpha"])
    bad = client.post(url, {"monthly_amount": "-5", "currency": "usd", "warn_percent": "80"})
    assert bad.status_code == 422 and "more than zero" in bad.content.decode()
    client.post(url, {"monthly_amount": "1000", "currency": "eur", "warn_percent": "90"})
    budget = Budget.objects.get(team=world.team_a)
    assert (budget.monthly_amount, budget.currency, budget.warn_percent) == (1000, "EUR", 90)


def test_local_gauges_measure_the_last_minute_and_the_busiest_minutes(local):
    smol = offering(SMOL)
    smol.tokens_per_minute, smol.requests_per_minute = 1000, 10
    smol.save()
    local.refresh_from_db()
    now = timezone.now()
    usage(local, 500, 350, at=now - timedelta(seconds=10))  # this minute: 850 tokens
    usage(local, 0, 0, at=now - timedelta(seconds=5), status=429)  # refused: not counted
    usage(local, 0, 0, at=now - timedelta(seconds=5), status=401)
    for _ in range(3):
        usage(local, 100, 100, at=now - timedelta(minutes=30))  # 3 requests, 600 tokens
    for _ in range(9):
        usage(local, 10, 10, at=now - timedelta(hours=5))  # 9 requests in one minute
    (q,) = endpoint_quotas([local], now=now)
    values = {g.label: (g.value, g.level) for g in q.gauges}
    assert values["Tokens, last minute"] == (850, "warn")
    assert values["Requests, last minute"] == (1, "ok")
    assert values["Tokens, busiest minute of the last hour"][0] == 850
    assert values["Requests, busiest minute of the last hour"][0] == 3
    assert values["Requests, busiest minute of the last day"] == (9, "warn")
    assert q.source == "measured" and q.warn


def test_azure_gauges_say_which_figure_is_billed_and_which_is_console_traffic(world):
    ep = EndpointFactory(workspace=world.ws_a, name="llama", kind="serverless", offering=offering())
    yesterday = timezone.localdate() - timedelta(days=1)
    seed_cost(ep, yesterday, INPUT_METER, "1", quantity="1440")  # 1,440,000 tokens in a day
    seed_cost(ep, yesterday, OUTPUT_METER, "1", quantity="144")
    ChatTurn.objects.create(
        user=world.operator,
        endpoint=ep,
        route="/v1/chat/completions",
        prompt="hi",
        request_body={},
        prompt_tokens=30,
        completion_tokens=20,
    )
    (q,) = endpoint_quotas([Endpoint.objects.select_related("workspace", "offering").get(pk=ep.pk)])
    billed, *console = q.gauges
    assert billed.label.startswith("Tokens, average over") and billed.value == 1100.0
    assert "billed" in billed.note
    assert {g.label: g.value for g in console}["Tokens, last minute"] == 50
    assert all("console" in g.note for g in console)
    assert "publishes no per-minute metrics" in q.explanation


def test_core_gauges_per_region_and_family(world):
    ComputeQuota.objects.create(
        account=world.ws_a.account, region="eastus2", family="standardNCFamily", used=20, limit=24
    )
    gauges = core_gauges(accounts=None, include_local=False)
    (g,) = gauges
    assert (g.value, g.limit, g.level) == (20, 24, "warn") and "eastus2" in g.label
    page = client_for(world.viewer).get(reverse("quota")).content.decode()
    assert "standardNCFamily" in page and "20 / 24 cores" in page
    page = client_for(world.outsider).get(reverse("quota")).content.decode()
    assert "standardNCFamily" not in page  # another team's subscription
