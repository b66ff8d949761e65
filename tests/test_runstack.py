"""`make run`'s last step: web + worker + beat + runtime in the foreground, each started again
when it exits; Ctrl-C stops them all."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children_of(parent: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            pids.append(int(stat.parent.name))
    return pids


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def ready(port: int, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).read()
            if b'"status": "ok"' in body:
                return True
        except OSError:
            pass
        time.sleep(0.5)
    return False


def start_stack(tmp_path: Path, port: int) -> subprocess.Popen[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"}
    }
    env["OPSPORTAL_VAR_DIR"] = str(tmp_path)
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True, timeout=180
    )
    return subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "runstack",
            "--port",
            str(port),
            "--concurrency",
            "1",
            "--runtime-port",
            str(free_port()),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_it_starts_everything_and_stops_everything_on_ctrl_c(tmp_path):
    port = free_port()
    proc = start_stack(tmp_path, port)
    try:
        assert ready(port)
        pids = children_of(proc.pid)
        assert len(pids) == 4  # web, worker, beat, local runtime
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=40)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Stopped." in out
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists(), f"child {pid} outlived Ctrl-C"
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_it_starts_a_killed_process_again_and_keeps_serving(tmp_path):
    port = free_port()
    proc = start_stack(tmp_path, port)
    try:
        assert ready(port)
        by_role = {
            role: pid
            for pid in children_of(proc.pid)
            for role in ("worker", "beat", "runtime", "uvicorn")
            if f" {role}" in cmdline(pid) or f"/{role}" in cmdline(pid)
        }
        assert set(by_role) == {"worker", "beat", "runtime", "uvicorn"}, by_role
        for role in ("worker", "uvicorn"):
            os.kill(by_role[role], signal.SIGKILL)
        # Back-off starts at 1 s: both are back well within the wait below.
        deadline = time.monotonic() + 60
        fresh: dict[str, int] = {}
        while time.monotonic() < deadline and len(fresh) < 2:
            for pid in children_of(proc.pid):
                for role in ("worker", "uvicorn"):
                    if role in cmdline(pid) and pid != by_role[role]:
                        fresh[role] = pid
            time.sleep(0.5)
        assert set(fresh) == {"worker", "uvicorn"}
        assert ready(port)
        assert proc.poll() is None, "runstack itself must keep running"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=40)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "worker exited with code -9; starting it again in 1 s" in out
    assert "web exited with code -9; starting it again in 1 s" in out
    assert "Stopped." in out
