"""Reads for the inventory pages. Every query is scoped to what the user may see."""

from dataclasses import dataclass

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Count, Q, QuerySet
from django.http import Http404, HttpRequest
from django.shortcuts import get_object_or_404

from opsportal.accounts.permissions import require_role, team_ids_for
from opsportal.core.models import alive
from opsportal.inventory.models import (
    ATTENTION_STATES,
    CloudAccount,
    Endpoint,
    MarketplaceSubscription,
    Offering,
    Workspace,
)

User = AbstractBaseUser | AnonymousUser


def visible_workspaces(user: User) -> QuerySet[Workspace]:
    qs = Workspace.objects.alive()
    if user.is_superuser:
        return qs
    return qs.filter(team_id__in=team_ids_for(user))


def visible_endpoints(user: User) -> QuerySet[Endpoint]:
    qs = Endpoint.objects.alive().filter(alive("workspace"))
    if user.is_superuser:
        return qs
    return qs.filter(workspace__team_id__in=team_ids_for(user))


def endpoint_for(
    request: HttpRequest, pk: int, role: str | None = None, *, kind: str | None = None
) -> Endpoint:
    """The endpoint a page or action is about: 404 unless the signed-in user may see it (or it
    is not of `kind`), 403 unless they hold `role` on its team when a role is named."""
    endpoint = get_object_or_404(
        visible_endpoints(request.user).select_related(
            "workspace", "workspace__account", "workspace__team", "offering"
        ),
        pk=pk,
    )
    if kind is not None and endpoint.kind != kind:
        raise Http404(f"Only {kind} endpoints have this page.")
    if role is not None:
        require_role(request.user, endpoint.workspace.team_id, role)
    return endpoint


def visible_accounts(user: User) -> QuerySet[CloudAccount]:
    if user.is_superuser:
        return CloudAccount.objects.all()
    return CloudAccount.objects.filter(pk__in=visible_workspaces(user).values("account_id"))


def accounts_with_counts(user: User) -> QuerySet[CloudAccount]:
    ws_filter = alive("workspaces")
    if not user.is_superuser:
        ws_filter &= Q(workspaces__team_id__in=team_ids_for(user))
    return visible_accounts(user).annotate(
        workspace_count=Count("workspaces", filter=ws_filter, distinct=True)
    )


def workspaces_with_counts(user: User) -> QuerySet[Workspace]:
    return (
        visible_workspaces(user)
        .select_related("account", "team")
        .annotate(endpoint_count=Count("endpoints", filter=alive("endpoints"), distinct=True))
        .order_by("name", "pk")
    )


def workspace_subscriptions(workspace: Workspace) -> QuerySet[MarketplaceSubscription]:
    return (
        workspace.marketplace_subscriptions.alive()
        .select_related("offering")
        .order_by("offering__family", "offering__model_name")
    )


def workspace_endpoints(workspace: Workspace) -> QuerySet[Endpoint]:
    return (
        workspace.endpoints.alive()
        .select_related("offering")
        .annotate(deployment_count=Count("deployments", filter=alive("deployments"), distinct=True))
        .order_by("name")
    )


@dataclass(frozen=True)
class EndpointFilters:
    q: str = ""
    kind: str = ""
    state: str = ""
    region: str = ""
    family: str = ""
    workspace: int | None = None
    team: int | None = None
    sort: str = "name"


SORTS = {
    "name": ("name", "pk"),
    "-name": ("-name", "-pk"),
    "state": ("provisioning_state", "name", "pk"),
    "region": ("region", "name", "pk"),
    "newest": ("-created_at", "-pk"),
}


def endpoints_filtered(user: User, filters: EndpointFilters) -> QuerySet[Endpoint]:
    qs = visible_endpoints(user).select_related("workspace", "workspace__team", "offering")
    if filters.q:
        # The catalog is small: match it first, so the endpoint scan needs no join in its OR.
        offering_ids = list(
            Offering.objects.filter(model_name__icontains=filters.q).values_list("pk", flat=True)
        )
        qs = qs.filter(Q(name__icontains=filters.q) | Q(offering_id__in=offering_ids))
    if filters.kind:
        qs = qs.filter(kind=filters.kind)
    if filters.state:
        qs = qs.filter(provisioning_state=filters.state)
    if filters.region:
        qs = qs.filter(region=filters.region)
    if filters.family:
        qs = qs.filter(offering_id__in=Offering.objects.filter(family=filters.family).values("pk"))
    if filters.workspace:
        qs = qs.filter(workspace_id=filters.workspace)
    if filters.team:
        qs = qs.filter(workspace__team_id=filters.team)
    return qs.order_by(*SORTS.get(filters.sort, SORTS["name"]))


def endpoint_filter_choices(user: User) -> dict[str, list[tuple[str, str]]]:
    """Options for the filter bar, from what the user can see (four small queries)."""
    workspaces = visible_workspaces(user)
    regions = workspaces.order_by("region").values_list("region", flat=True).distinct()
    families = Offering.objects.order_by("family").values_list("family", flat=True).distinct()
    teams = (
        workspaces.exclude(team=None)
        .order_by("team__name")
        .values_list("team_id", "team__name")
        .distinct()
    )
    return {
        "regions": [(r, r) for r in regions],
        "families": [(f, f) for f in families],
        "workspaces": [
            (str(pk), name) for pk, name in workspaces.order_by("name").values_list("pk", "name")
        ],
        "teams": [(str(pk), name) for pk, name in teams],
    }


def dashboard_counts(user: User) -> dict[str, int]:
    endpoints = visible_endpoints(user).aggregate(
        endpoints=Count("pk"),
        serverless=Count("pk", filter=Q(kind=Endpoint.Kind.SERVERLESS)),
        managed=Count("pk", filter=Q(kind=Endpoint.Kind.MANAGED)),
        attention=Count("pk", filter=Q(provisioning_state__in=ATTENTION_STATES)),
    )
    workspaces = visible_workspaces(user).aggregate(
        workspaces=Count("pk"), accounts=Count("account", distinct=True)
    )
    subscriptions = (
        MarketplaceSubscription.objects.alive()
        .filter(workspace__in=visible_workspaces(user))
        .count()
    )
    return {**endpoints, **workspaces, "subscriptions": subscriptions}


def endpoints_needing_attention(user: User, limit: int = 10) -> QuerySet[Endpoint]:
    return (
        visible_endpoints(user)
        .filter(provisioning_state__in=ATTENTION_STATES)
        .select_related("workspace", "offering")
        .order_by("-updated_at", "-pk")[:limit]
    )
