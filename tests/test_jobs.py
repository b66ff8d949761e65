"""The job framework: claiming, step boundaries, cancel, retry of transient errors, the reaper,
and the pages (list filters, detail, cancel and retry buttons, audit log)."""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from opsportal.core.models import AuditEvent
from opsportal.jobs.models import Job
from opsportal.jobs.services import (
    RUNNERS,
    JobRecorder,
    job_cancel,
    job_create,
    job_execute,
    jobs_reap,
    runner,
)
from opsportal.providers.base import ProviderError
from tests.conftest import client_for

pytestmark = pytest.mark.production_path

CALLS: list[str] = []


@pytest.fixture(autouse=True)
def fast_jobs(settings):
    settings.OPSPORTAL_JOB_BACKOFF_SECONDS = 0
    settings.OPSPORTAL_JOB_RETRIES = 3
    CALLS.clear()
    yield
    for kind in [k for k in RUNNERS if k.startswith("test-")]:
        del RUNNERS[kind]


def flaky(failures: list[ProviderError]):
    def call() -> str:
        CALLS.append("call")
        if failures:
            raise failures.pop(0)
        return "done"

    return call


def make(world, kind: str, **kw) -> Job:
    kw.setdefault("target_label", "t")
    return Job.objects.create(kind=kind, workspace=world.ws_a, requested_by=world.operator, **kw)


def test_it_retries_transient_errors_with_back_off_then_succeeds(world):
    fn = flaky([ProviderError("Azure is throttling.", retryable=True, retry_after=0)] * 2)

    @runner("test-flaky")
    def run(rec: JobRecorder) -> None:
        rec.step(50, rec.call("Creating", fn))

    job = make(world, "test-flaky")
    assert job_execute(job_id=job.pk) == "succeeded"
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED and job.progress == 100
    assert CALLS == ["call"] * 3
    assert sum("Trying again" in line for line in job.log) == 2
    assert job.log[-1].endswith("done")


def test_it_gives_up_after_the_retry_budget_and_says_why(world):
    fn = flaky([ProviderError("Azure failed (500).", retryable=True, retry_after=0)] * 5)

    @runner("test-broken")
    def run(rec: JobRecorder) -> None:
        rec.call("Creating", fn)

    job = make(world, "test-broken")
    assert job_execute(job_id=job.pk) == "failed"
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED and job.error == "Azure failed (500)."
    assert CALLS == ["call"] * 3
    event = AuditEvent.objects.get(job=job)
    assert (event.action, event.result) == ("test-broken.failed", "failed")


def test_it_does_not_retry_what_cannot_succeed(world):
    fn = flaky([ProviderError("Forbidden.", retryable=False)])

    @runner("test-forbidden")
    def run(rec: JobRecorder) -> None:
        rec.call("Creating", fn)

    job = make(world, "test-forbidden")
    job_execute(job_id=job.pk)
    assert CALLS == ["call"]


def test_it_hides_an_unexpected_exception_message(world):
    @runner("test-crash")
    def run(rec: JobRecorder) -> None:
        raise RuntimeError("secret-key-abc123 leaked into an exception")

    job = make(world, "test-crash")
    assert job_execute(job_id=job.pk) == "crashed"
    job.refresh_from_db()
    assert "secret-key-abc123" not in job.error
    assert str(job.correlation_id) in job.error and "RuntimeError" in job.error


def test_it_stops_at_the_next_boundary_when_cancelled(world):
    @runner("test-cancel")
    def run(rec: JobRecorder) -> None:
        rec.step(10, "first step")
        rec.checkpoint("first")
        job_cancel(job=rec.job, user=world.operator)  # someone clicks Cancel meanwhile
        rec.step(20, "still finishing the first step")
        rec.boundary()
        rec.step(60, "second step")

    job = make(world, "test-cancel")
    assert job_execute(job_id=job.pk) == "cancelled"
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELLED
    assert not any("second step" in line for line in job.log)
    assert any("still finishing" in line for line in job.log)
    assert job.state == {"first": True}


