"""Beat's entry for scheduled key rotations; each rotation is a job (opsportal.keys.jobs)."""

from celery import shared_task

from opsportal.keys.services import rotations_due_start


@shared_task
def rotations_due() -> list[int]:
    return rotations_due_start()
