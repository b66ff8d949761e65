from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractUser
from django.db import transaction

from opsportal.accounts.models import Membership, Role, Team


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
    from opsportal.jobs.services import audit_record

    with transaction.atomic():
        team = Team.objects.create(name=name, slug=slug)
        Membership.objects.create(team=team, user=user, role=Role.ADMIN)
        audit_record(actor=user, action="team.create", object_type="team", object_label=team.name)
    return team
