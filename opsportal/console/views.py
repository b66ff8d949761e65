from typing import Any

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db.models import Count
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.utils.text import slugify

from opsportal.accounts import services
from opsportal.accounts.models import Role, Team
from opsportal.accounts.permissions import mutation, require_role, role_on, visible_teams
from opsportal.chat.views import tab_context as chat_context
from opsportal.core.htmx import partial_or_page
from opsportal.costs.quota import endpoint_quotas
from opsportal.costs.selectors import budget_statuses
from opsportal.costs.views import BudgetForm, endpoint_cost_context
from opsportal.inventory import selectors
from opsportal.inventory.models import Endpoint
from opsportal.jobs.selectors import recent_jobs, visible_jobs
from opsportal.keys.views import keys_context


class TeamForm(forms.Form):
    name = forms.CharField(max_length=100)
    slug = forms.SlugField(
        max_length=100,
        required=False,
        help_text="Short name in URLs and in the Azure team tag; made from the name if empty.",
    )

    def clean(self) -> dict[str, object]:
        data = super().clean()
        name = (data.get("name") or "").strip()
        slug = data.get("slug") or slugify(name)
        if not slug or slug == "new":
            self.add_error("slug", "Give the team a slug of letters, digits or hyphens.")
        elif Team.objects.filter(slug=slug).exists():
            self.add_error("slug", f"A team with the slug {slug} exists.")
        if name and Team.objects.filter(name__iexact=name).exists():
            self.add_error("name", f"A team named {name} exists.")
        data["name"], data["slug"] = name, slug
        return data


def teams_list(
    request: HttpRequest, form: TeamForm | None = None, status: int = 200
) -> HttpResponse:
    teams = visible_teams(request.user).annotate(
        member_count=Count("memberships", distinct=True),
        workspace_count=Count("workspaces", distinct=True),
    )
    return render(
        request,
        "accounts/teams.html",
        {"teams": teams, "form": form or TeamForm()},
        status=status,
    )


@mutation(Role.ADMIN)
def team_create(request: HttpRequest) -> HttpResponse:
    if not request.user.is_superuser:
        raise PermissionDenied("Creating teams needs a superuser.")
    form = TeamForm(request.POST)
    if not form.is_valid():
        return teams_list(request, form, status=422)
    team = services.team_create(
        name=form.cleaned_data["name"], slug=form.cleaned_data["slug"], user=request.user
    )
    return HttpResponseRedirect(team.get_absolute_url())


class MemberForm(forms.Form):
    email = forms.CharField(label="User (email or username)", max_length=150)
    role = forms.ChoiceField(choices=Role.choices, initial=Role.VIEWER)

    def clean_email(self) -> object:
        value = self.cleaned_data["email"].strip()
        user_model = get_user_model()
        user = (
            user_model.objects.filter(username__iexact=value).first()
            or user_model.objects.filter(email__iexact=value).first()
        )
        if user is None:
            raise forms.ValidationError("No user with that email or username.")
        return user


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)


def team_detail(request: HttpRequest, slug: str, form: MemberForm | None = None) -> HttpResponse:
    team = get_object_or_404(visible_teams(request.user), slug=slug)
    members = team.memberships.select_related("user").order_by("user__username")
    return render(
        request,
        "accounts/team_detail.html",
        {
            "team": team,
            "members": members,
            "workspaces": team.workspaces.alive().order_by("name"),
            "role": role_on(request.user, team),
            "form": form or MemberForm(),
            "roles": Role.choices,
            "budget_form": BudgetForm(instance=getattr(team, "budget", None)),
        },
    )


def _team_for_admin(request: HttpRequest, slug: str) -> Team:
    team = get_object_or_404(visible_teams(request.user), slug=slug)
    require_role(request.user, team, Role.ADMIN)
    return team


