"""Beat's entry for the inventory sync; the sync itself is a job (opsportal.sync.jobs)."""

from celery import shared_task

from opsportal.jobs.models import Job
from opsportal.jobs.services import job_create
from opsportal.providers import azure_cloud


@shared_task
def azure_sync_scheduled() -> int | None:
    """A sync job when Azure is configured and none is waiting or running. A sync whose worker
    died is not in the way for long: the reaper queues it again once its heartbeat stops."""
    if not azure_cloud.configured()[0]:
        return None
    if Job.objects.filter(
        kind=Job.Kind.AZURE_SYNC, status__in=[Job.Status.PENDING, Job.Status.RUNNING]
    ).exists():
        return None
    return job_create(kind=Job.Kind.AZURE_SYNC, target_label="all Azure subscriptions").pk
