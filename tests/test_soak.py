"""The embedded stack under steady use for minutes: beat's ticks shortened to seconds, a chat
through the console every few seconds, a key-rotation job every 20 s, a deploy at the start and
a delete at the end. Nothing may exit, no job may be lost, every chat must be answered.

OPSPORTAL_SOAK_SECONDS sets the length (600 in `make test`)."""

import os
import re
import sqlite3
import time

import pytest

from tests.stack_support import Console, running_stack

pytestmark = pytest.mark.soak
SECONDS = float(os.environ.get("OPSPORTAL_SOAK_SECONDS", "600"))
NAME = "soak-smol"


def chat(console: Console, endpoint_id: int, n: int) -> str:
    """One test-chat turn through the console, streamed to its end; the turn's final status."""
    response = console.post(
        f"/endpoints/{endpoint_id}/chat/",
        {"mode": "chat", "route_style": "native", "message": f"Count to {n}.", "max_tokens": 12},
        headers={"HX-Request": "true"},
    )
    assert response.status_code == 200, response.text[:300]
    stream_url = re.search(r'data-stream-url="([^"]+)"', response.text)
    assert stream_url, response.text[:300]
    with console.get(stream_url.group(1), stream=True) as stream:
        assert stream.status_code == 200
        body = b"".join(stream.iter_content(chunk_size=None))
    assert b"event: done" in body
    turn_id = int(stream_url.group(1).strip("/").split("/")[-2])
    return console.stack_query("SELECT status FROM chat_chatturn WHERE id = ?", turn_id)[0][0]


def test_the_embedded_stack_runs_for_minutes_without_losing_anything(tmp_path):
    with running_stack(
        tmp_path,
        OPSPORTAL_TICK_SECONDS="2",
        OPSPORTAL_LOCAL_COST_INTERVAL_SECONDS="2",
        OPSPORTAL_JOB_POLL_SECONDS="0.5",
        OPSPORTAL_JOB_HEARTBEAT_SECONDS="1",
        OPSPORTAL_JOB_STALE_SECONDS="10",
        OPSPORTAL_JOB_LOST_SECONDS="20",
    ) as stack:
        db = tmp_path / "opsportal.sqlite3"

        def query(sql: str, *args: object) -> list[tuple]:
            with sqlite3.connect(db, timeout=30) as conn:
                return conn.execute(sql, args).fetchall()

        console = Console(stack)
        console.stack_query = query  # type: ignore[attr-defined]
        workspace = query("SELECT id FROM inventory_workspace WHERE name = 'local'")[0][0]
        deploy = console.post(
            "/deploy/start/",
            {
                "workspace": workspace,
                "offering": query(
                    "SELECT id FROM inventory_offering WHERE slug = 'smollm2-135m-instruct'"
                )[0][0],
                "kind": "serverless",
                "name": NAME,
                "accept_terms": "on",
            },
            allow_redirects=False,
        )
        assert deploy.status_code == 302, deploy.text[:500]
        endpoint_id = None
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and endpoint_id is None:
            found = query(
                "SELECT e.id FROM inventory_endpoint e JOIN jobs_job j ON j.endpoint_id = e.id "
                "WHERE e.name = ? AND j.kind = 'deploy' AND j.status = 'succeeded'",
                NAME,
            )
            endpoint_id = found[0][0] if found else None
            time.sleep(1)
        assert endpoint_id is not None, query("SELECT kind, status, error FROM jobs_job")

        statuses: list[str] = []
        rotations = 0
        began = time.monotonic()
        next_rotation = began
        while time.monotonic() - began < SECONDS:
            if time.monotonic() >= next_rotation:
                response = console.post(
                    f"/endpoints/{endpoint_id}/keys/rotate/", {}, allow_redirects=False
                )
                assert response.status_code == 302, response.text[:300]
                rotations += 1
                next_rotation += 20
            statuses.append(chat(console, endpoint_id, len(statuses)))
            time.sleep(2)

        response = console.post(
            f"/endpoints/{endpoint_id}/delete/start/", {"confirm": NAME}, allow_redirects=False
        )
        assert response.status_code == 302
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and query(
            "SELECT 1 FROM jobs_job WHERE status IN ('pending', 'running')"
        ):
            time.sleep(1)
        jobs = query("SELECT kind, status, error FROM jobs_job ORDER BY id")
        log = stack.log()

    # Nothing exited (runstack says so when it starts a process again) and nothing crashed.
    assert "exited with code" not in log
    assert "Unrecoverable error" not in log
    assert "Traceback" not in log
    # Every job ran to its end: none lost, none failed.
    assert [j for j in jobs if j[1] != "succeeded"] == []
    kinds = [j[0] for j in jobs]
    assert kinds.count("deploy") == 1 and kinds.count("delete") == 1
    # A rotation asked while one runs joins it, so there are at most as many jobs as asks.
    assert 1 <= kinds.count("key-rotation") <= rotations
    assert rotations >= SECONDS // 20
    # Every chat was answered while keys rotated underneath.
    assert statuses and set(statuses) == {"done"}, statuses
    assert len(statuses) >= SECONDS // 6
