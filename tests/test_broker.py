"""A task really travels through the configured broker to a separate worker process and back.

The embedded phase runs it on the filesystem transport; the production phase on Redis.
"""

import os
import uuid
from pathlib import Path

import pytest
from django.conf import settings

from opsportal.celery import app
from tests.worker_support import start_worker, stop_worker

pytestmark = pytest.mark.production_path
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def worker():
    proc = start_worker()
    yield proc
    stop_worker(proc)


def test_it_round_trips_a_task_through_the_broker(worker):
    payload = uuid.uuid4().hex
    results = [
        app.send_task("opsportal.core.tasks.ping", args=[f"{payload}-{i}"]) for i in range(5)
    ]
    answers = [r.get(timeout=90) for r in results]
    assert [a["echo"] for a in answers] == [f"{payload}-{i}" for i in range(5)]
    # Answered by the worker process, not run eagerly in this one.
    assert {a["worker_pid"] for a in answers} == {worker.pid}
    assert os.getpid() != worker.pid
    assert app.conf.broker_url == settings.CELERY_BROKER_URL
    assert not app.conf.task_always_eager
