from django.contrib import admin

from opsportal.inventory.models import (
    CloudAccount,
    Endpoint,
    ManagedDeployment,
    MarketplaceSubscription,
    Offering,
    Workspace,
)


@admin.register(Offering)
class OfferingAdmin(admin.ModelAdmin):
    list_display = [
        "slug",
        "family",
        "model_name",
        "model_version",
        "tier",
        "serverless",
        "managed_compute",
        "tokens_per_minute",
        "requests_per_minute",
        "is_preview",
    ]
    list_filter = ["family", "tier", "serverless", "api_family", "provider_scope"]
    search_fields = ["slug", "model_name", "registry_model_id"]


@admin.register(CloudAccount)
class CloudAccountAdmin(admin.ModelAdmin):
    list_display = ["display_name", "provider", "subscription_id", "status", "is_demo"]
    list_filter = ["provider", "status", "is_demo"]
    search_fields = ["display_name", "subscription_id"]


@admin.register(Workspace)
class WorkspaceAdmin(admin.ModelAdmin):
    list_display = ["name", "resource_group", "region", "provider", "team", "account"]
    list_filter = ["provider", "region"]
    search_fields = ["name", "resource_group"]
    list_select_related = ["team", "account"]
    raw_id_fields = ["account"]


@admin.register(MarketplaceSubscription)
class MarketplaceSubscriptionAdmin(admin.ModelAdmin):
    list_display = ["name", "workspace", "offering", "state"]
    list_filter = ["state"]
    list_select_related = ["workspace", "offering"]
    raw_id_fields = ["workspace"]


class ManagedDeploymentInline(admin.TabularInline):
    model = ManagedDeployment
    extra = 0


@admin.register(Endpoint)
class EndpointAdmin(admin.ModelAdmin):
    list_display = ["name", "kind", "workspace", "region", "offering", "provisioning_state"]
    list_filter = ["kind", "provisioning_state"]
    search_fields = ["name"]
    list_select_related = ["workspace", "offering"]
    raw_id_fields = ["workspace"]
    inlines = [ManagedDeploymentInline]
