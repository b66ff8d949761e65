"""Background work as rows: what was asked, by whom, how far it got, and how it ended."""

import uuid

from django.conf import settings
from django.db import models
from django.urls import reverse


class Job(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    class Kind(models.TextChoices):
        DEPLOY = "deploy", "Deploy"
        DELETE = "delete", "Delete endpoint"
        KEY_ROTATION = "key-rotation", "Key rotation"
        AZURE_SYNC = "azure-sync", "Azure sync"
        SCALE = "deployment-scale", "Scale deployment"
        TRAFFIC = "traffic", "Traffic split"
        DEPLOYMENT_DELETE = "deployment-delete", "Remove deployment"

    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    kind = models.CharField(max_length=40, choices=Kind.choices)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    progress = models.PositiveSmallIntegerField(default=0)
    step = models.CharField(max_length=200, blank=True)
    log = models.JSONField(default=list, blank=True)
    error = models.TextField(blank=True)
    # The objects a job acts on; they decide who may see it.
    workspace = models.ForeignKey(
        "inventory.Workspace", on_delete=models.SET_NULL, null=True, blank=True, related_name="jobs"
    )
    endpoint = models.ForeignKey(
        "inventory.Endpoint", on_delete=models.SET_NULL, null=True, blank=True, related_name="jobs"
    )
    target_label = models.CharField(max_length=200, blank=True)
    # What the job was asked to do, never a secret: a retry or a resume runs from these.
    params = models.JSONField(default=dict, blank=True)
    # Steps already done, so a re-run after a lost worker continues instead of repeating them.
    state = models.JSONField(default=dict, blank=True)
    cancel_requested = models.BooleanField(default=False)
    attempts = models.PositiveSmallIntegerField(default=0)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    retry_of = models.ForeignKey(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="retries"
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True
    )
    correlation_id = models.UUIDField(default=uuid.uuid4, editable=False, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["-created_at"]),
            models.Index(fields=["status"]),
            models.Index(fields=["kind", "-created_at"]),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(progress__lte=100), name="job_progress_range"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.target_label} ({self.status})"

    def get_absolute_url(self) -> str:
        return reverse("job_detail", args=[self.pk])

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED

    @property
    def can_cancel(self) -> bool:
        return not self.is_finished and not self.cancel_requested

    @property
    def can_retry(self) -> bool:
        return self.status in (self.Status.FAILED, self.Status.CANCELLED) and bool(self.params)
