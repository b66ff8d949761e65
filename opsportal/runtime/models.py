"""State of the local runtime: the keys it checks and the usage it meters."""

from django.db import models


class KeySlot(models.TextChoices):
    PRIMARY = "primary", "Primary"
    SECONDARY = "secondary", "Secondary"


class LocalKey(models.Model):
    """One of the two keys of a local endpoint: encrypted for reading back, hashed for checks."""

    endpoint = models.ForeignKey(
        "inventory.Endpoint", on_delete=models.CASCADE, related_name="local_keys"
    )
    slot = models.CharField(max_length=10, choices=KeySlot.choices)
    encrypted = models.TextField()
    digest = models.CharField(max_length=64, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)
    rotated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["endpoint", "slot"], name="local_key_one_per_slot")
        ]

    def __str__(self) -> str:
        return f"{self.endpoint_id}/{self.slot}"


class UsageRecord(models.Model):
    """One request the gateway answered (or refused)."""

    endpoint = models.ForeignKey(
        "inventory.Endpoint", on_delete=models.CASCADE, related_name="usage_records"
    )
    key_slot = models.CharField(max_length=10, blank=True)
    route = models.CharField(max_length=40)
    status_code = models.PositiveSmallIntegerField()
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    ttft_ms = models.FloatField(null=True, blank=True)
    duration_ms = models.FloatField(default=0)
    stream = models.BooleanField(default=False)
    created_at = models.DateTimeField(db_index=True)

    class Meta:
        indexes = [models.Index(fields=["endpoint", "created_at"])]

    def __str__(self) -> str:
        return f"{self.endpoint_id} {self.route} {self.status_code}"
