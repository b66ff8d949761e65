from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser, AbstractUser
from django.db import transaction

from opsportal.accounts.models import Membership, Role, Team
from opsportal.core.audit import audit_record


class LastAdmin(Exception):
    """The change would leave a team without an admin."""

    message = "A team keeps at least one admin."


@transaction.atomic
def admin_user_ensure(
    *, email: str, password: str | None, team: Team | None
) -> tuple[AbstractUser, bool]:
    """A superuser with this email (also its username); password set only when it is new."""
    user_model = get_user_model()
    user, created = user_model.objects.get_or_create(
        username=email, defaults={"email": email, "is_staff": True, "is_superuser": True}
    )
    if created:
        if password:
            user.set_password(password)
        else:
            user.set_unusable_password()
        user.save()
    if team is not None:
        Membership.objects.get_or_create(team=team, user=user, defaults={"role": Role.ADMIN})
    return user, created


def team_create(*, name: str, slug: str, user: AbstractUser) -> Team:
    """A new team; whoever made it (a superuser) is its first admin."""
    with transaction.atomic():
        team = Team.objects.create(name=name, slug=slug)
        Membership.objects.create(team=team, user=user, role=Role.ADMIN)
        audit_record(actor=user, action="team.create", object_type="team", object_label=team.name)
    return team


def _member_audit(action: str, *, actor: Any, membership: Membership, detail: str) -> None:
    # Membership is what grants roles (and key reveal): every change is on the record.
    audit_record(
        actor=actor,
        action=action,
        object_type="team",
        object_label=f"{membership.team.name}: {membership.user.get_username()}",
        detail=detail,
    )


def _leaves_no_admin(membership: Membership, new_role: str | None) -> bool:
    if membership.role != Role.ADMIN or new_role == Role.ADMIN:
        return False
    return (
        not membership.team.memberships.filter(role=Role.ADMIN).exclude(pk=membership.pk).exists()
    )


@transaction.atomic
def member_add(
    *, team: Team, user: AbstractBaseUser, role: str, actor: Any
) -> tuple[Membership, bool]:
    """Add a user to a team, or change the role of one who is in it: (membership, created)."""
    existing = Membership.objects.filter(team=team, user=user).first()
    if existing is not None:
        return member_change(membership=existing, role=role, actor=actor), False
    membership = Membership.objects.create(team=team, user=user, role=role)
    _member_audit("member.add", actor=actor, membership=membership, detail=role)
    return membership, True


@transaction.atomic
def member_change(*, membership: Membership, role: str, actor: Any) -> Membership:
    if _leaves_no_admin(membership, role):
        raise LastAdmin
    before = membership.role
    if before != role:
        membership.role = role
        membership.save(update_fields=["role"])
        _member_audit(
            "member.change", actor=actor, membership=membership, detail=f"{before} -> {role}"
        )
    return membership


@transaction.atomic
def member_remove(*, membership: Membership, actor: Any) -> None:
    if _leaves_no_admin(membership, None):
        raise LastAdmin
    _member_audit("member.remove", actor=actor, membership=membership, detail=membership.role)
    membership.delete()
