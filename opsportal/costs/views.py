import csv
from datetime import date
from typing import Any

from django import forms
from django.conf import settings
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone

from opsportal.accounts.models import Role
from opsportal.accounts.permissions import mutation, require_role, visible_teams
from opsportal.core.audit import audit_record
from opsportal.core.forms import plain_selects
from opsportal.core.htmx import partial_or_page
from opsportal.costs import quota as quotas
from opsportal.costs.models import Budget, CostDaily
from opsportal.costs.selectors import cost_overview, meter_days
from opsportal.inventory import selectors
from opsportal.inventory.models import Endpoint, MarketplaceSubscription


class CostFilterForm(forms.Form):
    month = forms.CharField(required=False, max_length=7, label="Month")
    team = forms.TypedChoiceField(required=False, coerce=int, empty_value=None)
    workspace = forms.TypedChoiceField(required=False, coerce=int, empty_value=None)

    def __init__(self, *args: Any, user: Any, **kwargs: Any) -> None:
        super().__init__(*args, label_suffix="", **kwargs)
        self.fields["month"].widget = forms.TextInput(attrs={"type": "month"})
        self.fields["team"].choices = [("", "All teams")] + [
            (t.pk, t.name) for t in visible_teams(user).order_by("name")
        ]
        self.fields["workspace"].choices = [("", "All workspaces")] + [
            (w.pk, w.name)
            for w in selectors.visible_workspaces(user).order_by("name").only("pk", "name")
        ]

    def selects(self) -> list[dict[str, Any]]:
        return plain_selects(self, ["team", "workspace"])

    def clean_month(self) -> date:
        raw = self.cleaned_data.get("month") or ""
        if not raw:
            return timezone.localdate().replace(day=1)
        try:
            year, month = (int(x) for x in raw.split("-"))
            return date(year, month, 1)
        except ValueError:
            raise forms.ValidationError("Give the month as YYYY-MM.") from None


def _overview(request: HttpRequest) -> tuple[CostFilterForm, Any]:
    form = CostFilterForm(request.GET or None, user=request.user)
    data = form.cleaned_data if form.is_bound and form.is_valid() else {}
    month = data.get("month") or timezone.localdate().replace(day=1)
    overview = cost_overview(
        user=request.user,
        month=month,
        team_id=data.get("team"),
        workspace_id=data.get("workspace"),
    )
    return form, overview


def costs_overview(request: HttpRequest) -> HttpResponse:
    form, overview = _overview(request)
    context = {"form": form, "o": overview, "query": request.GET.urlencode()}
    return partial_or_page(request, "costs/overview.html", "results", context)


def _csv(filename: str) -> tuple[HttpResponse, Any]:
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response, csv.writer(response)


def costs_export(request: HttpRequest) -> HttpResponse:
    """The overview as on screen: totals and every breakdown, one section per table."""
    _, o = _overview(request)
    response, out = _csv(f"opsportal-costs-{o.month:%Y-%m}.csv")
    out.writerow(["section", "name", "meter", "unit", "quantity", "cost", "currency"])
    out.writerow(["total", f"{o.month:%Y-%m}", "", "", "", o.total, o.currency])
    out.writerow(["last month", "", "", "", "", o.last_month, o.currency])
    if o.forecast is not None:
        out.writerow(["forecast", f"{o.month:%Y-%m}", "", "", "", o.forecast, o.currency])
    for r in o.by_offering:
        out.writerow(
            ["offering", r["offering__model_name"] or "unmapped", "", "", "", r["cost"], o.currency]
        )
    for r in o.by_meter:
        out.writerow(["meter", "", r["meter"], r["unit"], r["quantity"], r["cost"], o.currency])
    for r in o.by_workspace:
        out.writerow(
            ["workspace", r["workspace__name"] or "unmapped", "", "", "", r["cost"], o.currency]
        )
    for r in o.by_team:
        out.writerow(["team", r["team__name"] or "no team", "", "", "", r["cost"], o.currency])
    labels = o.chart["labels"]
    for dataset in o.chart["datasets"]:
        for day, value in zip(labels, dataset["data"], strict=True):
            if value:
                out.writerow(
                    ["daily", f"{o.month:%Y-%m}-{day}", dataset["label"], "", "", value, o.currency]
                )
    return response


