"""A real Celery worker in its own process, on the test database and the configured broker."""

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from django.db import connection

from opsportal.jobs.models import Job

ROOT = Path(__file__).resolve().parent.parent
# Short waits so a test sees heartbeats, polling and back-off happen within seconds.
FAST_JOBS = {
    "OPSPORTAL_JOB_POLL_SECONDS": "0.2",
    "OPSPORTAL_JOB_HEARTBEAT_SECONDS": "0.5",
    "OPSPORTAL_JOB_STALE_SECONDS": "3",
    "OPSPORTAL_JOB_BACKOFF_SECONDS": "0.5",
}


def database_url() -> str:
    """The URL of the database this test runs on (pytest-django's test database)."""
    s = connection.settings_dict
    if "sqlite" in s["ENGINE"]:
        return f"sqlite:///{s['NAME']}"
    user = s.get("USER") or "postgres"
    return f"postgres://{user}@{s.get('HOST') or '127.0.0.1'}:{s.get('PORT') or 5432}/{s['NAME']}"


def start_worker(**env: str) -> subprocess.Popen:
    full = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "opsportal.settings",
        "DATABASE_URL": database_url(),
        **FAST_JOBS,
        **env,
    }
    full.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "opsportal",
            "worker",
            "--pool",
            "solo",
            "-l",
            "warning",
            "-n",
            f"test-{uuid.uuid4().hex[:8]}@%h",
            "--without-mingle",
            "--without-gossip",
        ],
        cwd=ROOT,
        env=full,
        start_new_session=True,
    )


def stop_worker(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def wait_job(job: Job, *, timeout: float = 180, until=None) -> Job:
    """Wait until the job ends (or `until(job)` holds); return it fresh."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job.refresh_from_db()
        if until(job) if until else job.is_finished:
            return job
        time.sleep(0.2)
    raise AssertionError(
        f"job {job.pk} ({job.kind}) still {job.status} at {job.progress}% after {timeout}s: "
        + " | ".join(job.log[-8:])
    )
