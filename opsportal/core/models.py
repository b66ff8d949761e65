"""What every app builds on: rows that are deleted by marking them (`deleted_at`), and the audit
log (who did what to which object, when, with what result; every app records into it through
opsportal.core.audit.audit_record, and it never holds a secret)."""

from typing import Self

from django.conf import settings
from django.db import models
from django.db.models import Q


def alive(path: str = "") -> Q:
    """Rows not marked deleted, for filters that cross a relation: alive("endpoints") keeps the
    endpoints that are still there, e.g. in Count(..., filter=alive("endpoints"))."""
    return Q(**{f"{path}__deleted_at__isnull" if path else "deleted_at__isnull": True})


class LiveQuerySet(models.QuerySet):
    """The queryset of models deleted by marking `deleted_at` (kept for history and cost)."""

    def alive(self) -> Self:
        return self.filter(deleted_at__isnull=True)


class AuditEvent(models.Model):
    """Who did what to which object, when, with what result; never a secret."""

    class Result(models.TextChoices):
        OK = "ok", "Succeeded"
        FAILED = "failed", "Failed"
        DENIED = "denied", "Denied"

    at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True
    )
    # Kept as text too: the event outlives the user, and scheduled work has no user.
    actor_label = models.CharField(max_length=200)
    action = models.CharField(max_length=60, db_index=True)
    object_type = models.CharField(max_length=40)
    object_label = models.CharField(max_length=300)
    workspace = models.ForeignKey(
        "inventory.Workspace", on_delete=models.SET_NULL, null=True, blank=True
    )
    endpoint = models.ForeignKey(
        "inventory.Endpoint",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="audit_events",
    )
    job = models.ForeignKey("jobs.Job", on_delete=models.SET_NULL, null=True, blank=True)
    result = models.CharField(max_length=10, choices=Result.choices, default=Result.OK)
    detail = models.TextField(blank=True)
    correlation_id = models.UUIDField(null=True, blank=True, db_index=True)

    class Meta:
        ordering = ["-at", "-id"]
        # The table it has had since it lived in the jobs app.
        db_table = "jobs_auditevent"

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor_label} {self.action} {self.object_label}"
