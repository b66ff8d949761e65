"""Thin Celery tasks: the job row says what to do; the services do it."""

from celery import shared_task

from opsportal.jobs.services import job_execute, jobs_reap


@shared_task(acks_late=True, reject_on_worker_lost=True)
def job_run(job_id: int) -> str:
    # Only the id travels through the broker: parameters live on the job row, secrets nowhere.
    return job_execute(job_id=job_id)


@shared_task
def jobs_reap_scheduled() -> list[int]:
    return jobs_reap()
