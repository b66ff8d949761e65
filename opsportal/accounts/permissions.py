"""Who may see and do what. Teams own workspaces; everything under a workspace follows it.

Seeing: superusers see everything; others see the workspaces of their teams (another team's
object is a 404, so its existence is not revealed). Doing: a mutation needs a role on the
owning team (viewer < operator < admin); a visible object without the role is a 403.
"""

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_POST

from opsportal.accounts.models import ROLE_RANK, Membership, Role, Team

User = AbstractBaseUser | AnonymousUser


def team_ids_for(user: User) -> list[int]:
    """The teams a user belongs to, cached on the user object for the request."""
    cached = getattr(user, "_opsportal_team_ids", None)
    if cached is None:
        cached = list(Membership.objects.filter(user=user).values_list("team_id", flat=True))
        user._opsportal_team_ids = cached  # type: ignore[union-attr]
    return cached


def visible_teams(user: User) -> QuerySet[Team]:
    if user.is_superuser:
        return Team.objects.all()
    return Team.objects.filter(pk__in=team_ids_for(user))


def role_on(user: User, team: Team | int | None) -> str | None:
    """The user's role on a team, or None. Superusers act as admins everywhere."""
    if user.is_superuser:
        return Role.ADMIN
    if team is None or not user.is_authenticated:
        return None
    team_id = team if isinstance(team, int) else team.pk
    return (
        Membership.objects.filter(user=user, team_id=team_id).values_list("role", flat=True).first()
    )


def has_role(user: User, team: Team | int | None, role: str) -> bool:
    held = role_on(user, team)
    return held is not None and ROLE_RANK[Role(held)] >= ROLE_RANK[Role(role)]


def team_ids_with_role(user: User, role: str) -> set[int] | None:
    """Teams on which the user holds `role` or better, in one query; None means all teams."""
    if user.is_superuser:
        return None
    roles = [r for r, rank in ROLE_RANK.items() if rank >= ROLE_RANK[Role(role)]]
    return set(
        Membership.objects.filter(user=user, role__in=roles).values_list("team_id", flat=True)
    )


def require_role(user: User, team: Team | int | None, role: str) -> None:
    if not has_role(user, team, role):
        raise PermissionDenied(f"This needs the {role} role on the owning team.")


def mutation(role: str) -> Callable[[Callable[..., HttpResponse]], Callable[..., HttpResponse]]:
    """Mark a view as a mutation: POST only, and the view must call require_role(role).

    The mark lets the test suite find every mutation and prove a viewer gets 403 on each.
    """

    def decorate(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @require_POST
        @wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            return view(request, *args, **kwargs)

        wrapped.mutation_role = role  # type: ignore[attr-defined]
        return wrapped

    return decorate