def test_a_pending_job_cancels_at_once_and_never_runs(world):
    @runner("test-never")
    def run(rec: JobRecorder) -> None:
        CALLS.append("ran")

    job = make(world, "test-never")
    job_cancel(job=job, user=world.operator)
    assert job_execute(job_id=job.pk) == "gone"
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELLED and CALLS == []


def test_a_claimed_job_is_not_run_twice(world):
    @runner("test-once")
    def run(rec: JobRecorder) -> None:
        CALLS.append("ran")
        # A redelivered message arrives while this worker is still running the job.
        assert job_execute(job_id=rec.job.pk) == "busy"

    job = make(world, "test-once")
    assert job_execute(job_id=job.pk) == "succeeded"
    assert CALLS == ["ran"]


def test_the_reaper_requeues_a_job_whose_worker_died_and_it_resumes(world, settings):
    settings.CELERY_TASK_ALWAYS_EAGER = True  # the re-queued task runs here, at once

    @runner("test-resume")
    def run(rec: JobRecorder) -> None:
        for step in ("a", "b", "c"):
            if not rec.done(step):
                CALLS.append(step)
                rec.checkpoint(step)

    # A worker claimed it, did step a, then died: its heartbeat stopped 10 minutes ago.
    old = timezone.now() - timedelta(minutes=10)
    job = make(world, "test-resume", status=Job.Status.RUNNING, attempts=1, heartbeat_at=old)
    job.state = {"a": True}
    job.save()
    from opsportal.celery import app

    app.conf.task_always_eager = True
    try:
        assert jobs_reap(stale_after=60) == [job.pk]
    finally:
        app.conf.task_always_eager = False
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED and job.attempts == 2
    assert CALLS == ["b", "c"]
    assert any("worker running this job stopped" in line for line in job.log)


def test_the_reaper_leaves_live_jobs_alone_and_gives_up_after_max_attempts(world, settings):
    settings.OPSPORTAL_JOB_MAX_ATTEMPTS = 3
    live = make(world, "test-x", status=Job.Status.RUNNING, heartbeat_at=timezone.now())
    dead = make(
        world,
        "test-x",
        status=Job.Status.RUNNING,
        attempts=3,
        heartbeat_at=timezone.now() - timedelta(hours=1),
    )
    assert jobs_reap(stale_after=60) == []
    live.refresh_from_db()
    dead.refresh_from_db()
    assert live.status == Job.Status.RUNNING
    assert dead.status == Job.Status.FAILED and "stopped 3 times" in dead.error


def test_job_create_enqueues_only_the_id(world, django_capture_on_commit_callbacks, monkeypatch):
    sent = []
    from opsportal.jobs import services

    monkeypatch.setattr(services, "job_enqueue", lambda *a, **kw: sent.append((a, kw)))
    with django_capture_on_commit_callbacks(execute=True):
        job = job_create(kind="deploy", workspace=world.ws_a, params={"name": "x"})
    assert sent == [((job.pk,), {})]


# --- pages ------------------------------------------------------------------------------------


def test_the_job_list_filters_by_kind_status_target_and_user(world):
    make(world, "deploy", target_label="alpha-one")
    make(world, "key-rotation", target_label="alpha-two", status=Job.Status.FAILED)
    client = client_for(world.viewer)
    page = client.get(reverse("jobs"), {"kind": "key-rotation"}).content.decode()
    assert "alpha-two" in page and "alpha-one" not in page
    page = client.get(reverse("jobs"), {"status": "pending"}).content.decode()
    assert "alpha-one" in page and "alpha-two" not in page
    page = client.get(reverse("jobs"), {"target": "one", "user": "operator"}).content.decode()
    assert "alpha-one" in page and "alpha-two" not in page
    page = client.get(reverse("jobs"), {"user": "nobody"}).content.decode()
    assert "No job matches these filters" in page


