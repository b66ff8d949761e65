"""The read model of everything opsportal manages: accounts, workspaces, offerings, endpoints.

Pages read these rows; sync jobs and mutating jobs write them. Rules the seed states are
database constraints where a constraint can hold them.
"""

from django.db import models
from django.db.models import Q
from django.urls import reverse

from opsportal.core.models import LiveQuerySet


class Provider(models.TextChoices):
    AZURE = "azure", "Azure"
    LOCAL = "local", "Local runtime"


class ProvisioningState(models.TextChoices):
    CREATING = "Creating", "Creating"
    UPDATING = "Updating", "Updating"
    SUCCEEDED = "Succeeded", "Succeeded"
    FAILED = "Failed", "Failed"
    DELETING = "Deleting", "Deleting"
    CANCELED = "Canceled", "Canceled"
    UNKNOWN = "Unknown", "Unknown"


# States a person should look at: something is in flight or broken.
ATTENTION_STATES = [
    ProvisioningState.CREATING,
    ProvisioningState.UPDATING,
    ProvisioningState.FAILED,
    ProvisioningState.DELETING,
    ProvisioningState.CANCELED,
    ProvisioningState.UNKNOWN,
]


class CloudAccount(models.Model):
    """An Azure subscription, or this machine's local runtime."""

    class Status(models.TextChoices):
        UNKNOWN = "unknown", "Not synced yet"
        OK = "ok", "Connected"
        ERROR = "error", "Error"

    provider = models.CharField(max_length=10, choices=Provider.choices)
    subscription_id = models.CharField(
        max_length=64, help_text="Azure subscription id; 'local' for the local runtime."
    )
    tenant_id = models.CharField(max_length=64, blank=True)
    display_name = models.CharField(max_length=200)
    is_demo = models.BooleanField(
        default=False, help_text="Demo data from seed_demo_inventory; never real resources."
    )
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.UNKNOWN)
    quota_id = models.CharField(
        max_length=100,
        blank=True,
        help_text="Azure's subscriptionPolicies.quotaId: the subscription's offer type.",
    )
    last_sync_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["display_name"]
        constraints = [
            models.UniqueConstraint(
                fields=["provider", "subscription_id"], name="account_unique_subscription"
            ),
        ]

    def __str__(self) -> str:
        return self.display_name


class Workspace(models.Model):
    class TeamSource(models.TextChoices):
        NONE = "", "Not assigned"
        TAG = "tag", "Azure tag"
        MANUAL = "manual", "Assigned in the console"

    account = models.ForeignKey(CloudAccount, on_delete=models.CASCADE, related_name="workspaces")
    name = models.CharField(max_length=100)
    resource_group = models.CharField(max_length=90)
    region = models.CharField(max_length=40, help_text="Azure region name, e.g. eastus2.")
    # Copied from the account: the provider is chosen per workspace, and pages filter on it.
    provider = models.CharField(max_length=10, choices=Provider.choices)
    team = models.ForeignKey(
        "accounts.Team",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="workspaces",
        help_text="Owning team; only superusers see a workspace without one.",
    )
    # How the team was set: the sync follows the Azure tag only for workspaces not assigned by
    # hand, so a superuser's choice sticks.
    team_source = models.CharField(
        max_length=10, choices=TeamSource.choices, default=TeamSource.NONE, blank=True
    )
    tags = models.JSONField(default=dict, blank=True, help_text="Azure tags, as last synced.")
    azure_resource_id = models.CharField(max_length=400, blank=True)
    last_sync_at = models.DateTimeField(null=True, blank=True)
    sync_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    objects = LiveQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(
                fields=["account", "resource_group", "name"], name="workspace_unique_name"
            ),
        ]
        indexes = [models.Index(fields=["team", "name"])]

    def __str__(self) -> str:
        return self.name

    def save(self, *args, **kwargs) -> None:
        if not self.provider and self.account_id:
            self.provider = self.account.provider
        super().save(*args, **kwargs)

    def get_absolute_url(self) -> str:
        return reverse("workspace_detail", args=[self.pk])