@mutation(Role.ADMIN)
def member_add(request: HttpRequest, slug: str) -> HttpResponse:
    team = _team_for_admin(request, slug)
    form = MemberForm(request.POST)
    if not form.is_valid():
        response = team_detail(request, slug, form=form)
        response.status_code = 400
        return response
    user = form.cleaned_data["email"]
    try:
        membership, created = services.member_add(
            team=team, user=user, role=form.cleaned_data["role"], actor=request.user
        )
    except services.LastAdmin as exc:
        messages.error(request, exc.message)
        return HttpResponseRedirect(team.get_absolute_url())
    verb = "added" if created else "updated"
    messages.success(request, f"{user.get_username()} {verb} as {membership.get_role_display()}.")
    return HttpResponseRedirect(team.get_absolute_url())


@mutation(Role.ADMIN)
def member_update(request: HttpRequest, slug: str, member_id: int) -> HttpResponse:
    team = _team_for_admin(request, slug)
    membership = get_object_or_404(team.memberships, pk=member_id)
    form = RoleForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose viewer, operator or admin.")
        return HttpResponseRedirect(team.get_absolute_url())
    try:
        services.member_change(
            membership=membership, role=form.cleaned_data["role"], actor=request.user
        )
    except services.LastAdmin as exc:
        messages.error(request, exc.message)
        return HttpResponseRedirect(team.get_absolute_url())
    messages.success(request, f"{membership.user.get_username()} is now {membership.role}.")
    return HttpResponseRedirect(team.get_absolute_url())


@mutation(Role.ADMIN)
def member_remove(request: HttpRequest, slug: str, member_id: int) -> HttpResponse:
    team = _team_for_admin(request, slug)
    membership = get_object_or_404(team.memberships, pk=member_id)
    try:
        services.member_remove(membership=membership, actor=request.user)
    except services.LastAdmin as exc:
        messages.error(request, exc.message)
        return HttpResponseRedirect(team.get_absolute_url())
    messages.success(request, f"{membership.user.get_username()} removed from {team.name}.")
    return HttpResponseRedirect(team.get_absolute_url())


# --- pages that bring several apps together ---------------------------------------------------


def dashboard(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "core/dashboard.html",
        {
            "counts": selectors.dashboard_counts(request.user),
            "attention": selectors.endpoints_needing_attention(request.user),
            "jobs": recent_jobs(request.user, limit=10),
            "budgets": budget_statuses(user=request.user),
        },
    )


def workspace_detail(request: HttpRequest, pk: int) -> HttpResponse:
    workspace = get_object_or_404(
        selectors.visible_workspaces(request.user).select_related("account", "team"), pk=pk
    )
    serverless = selectors.workspace_endpoints(workspace).filter(kind=Endpoint.Kind.SERVERLESS)
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
            "quotas": endpoint_quotas(list(serverless.select_related("workspace")[:50])),
        },
    )


def _overview_tab(request: HttpRequest, endpoint: Endpoint) -> dict[str, Any]:
    return {"deployments": endpoint.deployments.alive()}


def _jobs_tab(request: HttpRequest, endpoint: Endpoint) -> dict[str, Any]:
    return {"jobs": visible_jobs(request.user).filter(endpoint=endpoint)[:50]}


def _usage_tab(request: HttpRequest, endpoint: Endpoint) -> dict[str, Any]:
    return {
        "requests": endpoint.usage_records.order_by("-created_at", "-pk")[:50],
        **endpoint_cost_context(endpoint),
    }


# The endpoint page's tabs, each filled by the app it belongs to.
ENDPOINT_TABS = {
    "overview": ("Overview", _overview_tab),
    "keys": ("Keys", keys_context),
    "jobs": ("Jobs", _jobs_tab),
    "usage": ("Usage & cost", _usage_tab),
    "chat": ("Test chat", chat_context),
}


def endpoint_detail(request: HttpRequest, pk: int) -> HttpResponse:
    endpoint = selectors.endpoint_for(request, pk)
    tab = request.GET.get("tab", "overview")
    tab = tab if tab in ENDPOINT_TABS else "overview"
    context = {
        "endpoint": endpoint,
        "tab": tab,
        "tabs": [(key, value[0]) for key, value in ENDPOINT_TABS.items()],
        "role": role_on(request.user, endpoint.workspace.team_id),
        **ENDPOINT_TABS[tab][1](request, endpoint),
    }
    return partial_or_page(request, "inventory/endpoint_detail.html", "tab", context)
