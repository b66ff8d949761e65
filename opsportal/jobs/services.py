"""Jobs: created in the caller's transaction, run by a Celery worker, recorded step by step.

A job's runner is a plain function registered by kind (`@runner("deploy")`). The worker claims
the job row before running it, so a redelivered message or a second worker never runs the same
job twice at once; a heartbeat thread keeps the claim fresh while the runner works, and the
reaper re-queues a job whose worker died (its heartbeat stopped). Runners record what they have
done in `job.state`, so the re-run continues where the lost worker stopped.
"""

import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from celery import current_app
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import F, Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from opsportal.core.audit import audit_record
from opsportal.core.models import AuditEvent
from opsportal.jobs.models import Job
from opsportal.providers.base import ProviderError, WorkspaceBackend, for_workspace

log = logging.getLogger("opsportal.jobs")
MAX_LOG_LINES = 2000
NOT_STARTED = "Cancelled before it started: nothing was changed."
T = TypeVar("T")


class JobCancelled(Exception):
    """Raised at a step boundary when someone asked the job to stop."""


# --- runners ---------------------------------------------------------------------------------

RUNNERS: dict[str, Callable[["JobRecorder"], None]] = {}


def runner(kind: str) -> Callable[[Callable[["JobRecorder"], None]], Callable]:
    """Register the function that runs jobs of `kind` (a Job.Kind). Runners live beside their
    domain; each app imports its runner module in AppConfig.ready(), so every process that
    loads the apps (web, worker) knows them all."""

    def decorate(fn: Callable[["JobRecorder"], None]) -> Callable[["JobRecorder"], None]:
        RUNNERS[kind] = fn
        return fn

    return decorate


# --- creating --------------------------------------------------------------------------------


def job_create(
    *,
    kind: str,
    target_label: str = "",
    requested_by: Any = None,
    workspace: Any = None,
    endpoint: Any = None,
    params: dict[str, Any] | None = None,
    retry_of: Job | None = None,
) -> Job:
    """The job row, and its task enqueued once the surrounding transaction commits.

    `params` must never hold a secret: it is shown on the job page and re-used by a retry."""
    job = Job.objects.create(
        kind=kind,
        target_label=target_label,
        requested_by=requested_by if getattr(requested_by, "is_authenticated", False) else None,
        workspace=workspace,
        endpoint=endpoint,
        params=params or {},
        retry_of=retry_of,
    )
    transaction.on_commit(lambda: job_enqueue(job.pk))
    return job


JOB_TASK = "opsportal.jobs.tasks.job_run"


def job_enqueue(job_id: int) -> None:
    """Hand a job to the workers: only its id travels. The task is found by its name in the
    Celery app's registry (its module imports this one)."""
    current_app.tasks[JOB_TASK].delay(job_id)


def job_request(*, action: str, detail: str = "", **job: Any) -> Job:
    """A job asked for by someone (or the schedule), and its "requested" audit event, in one
    transaction: the audit log shows what was asked even if the job never runs."""
    with transaction.atomic():
        created = job_create(**job)
        audit_record(
            actor=job.get("requested_by") or "schedule",
            action=action,
            object_type="endpoint",
            object_label=created.target_label,
            workspace=created.workspace,
            endpoint=created.endpoint,
            job=created,
            detail=detail,
            correlation_id=created.correlation_id,
        )
    return created


def job_cancel(*, job: Job, user: Any) -> Job:
    """A pending job ends at once; a running one stops at its next step boundary."""
    ended_at_once = Job.objects.filter(pk=job.pk, status=Job.Status.PENDING).update(
        status=Job.Status.CANCELLED,
        cancel_requested=True,
        finished_at=timezone.now(),
        error=NOT_STARTED,
    )
    if not ended_at_once:
        Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING).update(cancel_requested=True)
    job.refresh_from_db()
    audit_record(
        actor=user,
        action="job.cancel",
        object_type="job",
        object_label=f"{job.kind} {job.target_label} (job {job.pk})",
        workspace=job.workspace,
        endpoint=job.endpoint,
        job=job,
        correlation_id=job.correlation_id,
    )
    return job


