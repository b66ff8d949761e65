"""Thin Celery tasks: load the job, call one service, record the outcome."""

from celery import shared_task

from opsportal.jobs.models import Job
from opsportal.jobs.services import JobRecorder, job_create


@shared_task(acks_late=True)
def azure_sync(job_id: int) -> None:
    from opsportal.inventory.sync import azure_sync_job_run
    from opsportal.providers.azure import azure_configuration, default_credential

    job = Job.objects.filter(pk=job_id).first()
    if job is None or job.is_finished:
        return  # a redelivered message for a job that already ended
    configured, how = azure_configuration()
    if not configured:
        recorder = JobRecorder(job)
        recorder.start()
        recorder.finish(error=how)
        return
    azure_sync_job_run(job=job, credential=default_credential(), how=how)


@shared_task
def azure_sync_scheduled() -> None:
    """Beat's entry: a sync job when Azure is configured and none is already waiting."""
    from opsportal.providers.azure import azure_configuration

    if not azure_configuration()[0]:
        return
    if Job.objects.filter(
        kind="azure-sync", status__in=[Job.Status.PENDING, Job.Status.RUNNING]
    ).exists():
        return
    job_create(kind="azure-sync", task=azure_sync, target_label="all Azure subscriptions")
