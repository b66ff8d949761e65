from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render

from opsportal.accounts.models import Role
from opsportal.accounts.permissions import mutation
from opsportal.inventory import selectors
from opsportal.jobs.models import Job
from opsportal.jobs.services import job_create
from opsportal.providers import azure_cloud


def accounts_list(request: HttpRequest) -> HttpResponse:
    configured, how = azure_cloud.configured()
    return render(
        request,
        "inventory/accounts.html",
        {
            "accounts": selectors.accounts_with_counts(request.user),
            "azure_configured": configured,
            "azure_how": how,
            "last_sync": Job.objects.filter(kind=Job.Kind.AZURE_SYNC).first(),
        },
    )


@mutation(Role.ADMIN)
def azure_sync_start(request: HttpRequest) -> HttpResponse:
    """Sync every Azure subscription now (it spans all teams: superusers only)."""
    if not request.user.is_superuser:
        raise PermissionDenied("Syncing all Azure subscriptions needs a superuser.")
    with transaction.atomic():
        job = job_create(
            kind=Job.Kind.AZURE_SYNC,
            requested_by=request.user,
            target_label="all Azure subscriptions",
        )
    return HttpResponseRedirect(job.get_absolute_url())