def job_retry(*, job: Job, user: Any) -> Job:
    """A new job with the same parameters; the old one stays as it ended."""
    new = job_create(
        kind=job.kind,
        target_label=job.target_label,
        requested_by=user,
        workspace=job.workspace,
        endpoint=job.endpoint,
        params=job.params,
        retry_of=job,
    )
    audit_record(
        actor=user,
        action="job.retry",
        object_type="job",
        object_label=f"{job.kind} {job.target_label} (job {job.pk} as job {new.pk})",
        workspace=job.workspace,
        endpoint=job.endpoint,
        job=new,
        correlation_id=new.correlation_id,
    )
    return new


# --- running ---------------------------------------------------------------------------------


class JobRecorder:
    """What a running job tells the console: progress, the current step, log lines."""

    def __init__(self, job: Job) -> None:
        self.job = job

    def start(self) -> None:
        now = timezone.now()
        Job.objects.filter(pk=self.job.pk).update(
            status=Job.Status.RUNNING, started_at=now, heartbeat_at=now
        )

    def claim(self, *, stale_after: float) -> bool:
        """Take the job for this worker: pending, or running with a dead heartbeat."""
        now = timezone.now()
        stale = now - timedelta(seconds=stale_after)
        claimed = (
            Job.objects.filter(pk=self.job.pk, cancel_requested=False)
            .filter(
                Q(status=Job.Status.PENDING)
                | Q(status=Job.Status.RUNNING, heartbeat_at__lt=stale)
                | Q(status=Job.Status.RUNNING, heartbeat_at__isnull=True)
            )
            .update(
                status=Job.Status.RUNNING,
                started_at=Coalesce(F("started_at"), now),
                heartbeat_at=now,
                attempts=F("attempts") + 1,
            )
        )
        if claimed:
            self.job.refresh_from_db()
        return bool(claimed)

    def step(self, progress: int, message: str) -> None:
        job = self.job
        job.log = [*job.log, f"{timezone.now():%H:%M:%S} {message}"][-MAX_LOG_LINES:]
        job.progress = max(0, min(100, progress))
        job.step = message[:200]
        Job.objects.filter(pk=job.pk).update(
            progress=job.progress, step=job.step, log=job.log, heartbeat_at=timezone.now()
        )
        log.info(
            "job=%s kind=%s correlation_id=%s %s", job.pk, job.kind, job.correlation_id, message
        )

    def note(self, message: str) -> None:
        """A log line that is not a step of its own (a provider call and its request id)."""
        job = self.job
        job.log = [*job.log, f"{timezone.now():%H:%M:%S} {message}"][-MAX_LOG_LINES:]
        Job.objects.filter(pk=job.pk).update(log=job.log, heartbeat_at=timezone.now())
        log.info(
            "job=%s kind=%s correlation_id=%s %s", job.pk, job.kind, job.correlation_id, message
        )

    def provider(self, workspace: Any) -> WorkspaceBackend:
        """The workspace's back end, its calls tied to this job: the correlation id goes to
        Azure with every request, and every call that changes something gets a log line."""
        return for_workspace(workspace, correlation_id=str(self.job.correlation_id), note=self.note)

    def phase(self, key: str, progress: int, message: str, work: Callable[[], T]) -> T | None:
        """One resumable step: skipped when an earlier attempt finished it; otherwise a cancel
        point, the step's log line, the work, and the checkpoint that it is done."""
        if self.done(key):
            return None
        self.boundary()
        self.step(progress, message)
        result = work()
        self.checkpoint(key)
        return result

    def progress(self, value: int) -> None:
        self.job.progress = max(0, min(100, value))
        Job.objects.filter(pk=self.job.pk).update(
            progress=self.job.progress, heartbeat_at=timezone.now()
        )

    def boundary(self) -> None:
        """A point where stopping leaves a consistent state: honour a cancel request here."""
        if Job.objects.filter(pk=self.job.pk, cancel_requested=True).exists():
            raise JobCancelled

    def done(self, key: str) -> bool:
        return bool(self.job.state.get(key))

    def checkpoint(self, key: str, value: Any = True) -> None:
        self.job.state = {**self.job.state, key: value}
        Job.objects.filter(pk=self.job.pk).update(state=self.job.state)

    def attach(self, *, endpoint: Any = None) -> None:
        if endpoint is not None:
            self.job.endpoint = endpoint
            Job.objects.filter(pk=self.job.pk).update(endpoint=endpoint)

    def call(
        self,
        what: str,
        fn: Callable[..., T],
        *args: Any,
        cancellable: bool = True,
        **kwargs: Any,
    ) -> T:
        """Call a provider, retrying what the provider says is transient, with back-off.

        The wait is the one the service asked for (Retry-After) when it gave one, else
        exponential from OPSPORTAL_JOB_BACKOFF_SECONDS, capped at a minute. Between attempts
        a cancel request is honoured, unless the call is part of a step that must finish
        (`cancellable=False`)."""
        attempts = max(1, settings.OPSPORTAL_JOB_RETRIES)  # 0 retries is still one try
        for attempt in range(1, attempts + 1):
            try:
                return fn(*args, **kwargs)
            except ProviderError as exc:
                if not exc.retryable or attempt == attempts:
                    raise
                wait = exc.retry_after
                if wait is None:
                    wait = settings.OPSPORTAL_JOB_BACKOFF_SECONDS * 2 ** (attempt - 1)
                wait = min(60.0, max(0.0, wait))
                self.step(
                    self.job.progress,
                    f"{what}: {exc.message} Trying again in {wait:.0f} s "
                    f"(attempt {attempt + 1} of {attempts}).",
                )
                time.sleep(wait)
                if cancellable:
                    self.boundary()
        raise AssertionError("unreachable")

    def audit(self, action: str, *, detail: str = "", result: str = AuditEvent.Result.OK) -> None:
        job = self.job
        audit_record(
            actor=job.requested_by or "schedule",
            action=action,
            object_type="endpoint" if job.endpoint_id else "workspace",
            object_label=job.target_label,
            workspace=job.workspace,
            endpoint=job.endpoint,
            job=job,
            result=result,
            detail=detail,
            correlation_id=job.correlation_id,
        )

    def finish(self, *, error: str = "", cancelled: bool = False) -> None:
        if cancelled:
            status = Job.Status.CANCELLED
        else:
            status = Job.Status.FAILED if error else Job.Status.SUCCEEDED
        Job.objects.filter(pk=self.job.pk).update(
            status=status,
            error=error,
            finished_at=timezone.now(),
            progress=100 if status == Job.Status.SUCCEEDED else self.job.progress,
        )
        self.job.status = status