def meter_rows_csv(filename: str, qs: QuerySet) -> HttpResponse:
    response, out = _csv(filename)
    out.writerow(["day", "meter", "quantity", "unit", "cost", "currency", "source"])
    for r in meter_days(qs, days=90).rows:
        out.writerow(
            [r["day"], r["meter"], r["quantity"], r["unit"], r["cost"], r["currency"], r["source"]]
        )
    return response


def endpoint_costs_export(request: HttpRequest, pk: int) -> HttpResponse:
    endpoint = selectors.endpoint_for(request, pk)
    return meter_rows_csv(
        f"opsportal-{endpoint.name}-costs.csv", CostDaily.objects.filter(endpoint=endpoint)
    )


def endpoint_cost_context(endpoint: Endpoint) -> dict[str, Any]:
    """The endpoint page's usage and cost tab: meters, drift, quota gauges."""
    (quota,) = quotas.endpoint_quotas([endpoint]) if endpoint.kind == "serverless" else [None]
    return {
        "costs": meter_days(
            CostDaily.objects.filter(endpoint=endpoint), offering=endpoint.offering
        ),
        "quota": quota,
    }


def _subscription(request: HttpRequest, pk: int) -> MarketplaceSubscription:
    return get_object_or_404(
        MarketplaceSubscription.objects.select_related("workspace", "offering").filter(
            workspace__in=selectors.visible_workspaces(request.user)
        ),
        pk=pk,
    )


def marketplace_subscription_detail(request: HttpRequest, pk: int) -> HttpResponse:
    sub = _subscription(request, pk)
    endpoints = sub.workspace.endpoints.alive().filter(offering=sub.offering, kind="serverless")
    return render(
        request,
        "costs/subscription.html",
        {
            "sub": sub,
            "endpoints": endpoints,
            "costs": meter_days(
                CostDaily.objects.filter(marketplace_subscription=sub), offering=sub.offering
            ),
        },
    )


def marketplace_subscription_export(request: HttpRequest, pk: int) -> HttpResponse:
    sub = _subscription(request, pk)
    return meter_rows_csv(
        f"opsportal-{sub.name}-costs.csv", CostDaily.objects.filter(marketplace_subscription=sub)
    )


def quota_overview(request: HttpRequest) -> HttpResponse:
    endpoints = (
        selectors.visible_endpoints(request.user)
        .filter(kind="serverless")
        .select_related("workspace", "offering")
        .order_by("name")
    )
    # Each endpoint is a block of gauges: half a page of them.
    page = Paginator(endpoints, max(10, settings.OPSPORTAL_PAGE_SIZE // 2)).get_page(
        request.GET.get("page")
    )
    accounts = selectors.visible_accounts(request.user)
    return render(
        request,
        "costs/quota.html",
        {
            "page": page,
            "quotas": quotas.endpoint_quotas(list(page.object_list)),
            "cores": quotas.core_gauges(accounts=accounts, include_local=True),
        },
    )


class BudgetForm(forms.ModelForm):
    class Meta:
        model = Budget
        fields = ["monthly_amount", "currency", "warn_percent"]
        labels = {"monthly_amount": "Monthly budget", "warn_percent": "Warn at (%)"}

    def clean_currency(self) -> str:
        value = self.cleaned_data["currency"].upper()
        if len(value) != 3 or not value.isalpha():
            raise forms.ValidationError("A three-letter currency code, e.g. USD.")
        return value

    def clean_monthly_amount(self) -> Any:
        value = self.cleaned_data["monthly_amount"]
        if value <= 0:
            raise forms.ValidationError("The budget must be more than zero.")
        return value

    def clean_warn_percent(self) -> int:
        value = self.cleaned_data["warn_percent"]
        if not 1 <= value <= 100:
            raise forms.ValidationError("Between 1 and 100.")
        return value


@mutation(Role.ADMIN)
def budget_set(request: HttpRequest, slug: str) -> HttpResponse:
    team = get_object_or_404(visible_teams(request.user), slug=slug)
    require_role(request.user, team, Role.ADMIN)
    budget = Budget.objects.filter(team=team).first()
    form = BudgetForm(request.POST, instance=budget or Budget(team=team))
    if not form.is_valid():
        return render(
            request, "costs/_budget_form.html", {"team": team, "budget_form": form}, status=422
        )
    saved = form.save()
    audit_record(
        actor=request.user,
        action="budget.set",
        object_type="team",
        object_label=team.name,
        detail=f"{saved.monthly_amount} {saved.currency} per month, warn at {saved.warn_percent}%",
    )
    return redirect(team.get_absolute_url())
