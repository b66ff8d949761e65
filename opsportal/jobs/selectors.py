from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Q, QuerySet

from opsportal.accounts.permissions import team_ids_for
from opsportal.core.models import AuditEvent
from opsportal.jobs.models import Job

User = AbstractBaseUser | AnonymousUser


def visible_jobs(user: User) -> QuerySet[Job]:
    """Jobs on workspaces the user sees; jobs with no workspace only to whoever asked."""
    qs = Job.objects.select_related("requested_by", "endpoint", "workspace")
    if user.is_superuser:
        return qs
    return qs.filter(Q(workspace__team_id__in=team_ids_for(user)) | Q(requested_by=user))


def recent_jobs(user: User, *, limit: int = 10) -> QuerySet[Job]:
    return visible_jobs(user)[:limit]


def visible_audit_events(user: User) -> QuerySet[AuditEvent]:
    """Events on workspaces the user sees; events with no workspace only to superusers and
    to the person who acted."""
    qs = AuditEvent.objects.select_related("actor", "endpoint", "job")
    if user.is_superuser:
        return qs
    return qs.filter(Q(workspace__team_id__in=team_ids_for(user)) | Q(actor=user))