class _Heartbeat:
    """Refreshes the job's heartbeat while the runner works (long provider calls included).

    The thread dies with the worker process, so a killed worker stops it, and the reaper sees
    the job go stale."""

    def __init__(self, job_id: int, every: float) -> None:
        self.job_id, self.every = job_id, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"heartbeat-{job_id}")

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.every):
                try:
                    Job.objects.filter(pk=self.job_id, status=Job.Status.RUNNING).update(
                        heartbeat_at=timezone.now()
                    )
                except DatabaseError:
                    log.warning("job=%s heartbeat not written; trying again", self.job_id)
        finally:
            connection.close()

    def __enter__(self) -> "_Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def job_execute(*, job_id: int) -> str:
    """Run one job in this worker, if it is ours to run. Returns what happened, for logs."""
    job = Job.objects.select_related("workspace", "endpoint", "requested_by").filter(pk=job_id)
    job = job.first()
    if job is None or job.is_finished:
        return "gone"
    recorder = JobRecorder(job)
    if job.status == Job.Status.PENDING and job.cancel_requested:
        recorder.finish(cancelled=True, error=NOT_STARTED)
        return "cancelled"
    if not recorder.claim(stale_after=settings.OPSPORTAL_JOB_STALE_SECONDS):
        return "busy"  # another worker holds it, or it was cancelled meanwhile
    run = RUNNERS.get(job.kind)
    if run is None:
        recorder.finish(error=f"This console does not know how to run a {job.kind!r} job.")
        return "unknown"
    if job.attempts > 1:
        recorder.step(job.progress, f"Resuming (attempt {job.attempts}): the last worker stopped.")
    with _Heartbeat(job.pk, settings.OPSPORTAL_JOB_HEARTBEAT_SECONDS):
        try:
            run(recorder)
        except JobCancelled:
            recorder.step(recorder.job.progress, "Cancelled at a step boundary.")
            recorder.audit(f"{job.kind}.cancelled", result=AuditEvent.Result.FAILED)
            recorder.finish(cancelled=True, error=_cancel_note(recorder.job))
            return "cancelled"
        except SoftTimeLimitExceeded:
            message = (
                f"Stopped after the worker's time limit ({settings.CELERY_TASK_SOFT_TIME_LIMIT} "
                "s). What was done is in the log; retry the job to continue from there."
            )
            recorder.audit(f"{job.kind}.failed", detail=message, result="failed")
            recorder.finish(error=message)
            return "timeout"
        except ProviderError as exc:
            recorder.step(recorder.job.progress, f"Failed: {exc.message}")
            recorder.audit(f"{job.kind}.failed", detail=exc.message, result="failed")
            recorder.finish(error=exc.message)
            return "failed"
        except Exception as exc:
            # The message of an unexpected exception could carry anything: log the type, the
            # traceback goes to the worker's log, and the page gets words and the correlation id.
            log.exception("job=%s correlation_id=%s crashed", job.pk, job.correlation_id)
            message = (
                f"Unexpected error ({type(exc).__name__}). The worker's log has the details "
                f"under correlation id {job.correlation_id}; retry the job once it is fixed."
            )
            recorder.audit(f"{job.kind}.failed", detail=message, result="failed")
            recorder.finish(error=message)
            return "crashed"
    recorder.finish()
    return "succeeded"