class Offering(models.Model):
    """A model in the catalog and how it may be deployed (DESIGN.md §1)."""

    class Tier(models.TextChoices):
        PREMIUM = "premium", "Premium"
        OPEN = "open", "Open"

    class ApiFamily(models.TextChoices):
        MISTRAL = "mistral", "Mistral"
        LLAMA = "llama", "Llama"

    slug = models.SlugField(max_length=100, unique=True)
    family = models.CharField(max_length=40, help_text="Model family, e.g. Mistral, Meta.")
    model_name = models.CharField(max_length=100)
    model_version = models.CharField(max_length=40, blank=True)
    registry_model_id = models.CharField(
        max_length=300, blank=True, help_text="Unversioned registry id; deploys the latest."
    )
    publisher = models.CharField(max_length=100)
    tier = models.CharField(max_length=10, choices=Tier.choices)
    api_family = models.CharField(max_length=10, choices=ApiFamily.choices)
    serverless = models.BooleanField(default=False, help_text="Offered as pay-as-you-go.")
    serverless_regions = models.JSONField(default=list, blank=True)
    managed_compute = models.BooleanField(
        null=True, blank=True, help_text="Deployable on managed compute; empty = not stated."
    )
    routes = models.JSONField(default=list, help_text="Data-plane routes the endpoint serves.")
    default_max_tokens = models.PositiveIntegerField()
    default_ignore_eos = models.BooleanField()
    context_length = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_minute = models.PositiveIntegerField(default=200_000)
    requests_per_minute = models.PositiveIntegerField(default=1_000)
    price_meters = models.JSONField(
        default=list, blank=True, help_text="Marketplace meter names this offering bills on."
    )
    input_price_per_million = models.DecimalField(
        max_digits=12, decimal_places=4, null=True, blank=True
    )
    output_price_per_million = models.DecimalField(
        max_digits=12, decimal_places=4, null=True, blank=True
    )
    currency = models.CharField(max_length=3, default="USD")
    terms_url = models.URLField(max_length=500, blank=True)
    is_preview = models.BooleanField(default=True, help_text="Preview: no SLA.")
    local_model_path = models.CharField(
        max_length=500,
        blank=True,
        help_text="Local offerings: a GGUF file path, or pkg:<distribution>:<file> for a model "
        "shipped inside a Python package.",
    )
    provider_scope = models.CharField(
        max_length=10,
        choices=Provider.choices,
        default=Provider.AZURE,
        help_text="Where this offering can be deployed.",
    )

    class Meta:
        ordering = ["family", "model_name", "model_version"]
        constraints = [
            models.CheckConstraint(
                condition=Q(tokens_per_minute__gt=0) & Q(requests_per_minute__gt=0),
                name="offering_rate_limits_positive",
            ),
        ]

    def __str__(self) -> str:
        return self.display_name

    def get_absolute_url(self) -> str:
        return reverse("offering_detail", args=[self.slug])

    @property
    def display_name(self) -> str:
        return (
            f"{self.model_name} ({self.model_version})" if self.model_version else self.model_name
        )

    def serverless_allowed_in(self, region: str) -> bool:
        return self.serverless and region in self.serverless_regions


