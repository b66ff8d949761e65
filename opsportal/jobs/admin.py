from django.contrib import admin

from opsportal.jobs.models import Job


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ["kind", "target_label", "status", "progress", "requested_by", "created_at"]
    list_filter = ["kind", "status"]
    readonly_fields = ["correlation_id"]
