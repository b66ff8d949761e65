"""A task really travels through the configured broker to a separate worker process and back.

The embedded phase runs it on the SQLite broker (opsportal.core.broker); the production phase on
Redis.
"""

import json
import os
import stat
import subprocess
import sys
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


PRODUCE = """
import sys
from kombu import Connection
import opsportal.celery  # registers the sqlite transport
url, who, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
with Connection(url) as conn:
    q = conn.SimpleQueue("soak")
    for i in range(n):
        q.put({"who": who, "i": i, "pad": "x" * 2000})
    q.close()
"""

CONSUME = """
import json, sys, time
from queue import Empty
from kombu import Connection
import opsportal.celery
url, out = sys.argv[1], sys.argv[2]
got, idle = [], 0
with Connection(url) as conn:
    q = conn.SimpleQueue("soak")
    while idle < 20:
        try:
            m = q.get(timeout=0.25)
        except Empty:
            idle += 1
            continue
        idle = 0
        got.append([m.payload["who"], m.payload["i"]])
        m.ack()
    q.close()
open(out, "w").write(json.dumps(got))
"""


def test_the_embedded_broker_delivers_every_message_once_under_concurrent_writers(tmp_path):
    url = f"sqlite:///{tmp_path / 'broker.sqlite3'}"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "opsportal.settings"}
    run = [sys.executable, "-c"]
    consumers = [
        subprocess.Popen([*run, CONSUME, url, str(tmp_path / f"got-{c}.json")], cwd=ROOT, env=env)
        for c in range(2)
    ]
    producers = [
        subprocess.Popen([*run, PRODUCE, url, f"p{p}", "400"], cwd=ROOT, env=env) for p in range(3)
    ]
    for proc in producers + consumers:
        assert proc.wait(timeout=180) == 0
    got = [tuple(m) for c in range(2) for m in json.loads((tmp_path / f"got-{c}.json").read_text())]
    expected = {(f"p{p}", i) for p in range(3) for i in range(400)}
    assert len(got) == len(expected) and set(got) == expected  # each once, none lost
    # Both consumers took part, and the file is private to this user.
    assert all(json.loads((tmp_path / f"got-{c}.json").read_text()) for c in range(2))
    assert stat.S_IMODE((tmp_path / "broker.sqlite3").stat().st_mode) == 0o600
