from django import forms
from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render

from opsportal.accounts.models import Role, Team
from opsportal.accounts.permissions import mutation, role_on
from opsportal.core.forms import plain_selects
from opsportal.core.htmx import partial_or_page
from opsportal.core.lists import query_of
from opsportal.costs.quota import endpoint_quotas
from opsportal.inventory import selectors, services
from opsportal.inventory.models import Endpoint, Offering, ProvisioningState
from opsportal.jobs.models import Job
from opsportal.jobs.selectors import visible_jobs
from opsportal.jobs.services import job_create


def accounts_list(request: HttpRequest) -> HttpResponse:
    from opsportal.providers.azure import azure_configuration

    configured, how = azure_configuration()
    return render(
        request,
        "inventory/accounts.html",
        {
            "accounts": selectors.accounts_with_counts(request.user),
            "azure_configured": configured,
            "azure_how": how,
            "last_sync": Job.objects.filter(kind=Job.Kind.AZURE_SYNC).first(),
        },
    )


@mutation(Role.ADMIN)
def azure_sync_start(request: HttpRequest) -> HttpResponse:
    """Sync every Azure subscription now (it spans all teams: superusers only)."""
    if not request.user.is_superuser:
        raise PermissionDenied("Syncing all Azure subscriptions needs a superuser.")
    with transaction.atomic():
        job = job_create(
            kind=Job.Kind.AZURE_SYNC,
            requested_by=request.user,
            target_label="all Azure subscriptions",
        )
    return HttpResponseRedirect(job.get_absolute_url())


def workspaces_list(request: HttpRequest) -> HttpResponse:
    page = Paginator(selectors.workspaces_with_counts(request.user), settings.OPSPORTAL_PAGE_SIZE)
    return partial_or_page(
        request,
        "inventory/workspaces.html",
        "results",
        {"page": page.get_page(request.GET.get("page"))},
    )


@mutation(Role.ADMIN)
def workspace_team(request: HttpRequest, pk: int) -> HttpResponse:
    """Superusers give an Azure workspace a team by hand (or hand it back to the Azure tag)."""
    if not request.user.is_superuser:
        raise PermissionDenied("Assigning workspaces to teams needs a superuser.")
    workspace = get_object_or_404(selectors.visible_workspaces(request.user), pk=pk)
    raw = request.POST.get("team", "")
    team = Team.objects.filter(pk=int(raw)).first() if raw.isdigit() else None
    if raw and team is None:
        raise Http404("No such team.")
    services.workspace_team_set(workspace=workspace, team=team, user=request.user)
    return HttpResponseRedirect(workspace.get_absolute_url())


def workspace_detail(request: HttpRequest, pk: int) -> HttpResponse:
    workspace = get_object_or_404(
        selectors.visible_workspaces(request.user).select_related("account", "team"), pk=pk
    )
    return render(
        request,
        "inventory/workspace_detail.html",
        {
            "workspace": workspace,
            "subscriptions": selectors.workspace_subscriptions(workspace),
            "endpoints": selectors.workspace_endpoints(workspace),
            "role": role_on(request.user, workspace.team_id),
            "teams": Team.objects.order_by("name") if request.user.is_superuser else [],
            "team_tag": settings.OPSPORTAL_TEAM_TAG,
            "quotas": endpoint_quotas(
                list(
                    workspace.endpoints.filter(kind="serverless", deleted_at__isnull=True)
                    .select_related("workspace", "offering")
                    .order_by("name")[:50]
                )
            ),
        },
    )


