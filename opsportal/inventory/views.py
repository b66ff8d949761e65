from django import forms
from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render

from opsportal.accounts.models import Role, Team
from opsportal.accounts.permissions import mutation
from opsportal.core.forms import plain_selects
from opsportal.core.htmx import partial_or_page
from opsportal.core.lists import query_of
from opsportal.inventory import selectors, services
from opsportal.inventory.models import Endpoint, Offering, ProvisioningState


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


def offerings_list(request: HttpRequest) -> HttpResponse:
    return render(request, "inventory/offerings.html", {"offerings": Offering.objects.all()})


def offering_detail(request: HttpRequest, slug: str) -> HttpResponse:
    offering = get_object_or_404(Offering, slug=slug)
    return render(request, "inventory/offering_detail.html", {"offering": offering})