def _cancel_note(job: Job) -> str:
    note = job.state.get("cancel_note")
    return note or "Cancelled; every step that ran finished, and the inventory shows the result."


def jobs_reap(*, stale_after: float | None = None, lost_after: float | None = None) -> list[int]:
    """Re-queue jobs whose worker died (heartbeat stopped) and pending jobs whose message was
    lost; give up on a job after OPSPORTAL_JOB_MAX_ATTEMPTS workers died running it."""
    stale_after = settings.OPSPORTAL_JOB_STALE_SECONDS if stale_after is None else stale_after
    lost_after = settings.OPSPORTAL_JOB_LOST_SECONDS if lost_after is None else lost_after
    now = timezone.now()
    stale = now - timedelta(seconds=stale_after)
    requeued: list[int] = []
    # A pending job is presumed lost later than a running one: the queue may simply be long.
    # Queueing it again is harmless when it was not lost: the first message claims the row.
    lost = now - timedelta(seconds=max(lost_after, stale_after))
    for job in Job.objects.filter(
        Q(status=Job.Status.RUNNING, heartbeat_at__lt=stale)
        | Q(status=Job.Status.PENDING, created_at__lt=lost, heartbeat_at__isnull=True)
        | Q(status=Job.Status.PENDING, heartbeat_at__lt=lost)
    ):
        recorder = JobRecorder(job)
        if job.status == Job.Status.RUNNING and job.attempts >= settings.OPSPORTAL_JOB_MAX_ATTEMPTS:
            recorder.step(job.progress, "The worker stopped again; giving up.")
            recorder.finish(
                error=f"The worker running this job stopped {job.attempts} times. What was done "
                "is in the log; retry the job to continue from there."
            )
            continue
        if job.status == Job.Status.RUNNING:
            recorder.step(job.progress, "The worker running this job stopped; queueing it again.")
        # Pending again, with the time it was queued: the next worker claims it from here.
        Job.objects.filter(pk=job.pk).update(status=Job.Status.PENDING, heartbeat_at=now)
        job_enqueue(job.pk)
        requeued.append(job.pk)
    return requeued