class EndpointFilterForm(forms.Form):
    q = forms.CharField(required=False, max_length=100, label="Search")
    kind = forms.ChoiceField(required=False, choices=[("", "Any kind"), *Endpoint.Kind.choices])
    state = forms.ChoiceField(
        required=False, choices=[("", "Any state"), *ProvisioningState.choices]
    )
    region = forms.ChoiceField(required=False)
    family = forms.ChoiceField(required=False)
    workspace = forms.TypedChoiceField(required=False, coerce=int, empty_value=None)
    team = forms.TypedChoiceField(required=False, coerce=int, empty_value=None)
    sort = forms.ChoiceField(
        required=False,
        choices=[
            ("", "Name A to Z"),
            ("-name", "Name Z to A"),
            ("state", "State"),
            ("region", "Region"),
            ("newest", "Newest"),
        ],
    )

    def __init__(self, *args, choices: dict[str, list[tuple[str, str]]], **kwargs) -> None:
        super().__init__(*args, label_suffix="", **kwargs)
        self.fields["region"].choices = [("", "Any region"), *choices["regions"]]
        self.fields["family"].choices = [("", "Any family"), *choices["families"]]
        self.fields["workspace"].choices = [("", "Any workspace"), *choices["workspaces"]]
        self.fields["team"].choices = [("", "Any team"), *choices["teams"]]

    def selects(self) -> list[dict[str, object]]:
        return plain_selects(self, [name for name in self.fields if name != "q"])

    def filters(self) -> selectors.EndpointFilters:
        # An invalid field drops out of cleaned_data (and shows its error); the rest still apply.
        self.is_valid()
        return selectors.EndpointFilters(
            **{k: v for k, v in self.cleaned_data.items() if v not in (None, "")}
        )


def endpoints_list(request: HttpRequest) -> HttpResponse:
    form = EndpointFilterForm(
        request.GET or None, choices=selectors.endpoint_filter_choices(request.user)
    )
    filters = form.filters() if form.is_bound else selectors.EndpointFilters()
    paginator = Paginator(
        selectors.endpoints_filtered(request.user, filters), settings.OPSPORTAL_PAGE_SIZE
    )
    page = paginator.get_page(request.GET.get("page"))
    query = query_of(request)
    return partial_or_page(
        request,
        "inventory/endpoints.html",
        "results",
        {"form": form, "selects": form.selects(), "page": page, "query": query},
    )


ENDPOINT_TABS = [
    ("overview", "Overview"),
    ("keys", "Keys"),
    ("jobs", "Jobs"),
    ("usage", "Usage & cost"),
    ("chat", "Test chat"),
]


def endpoint_detail(request: HttpRequest, pk: int) -> HttpResponse:
    endpoint = get_object_or_404(
        selectors.visible_endpoints(request.user).select_related(
            "workspace", "workspace__account", "workspace__team", "offering"
        ),
        pk=pk,
    )
    tab = request.GET.get("tab", "overview")
    if tab not in dict(ENDPOINT_TABS):
        tab = "overview"
    context = {
        "endpoint": endpoint,
        "tab": tab,
        "tabs": ENDPOINT_TABS,
        "role": role_on(request.user, endpoint.workspace.team_id),
    }
    if tab == "overview":
        context["deployments"] = endpoint.deployments.filter(deleted_at__isnull=True)
    elif tab == "jobs":
        context["jobs"] = visible_jobs(request.user).filter(endpoint=endpoint)[:50]
    elif tab == "chat":
        from opsportal.chat.views import tab_context

        context.update(tab_context(request, endpoint))
    elif tab == "keys":
        from opsportal.keys.views import keys_context

        context.update(keys_context(request, endpoint))
    elif tab == "usage":
        from opsportal.costs.views import endpoint_cost_context

        context["requests"] = endpoint.usage_records.order_by("-created_at", "-pk")[:50]
        context.update(endpoint_cost_context(endpoint))
    return partial_or_page(request, "inventory/endpoint_detail.html", "tab", context)


def offerings_list(request: HttpRequest) -> HttpResponse:
    return render(request, "inventory/offerings.html", {"offerings": Offering.objects.all()})


def offering_detail(request: HttpRequest, slug: str) -> HttpResponse:
    offering = get_object_or_404(Offering, slug=slug)
    return render(request, "inventory/offering_detail.html", {"offering": offering})
