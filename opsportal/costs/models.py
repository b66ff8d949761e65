"""Cost as daily meter rows, the same shape for Azure's bill and the local runtime's estimate,
plus per-day rollups the overview reads, the pull bookkeeping and team budgets."""

from django.db import models
from django.db.models import Q


class CostSource(models.TextChoices):
    AZURE = "azure", "Azure Cost Management"
    LOCAL = "local", "Local runtime (usage x catalog prices)"


class CostDaily(models.Model):
    """One meter of one resource on one day. Upserted by (source, day, resource, meter)."""

    source = models.CharField(max_length=10, choices=CostSource.choices)
    day = models.DateField()
    account = models.ForeignKey(
        "inventory.CloudAccount", on_delete=models.CASCADE, related_name="cost_rows"
    )
    resource_id = models.CharField(max_length=500)
    meter = models.CharField(max_length=200)
    quantity = models.DecimalField(max_digits=20, decimal_places=6, default=0)
    unit = models.CharField(max_length=40, blank=True)
    cost = models.DecimalField(max_digits=24, decimal_places=10, default=0)
    currency = models.CharField(max_length=3, default="USD")
    # What the resource is, as far as the inventory knows (mapped when stored).
    workspace = models.ForeignKey(
        "inventory.Workspace", on_delete=models.SET_NULL, null=True, blank=True
    )
    endpoint = models.ForeignKey(
        "inventory.Endpoint",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="cost_rows",
    )
    marketplace_subscription = models.ForeignKey(
        "inventory.MarketplaceSubscription",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="cost_rows",
    )
    offering = models.ForeignKey(
        "inventory.Offering", on_delete=models.SET_NULL, null=True, blank=True
    )
    team = models.ForeignKey("accounts.Team", on_delete=models.SET_NULL, null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["source", "day", "resource_id", "meter"], name="cost_daily_unique_meter"
            ),
        ]
        indexes = [
            models.Index(fields=["endpoint", "day"]),
            models.Index(fields=["workspace", "day"]),
            models.Index(fields=["marketplace_subscription", "day"]),
            models.Index(fields=["day"]),
        ]

    def __str__(self) -> str:
        return f"{self.day} {self.resource_id} {self.meter}: {self.cost} {self.currency}"


class MeterTotals(models.Model):
    """Totals per team, offering and meter over a period (a day, a month)."""

    team = models.ForeignKey("accounts.Team", on_delete=models.SET_NULL, null=True, blank=True)
    offering = models.ForeignKey(
        "inventory.Offering", on_delete=models.SET_NULL, null=True, blank=True
    )
    meter = models.CharField(max_length=200)
    unit = models.CharField(max_length=40, blank=True)
    currency = models.CharField(max_length=3)
    quantity = models.DecimalField(max_digits=24, decimal_places=6, default=0)
    cost = models.DecimalField(max_digits=28, decimal_places=10, default=0)

    class Meta:
        abstract = True


class WorkspaceTotals(models.Model):
    """Totals per workspace over a period: the overview's workspace breakdown."""

    workspace = models.ForeignKey(
        "inventory.Workspace", on_delete=models.CASCADE, null=True, blank=True
    )
    team = models.ForeignKey("accounts.Team", on_delete=models.SET_NULL, null=True, blank=True)
    currency = models.CharField(max_length=3)
    cost = models.DecimalField(max_digits=28, decimal_places=10, default=0)

    class Meta:
        abstract = True


class CostRollup(MeterTotals):
    """Daily meter totals: what the overview sums for the chart and the offering, meter and team
    breakdowns. Rebuilt for a day whenever its meter rows change."""

    day = models.DateField()

    class Meta:
        indexes = [models.Index(fields=["day", "team"])]

    def __str__(self) -> str:
        return f"{self.day} {self.meter}: {self.cost} {self.currency}"


class CostWorkspaceDay(WorkspaceTotals):
    day = models.DateField()

    class Meta:
        indexes = [models.Index(fields=["day", "team"])]

    def __str__(self) -> str:
        return f"{self.day} {self.workspace_id}: {self.cost} {self.currency}"


class CostMonth(MeterTotals):
    """Monthly meter totals: the overview's totals and breakdowns."""

    month = models.DateField(help_text="The first day of the month.")

    class Meta:
        indexes = [models.Index(fields=["month", "team"])]

    def __str__(self) -> str:
        return f"{self.month:%Y-%m} {self.meter}: {self.cost} {self.currency}"


class CostWorkspaceMonth(WorkspaceTotals):
    month = models.DateField(help_text="The first day of the month.")

    class Meta:
        indexes = [models.Index(fields=["month", "team"])]

    def __str__(self) -> str:
        return f"{self.month:%Y-%m} {self.workspace_id}: {self.cost} {self.currency}"


class CostPull(models.Model):
    """When an account's costs were last pulled, and how that went."""

    account = models.OneToOneField(
        "inventory.CloudAccount", on_delete=models.CASCADE, related_name="cost_pull"
    )
    pulled_at = models.DateTimeField(null=True, blank=True)
    data_as_of = models.DateField(null=True, blank=True, help_text="Newest day with cost data.")
    rows = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    throttled_s = models.FloatField(default=0)

    def __str__(self) -> str:
        return f"{self.account}: {self.pulled_at}"


class Budget(models.Model):
    team = models.OneToOneField("accounts.Team", on_delete=models.CASCADE, related_name="budget")
    monthly_amount = models.DecimalField(max_digits=14, decimal_places=2)
    currency = models.CharField(max_length=3, default="USD")
    warn_percent = models.PositiveSmallIntegerField(default=80)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(monthly_amount__gt=0)
                & Q(warn_percent__gte=1)
                & Q(warn_percent__lte=100),
                name="budget_positive",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.team}: {self.monthly_amount} {self.currency}/month"
