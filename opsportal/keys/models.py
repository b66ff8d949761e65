"""Endpoint keys as the console keeps them: published versions and rotation schedules."""

from django.conf import settings
from django.db import models
from django.db.models import Q


class KeySlot(models.TextChoices):
    PRIMARY = "primary", "Primary"
    SECONDARY = "secondary", "Secondary"


class SecretVersion(models.Model):
    """One published version of an endpoint key (the database secret store).

    The newest version of an endpoint is the key its consumers should use now; rotation
    publishes the secondary key before it regenerates the primary, so there is always a
    published key that works."""

    endpoint = models.ForeignKey(
        "inventory.Endpoint", on_delete=models.CASCADE, related_name="secret_versions"
    )
    slot = models.CharField(max_length=10, choices=KeySlot.choices)
    version = models.PositiveIntegerField()
    encrypted = models.TextField()
    fingerprint = models.CharField(max_length=12)
    # Where the value lives: "db" here; for Key Vault, the vault's secret version id.
    store = models.CharField(max_length=20, default="db")
    store_version = models.CharField(max_length=200, blank=True)
    job = models.ForeignKey("jobs.Job", on_delete=models.SET_NULL, null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-version"]
        constraints = [
            models.UniqueConstraint(
                fields=["endpoint", "version"], name="secret_version_unique_per_endpoint"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.endpoint} {self.slot} v{self.version}"


class RotationSchedule(models.Model):
    endpoint = models.OneToOneField(
        "inventory.Endpoint", on_delete=models.CASCADE, related_name="rotation_schedule"
    )
    every_days = models.PositiveSmallIntegerField(default=30)
    enabled = models.BooleanField(default=True)
    next_run_at = models.DateTimeField(null=True, blank=True)
    last_run_at = models.DateTimeField(null=True, blank=True)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [
            models.Index(fields=["next_run_at"], condition=Q(enabled=True), name="rotation_due_idx")
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(every_days__gte=1) & Q(every_days__lte=365),
                name="rotation_every_days_range",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.endpoint}: every {self.every_days} days"
