from django import forms
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
    from opsportal.costs.views import BudgetForm

    team = get_object_or_404(visible_teams(request.user), slug=slug)
    members = team.memberships.select_related("user").order_by("user__username")
    return render(
        request,
        "accounts/team_detail.html",
        {
            "team": team,
            "members": members,
            "workspaces": team.workspaces.filter(deleted_at__isnull=True).order_by("name"),
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
