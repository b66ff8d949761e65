from django.contrib import admin

from opsportal.runtime.models import UsageRecord


@admin.register(UsageRecord)
class UsageRecordAdmin(admin.ModelAdmin):
    list_display = [
        "created_at",
        "endpoint",
        "route",
        "status_code",
        "key_slot",
        "prompt_tokens",
        "completion_tokens",
        "ttft_ms",
        "duration_ms",
        "stream",
    ]
    list_filter = ["status_code", "stream", "key_slot"]
    list_select_related = ["endpoint"]
    date_hierarchy = "created_at"

    def has_add_permission(self, request) -> bool:  # type: ignore[no-untyped-def]
        return False

    def has_change_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False
