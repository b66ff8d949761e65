"""Jobs: created in the caller's transaction, run by a Celery worker, recorded step by step."""

from collections.abc import Callable
from typing import Any

from django.db import transaction
from django.utils import timezone

from opsportal.jobs.models import Job

MAX_LOG_LINES = 2000


def job_create(
    *,
    kind: str,
    task: Callable[..., Any],
    target_label: str = "",
    requested_by: Any = None,
    workspace: Any = None,
    endpoint: Any = None,
) -> Job:
    """The job row, and its task enqueued once the surrounding transaction commits."""
    job = Job.objects.create(
        kind=kind,
        target_label=target_label,
        requested_by=requested_by,
        workspace=workspace,
        endpoint=endpoint,
    )
    transaction.on_commit(lambda: task.delay(job.pk))
    return job


class JobRecorder:
    """What a running job tells the console: progress, the current step, log lines."""

    def __init__(self, job: Job) -> None:
        self.job = job

    def start(self) -> None:
        Job.objects.filter(pk=self.job.pk).update(
            status=Job.Status.RUNNING, started_at=timezone.now()
        )

    def step(self, progress: int, message: str) -> None:
        job = self.job
        job.log = [*job.log, f"{timezone.now():%H:%M:%S} {message}"][-MAX_LOG_LINES:]
        Job.objects.filter(pk=job.pk).update(
            progress=max(0, min(100, progress)), step=message, log=job.log
        )

    def finish(self, *, error: str = "") -> None:
        status = Job.Status.FAILED if error else Job.Status.SUCCEEDED
        Job.objects.filter(pk=self.job.pk).update(
            status=status,
            error=error,
            finished_at=timezone.now(),
            progress=100 if not error else self.job.progress,
        )
