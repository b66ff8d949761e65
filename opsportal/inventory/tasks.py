"""Thin Celery tasks: load the job, call one service, record the outcome."""

import logging

from celery import shared_task

from opsportal.jobs.models import Job
from opsportal.jobs.services import JobRecorder, job_create

log = logging.getLogger(__name__)


@shared_task(acks_late=True)
def azure_sync(job_id: int) -> None:
    from opsportal.inventory.sync import configured_subscription_ids, inventory_sync_azure
    from opsportal.providers.azure import azure_configuration, default_credential
    from opsportal.providers.base import ProviderError

    job = Job.objects.filter(pk=job_id).first()
    if job is None or job.is_finished:
        return  # a redelivered message for a job that already ended
    recorder = JobRecorder(job)
    recorder.start()
    configured, how = azure_configuration()
    if not configured:
        recorder.finish(error=how)
        return
    recorder.step(1, f"Signing in to Azure ({how}); correlation id {job.correlation_id}")
    try:
        report = inventory_sync_azure(
            credential=default_credential(),
            subscription_ids=configured_subscription_ids(),
            correlation_id=str(job.correlation_id),
            progress=recorder.step,
        )
    except ProviderError as exc:
        recorder.finish(error=exc.message)
        return
    for line in report.lines:
        recorder.step(99, line)
    summary = (
        f"{report.subscriptions} subscriptions, {report.workspaces_ok} workspaces synced, "
        f"{len(report.workspaces_failed)} failed, {report.endpoints} endpoints, "
        f"{report.marked_deleted} marked deleted, {report.requests} Azure requests"
    )
    recorder.step(100, summary)
    failed = "; ".join(f"{name}: {err}" for name, err in report.workspaces_failed)
    recorder.finish(error=f"Some workspaces failed: {failed}" if failed else "")


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
