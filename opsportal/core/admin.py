from django.contrib import admin

from opsportal.core.models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = ["at", "actor_label", "action", "object_label", "result"]
    list_filter = ["result", "action"]
    search_fields = ["object_label", "actor_label", "detail"]
    # The audit log is a record: nobody edits it, here or anywhere.
    readonly_fields = [f.name for f in AuditEvent._meta.fields]

    def has_add_permission(self, request) -> bool:  # type: ignore[no-untyped-def]
        return False

    def has_delete_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False