class MarketplaceSubscription(models.Model):
    """One per workspace per offering: the workspace's purchase of a Marketplace offer."""

    class State(models.TextChoices):
        PENDING = "Pending", "Pending"
        SUCCEEDED = "Succeeded", "Subscribed"
        SUSPENDED = "Suspended", "Suspended"
        UNSUBSCRIBED = "Unsubscribed", "Unsubscribed"
        FAILED = "Failed", "Failed"

    workspace = models.ForeignKey(
        Workspace, on_delete=models.CASCADE, related_name="marketplace_subscriptions"
    )
    offering = models.ForeignKey(
        Offering, on_delete=models.PROTECT, related_name="marketplace_subscriptions"
    )
    name = models.CharField(max_length=100)
    state = models.CharField(max_length=20, choices=State.choices, default=State.PENDING)
    saas_resource_id = models.CharField(
        max_length=400, blank=True, help_text="Microsoft.SaaS/resources billing resource."
    )
    azure_resource_id = models.CharField(
        max_length=400, blank=True, help_text="The marketplaceSubscriptions ARM resource."
    )
    # The Marketplace plan it bought: how its SaaS billing resource is recognised.
    publisher_id = models.CharField(max_length=200, blank=True)
    offer_id = models.CharField(max_length=200, blank=True)
    plan_id = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    objects = LiveQuerySet.as_manager()

    class Meta:
        ordering = ["workspace__name", "offering__model_name"]
        constraints = [
            models.UniqueConstraint(
                fields=["workspace", "offering"],
                condition=Q(deleted_at__isnull=True),
                name="marketplace_subscription_one_per_offering",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.offering} in {self.workspace}"


class Endpoint(models.Model):
    class Kind(models.TextChoices):
        SERVERLESS = "serverless", "Serverless"
        MANAGED = "managed", "Managed compute"

    class AuthMode(models.TextChoices):
        KEY = "key", "Key"
        AML_TOKEN = "aml_token", "Azure ML token"
        AAD_TOKEN = "aad_token", "Microsoft Entra token"

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="endpoints")
    kind = models.CharField(max_length=10, choices=Kind.choices)
    name = models.CharField(max_length=64)
    offering = models.ForeignKey(
        Offering, on_delete=models.PROTECT, null=True, blank=True, related_name="endpoints"
    )
    model_id = models.CharField(
        max_length=300, blank=True, help_text="Registry model id as Azure reports it."
    )
    # Copied from the workspace so the database can hold "serverless name unique per region".
    region = models.CharField(max_length=40)
    scoring_uri = models.URLField(max_length=500, blank=True)
    auth_mode = models.CharField(max_length=10, choices=AuthMode.choices, default=AuthMode.KEY)
    provisioning_state = models.CharField(
        max_length=12, choices=ProvisioningState.choices, default=ProvisioningState.CREATING
    )
    status_message = models.TextField(blank=True)
    content_safety = models.BooleanField(default=True)
    azure_resource_id = models.CharField(max_length=400, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    objects = LiveQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(
                fields=["workspace", "offering"],
                condition=Q(kind="serverless", deleted_at__isnull=True),
                name="endpoint_one_serverless_per_offering",
            ),
            models.UniqueConstraint(
                fields=["region", "name"],
                condition=Q(kind="serverless", deleted_at__isnull=True),
                name="endpoint_serverless_name_unique_in_region",
            ),
            models.UniqueConstraint(
                fields=["workspace", "name"],
                condition=Q(deleted_at__isnull=True),
                name="endpoint_name_unique_in_workspace",
            ),
            models.CheckConstraint(
                condition=Q(kind="managed") | Q(content_safety=True),
                name="endpoint_serverless_content_safety_on",
            ),
        ]
        indexes = [
            # One index per sort order of the endpoints list, and the common filter + sort pairs.
            models.Index(fields=["name"]),
            models.Index(fields=["-created_at"]),
            models.Index(fields=["provisioning_state", "name"]),
            models.Index(fields=["kind", "name"]),
            models.Index(fields=["region", "name"]),
            models.Index(fields=["workspace", "name"]),
        ]

    def __str__(self) -> str:
        return self.name

    def save(self, *args, **kwargs) -> None:
        if not self.region and self.workspace_id:
            self.region = self.workspace.region
        super().save(*args, **kwargs)

    def get_absolute_url(self) -> str:
        return reverse("endpoint_detail", args=[self.pk])

    @property
    def needs_attention(self) -> bool:
        return self.provisioning_state in ATTENTION_STATES

    @property
    def content_safety_note(self) -> str:
        """What filters this endpoint's prompts and completions, in words that are true."""
        if self.workspace.provider == Provider.LOCAL:
            return "None: no content classifier runs on the local runtime."
        if self.kind == self.Kind.SERVERLESS:
            return "On: Azure AI Content Safety filters every serverless endpoint."
        return (
            "Not applied by Azure: managed compute is deployed without Azure AI Content Safety "
            "(its REST API has no setting for it); add it in your own code if you need it."
        )


class ManagedDeployment(models.Model):
    endpoint = models.ForeignKey(Endpoint, on_delete=models.CASCADE, related_name="deployments")
    name = models.CharField(max_length=32)
    vm_sku = models.CharField(max_length=64)
    instance_count = models.PositiveIntegerField(default=1)
    traffic_percent = models.PositiveSmallIntegerField(default=0)
    state = models.CharField(
        max_length=12, choices=ProvisioningState.choices, default=ProvisioningState.CREATING
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    objects = LiveQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(
                fields=["endpoint", "name"],
                condition=Q(deleted_at__isnull=True),
                name="deployment_unique_name",
            ),
            models.CheckConstraint(
                condition=Q(instance_count__gte=1), name="deployment_instance_count_positive"
            ),
            models.CheckConstraint(
                condition=Q(traffic_percent__lte=100), name="deployment_traffic_percent_range"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.endpoint.name}/{self.name}"


class VmSize(models.Model):
    """A VM size offered for managed compute in a region, as the provider last reported it."""

    account = models.ForeignKey(CloudAccount, on_delete=models.CASCADE, related_name="vm_sizes")
    region = models.CharField(max_length=40)
    name = models.CharField(max_length=64)
    cores = models.PositiveIntegerField()
    family = models.CharField(max_length=100)
    memory_gb = models.FloatField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["region", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["account", "region", "name"], name="vm_size_unique_in_region"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.region})"


class ComputeQuota(models.Model):
    """VM core usage against the limit, per subscription, region and VM family."""

    account = models.ForeignKey(
        CloudAccount, on_delete=models.CASCADE, related_name="compute_quotas"
    )
    region = models.CharField(max_length=40)
    family = models.CharField(max_length=100)
    used = models.PositiveIntegerField()
    limit = models.PositiveIntegerField()
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["region", "family"]
        constraints = [
            models.UniqueConstraint(
                fields=["account", "region", "family"], name="compute_quota_unique_family"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.family} in {self.region}: {self.used}/{self.limit}"

    @property
    def percent(self) -> float:
        return 100.0 * self.used / self.limit if self.limit else 0.0
