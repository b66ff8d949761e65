"""The stack `make run` starts (web, worker, beat, local runtime with the real model), each in
its own process, on a database of its own; and a logged-in chromium page on it."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import CHROMIUM, CHROMIUM_ARGS
from tests.runtime_support import free_port

ROOT = Path(__file__).resolve().parent.parent
ADMIN, PASSWORD = "stack-admin@example.com", "browser-test-password"


@dataclass
class Stack:
    url: str
    var: Path
    env: dict[str, str]

    def usage_statuses(self) -> list[int]:
        with sqlite3.connect(self.var / "opsportal.sqlite3") as db:
            return [r[0] for r in db.execute("SELECT status_code FROM runtime_usagerecord")]

    def manage(self, *args: str) -> str:
        return manage(self.env, *args)

    def log(self) -> str:
        """What runstack and its processes printed so far."""
        return (self.var / "runstack.log").read_text(errors="replace")


def manage(env: dict[str, str], *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


@contextmanager
def running_stack(var: Path, **extra_env: str) -> Iterator[Stack]:
    web, runtime = free_port(), free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in {
            "DATABASE_URL",
            "CELERY_BROKER_URL",
            "CELERY_RESULT_BACKEND",
            "DJANGO_ALLOW_ASYNC_UNSAFE",
        }
    }
    env.update(
        {
            "OPSPORTAL_VAR_DIR": str(var),
            "OPSPORTAL_RUNTIME_PORT": str(runtime),
            "OPSPORTAL_ADMIN_EMAIL": ADMIN,
            "OPSPORTAL_ADMIN_PASSWORD": PASSWORD,
            **extra_env,
        }
    )
    manage(env, "migrate", "-v0")
    manage(env, "bootstrap")
    log = (var / "runstack.log").open("ab")
    proc = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "runstack",
            "--port",
            str(web),
            "--runtime-port",
            str(runtime),
            "--concurrency",
            "1",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{web}/readyz", timeout=2)
                break
            except OSError:
                time.sleep(0.3)
        yield Stack(f"http://127.0.0.1:{web}", var, env)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@contextmanager
def logged_in_page(stack: Stack) -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(accept_downloads=True)
        page = context.new_page()
        page.goto(f"{stack.url}/login/")
        page.fill("#id_username", ADMIN)
        page.fill("#id_password", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{stack.url}/")
        yield page
        browser.close()


class Console:
    """The console over HTTP as a logged-in browser sees it (session cookie, CSRF token)."""

    def __init__(self, stack: Stack, username: str = ADMIN, password: str = PASSWORD) -> None:
        import requests

        self.stack = stack
        self.http = requests.Session()
        self.http.get(f"{stack.url}/login/", timeout=30)
        response = self.post(
            "/login/", {"username": username, "password": password}, allow_redirects=False
        )
        assert response.status_code == 302, response.text[:500]

    def get(self, path: str, **kwargs: object):  # type: ignore[no-untyped-def]
        return self.http.get(f"{self.stack.url}{path}", timeout=60, **kwargs)

    def post(  # type: ignore[no-untyped-def]
        self, path: str, data: dict[str, object], headers: dict[str, str] | None = None, **kwargs
    ):
        token = self.http.cookies.get("csrftoken", "")
        return self.http.post(
            f"{self.stack.url}{path}",
            data={"csrfmiddlewaretoken": token, **data},
            headers={"X-CSRFToken": token, "Referer": f"{self.stack.url}{path}", **(headers or {})},
            timeout=60,
            **kwargs,
        )