def test_the_detail_polls_until_the_job_ends_and_offers_cancel_or_retry(world):
    job = make(world, "deploy", params={"name": "x"})
    operator, viewer = client_for(world.operator), client_for(world.viewer)
    page = operator.get(job.get_absolute_url()).content.decode()
    assert 'hx-trigger="every 2s"' in page and "Cancel job" in page
    assert "Cancel job" not in viewer.get(job.get_absolute_url()).content.decode()
    operator.post(reverse("job_cancel", args=[job.pk]))
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELLED
    page = operator.get(job.get_absolute_url()).content.decode()
    assert 'hx-trigger="every 2s"' not in page and "Retry" in page
    response = operator.post(reverse("job_retry", args=[job.pk]))
    new = Job.objects.exclude(pk=job.pk).get()
    assert response.url == new.get_absolute_url()
    assert (new.params, new.retry_of_id, new.status) == ({"name": "x"}, job.pk, "pending")
    actions = list(AuditEvent.objects.values_list("action", flat=True))
    assert set(actions) == {"job.cancel", "job.retry"}


def test_the_audit_log_filters_and_hides_other_teams(world):
    from opsportal.core.audit import audit_record

    audit_record(
        actor=world.operator,
        action="key.reveal",
        object_type="endpoint",
        object_label="ep-alpha",
        workspace=world.ws_a,
    )
    audit_record(
        actor=world.outsider,
        action="endpoint.delete",
        object_type="endpoint",
        object_label="ep-beta",
        workspace=world.ws_b,
    )
    page = client_for(world.viewer).get(reverse("audit")).content.decode()
    assert "ep-alpha" in page and "ep-beta" not in page
    page = client_for(world.viewer).get(reverse("audit"), {"action": "endpoint"}).content.decode()
    assert "ep-alpha" not in page and "No event matches" in page
    bad = client_for(world.viewer).get(reverse("audit"), {"correlation_id": "nope"})
    assert bad.status_code == 200 and "valid UUID" in bad.content.decode()


def test_a_job_past_its_time_limit_fails_with_words_not_a_traceback(world):
    from celery.exceptions import SoftTimeLimitExceeded

    @runner("test-slow")
    def run(rec: JobRecorder) -> None:
        rec.step(40, "waiting on something slow")
        raise SoftTimeLimitExceeded()

    job = make(world, "test-slow")
    assert job_execute(job_id=job.pk) == "timeout"
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED and "time limit" in job.error
    assert job.progress == 40


def test_a_step_that_must_finish_ignores_cancel_between_its_retries(world):
    fn = flaky([ProviderError("Busy.", retryable=True, retry_after=0)])

    @runner("test-must-finish")
    def run(rec: JobRecorder) -> None:
        job_cancel(job=rec.job, user=world.operator)
        rec.call("Regenerating", fn, cancellable=False)  # retried despite the cancel request
        rec.checkpoint("regenerated")
        rec.boundary()  # the next step boundary honours it

    job = make(world, "test-must-finish")
    assert job_execute(job_id=job.pk) == "cancelled"
    job.refresh_from_db()
    assert CALLS == ["call", "call"] and job.state == {"regenerated": True}


def test_the_reaper_queues_again_a_pending_job_whose_message_no_worker_took(world, monkeypatch):
    sent: list[int] = []
    from opsportal.jobs import services

    monkeypatch.setattr(services, "job_enqueue", sent.append)
    lost = make(world, "test-x")
    fresh = make(world, "test-x")
    Job.objects.filter(pk=lost.pk).update(created_at=timezone.now() - timedelta(minutes=6))
    Job.objects.filter(pk=fresh.pk).update(created_at=timezone.now() - timedelta(minutes=1))
    assert jobs_reap(stale_after=120, lost_after=300) == [lost.pk]
    assert sent == [lost.pk]
    lost.refresh_from_db()
    # Still pending, now with the time it was queued again: not re-sent at the next tick.
    assert lost.status == Job.Status.PENDING and lost.heartbeat_at is not None
    assert jobs_reap(stale_after=120, lost_after=300) == []


def test_a_provider_call_is_made_once_when_no_retries_are_configured(world, settings):
    settings.OPSPORTAL_JOB_RETRIES = 0
    calls: list[int] = []

    @runner("test-once")
    def run(rec: JobRecorder) -> None:
        rec.call("Once", lambda: calls.append(1))

    job = make(world, "test-once")
    assert job_execute(job_id=job.pk) == "succeeded"
    assert calls == [1]
