"""Test chat in a real browser against the stack `make run` starts (web, worker, beat, local
runtime with the real model), each in its own process, on a database of its own."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import CHROMIUM, CHROMIUM_ARGS
from tests.runtime_support import free_port

pytestmark = pytest.mark.browser
ROOT = Path(__file__).resolve().parent.parent
ADMIN, PASSWORD = "chat-admin@example.com", "browser-test-password"


@dataclass
class Stack:
    url: str
    var: Path
    env: dict[str, str]
    keys: tuple[str, str]

    def usage_statuses(self) -> list[int]:
        with sqlite3.connect(self.var / "opsportal.sqlite3") as db:
            return [r[0] for r in db.execute("SELECT status_code FROM runtime_usagerecord")]


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


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    var = tmp_path_factory.mktemp("stack")
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
        }
    )
    manage(env, "migrate", "-v0")
    manage(env, "bootstrap")
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
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{web}/readyz", timeout=2)
                break
            except OSError:
                time.sleep(0.3)
        manage(env, "local_endpoint", "create", "browser-smol", "--accept-licence")
        keys = manage(env, "local_endpoint", "keys", "browser-smol").split()
        yield Stack(f"http://127.0.0.1:{web}", var, env, (keys[1], keys[3]))
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def page(stack):
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


def open_chat(page, stack) -> None:
    page.goto(f"{stack.url}/endpoints/?q=browser-smol")
    page.click("#endpoint-results >> text=browser-smol")
    page.click("#tab-chat")
    page.wait_for_selector("#composer")


def watch_growth(page) -> None:
    """Record the answer's length at every DOM change of the conversation."""
    page.evaluate("""() => {
      window.__lengths = [];
      new MutationObserver(() => {
        const el = document.querySelector('.turn:last-child .bubble-model .choice');
        if (el) window.__lengths.push(el.textContent.length);
      }).observe(document.querySelector('#conversation'),
                 {subtree: true, childList: true, characterData: true});
    }""")


def test_it_streams_an_answer_live_with_usage_and_finish_reason(page, stack):
    seen: list[str] = []
    page.on("response", lambda r: seen.append(r.url))
    open_chat(page, stack)
    watch_growth(page)
    page.fill("#id_message", "Tell me a story about a lighthouse.")
    page.click("details.params summary")
    page.fill("#id_max_tokens", "48")
    page.click("#composer button[type=submit]")
    page.wait_for_selector(".bubble-model[data-done='1']", timeout=60_000)
    lengths = page.evaluate("window.__lengths")
    growing = sorted({n for n in lengths if n > 0})
    assert len(growing) >= 5, lengths  # the answer grew over several DOM updates
    stats = page.inner_text(".turn:last-child [data-testid=turn-stats]")
    assert "completion 48" in stats and "total" in stats and "tokens/s" in stats
    assert "first token" in stats
    assert page.inner_text(".turn:last-child .finish") == "length"
    assert page.input_value("#id_message") == ""  # cleared for the next message
    assert any("/stream/" in url for url in seen)


def test_it_shows_a_bad_parameter_as_a_field_error(page, stack):
    open_chat(page, stack)
    turns = page.locator(".turn").count()
    page.fill("#id_message", "Hello")
    page.click("details.params summary")
    page.fill("#id_temperature", "7")
    page.click("#composer button[type=submit]")
    error = page.wait_for_selector("#id_temperature-error")
    assert "'temperature' must be between 0 and 2" in error.inner_text()
    assert page.locator(".turn").count() == turns
    page.fill("#id_temperature", "0.5")
    page.fill("#id_best_of", "2")
    page.fill("#id_n", "2")
    page.click("#composer button[type=submit]")
    assert "greater than 'n'" in page.wait_for_selector("#id_best_of-error").inner_text()


def test_it_never_lets_the_key_reach_the_browser(page, stack):
    bodies: list[bytes] = []

    def keep(response) -> None:
        if response.request.resource_type in {
            "document",
            "xhr",
            "fetch",
            "script",
            "stylesheet",
            "eventsource",
        }:
            try:
                bodies.append(response.body())
            except Exception:
                bodies.append(b"")

    page.on("response", keep)
    open_chat(page, stack)
    page.fill("#id_message", "Hi")
    page.click("#composer button[type=submit]")
    page.wait_for_selector(".turn:last-child .bubble-model[data-done='1']", timeout=60_000)
    for tab in ("overview", "keys", "usage", "jobs"):
        page.click(f"#tab-{tab}")
        page.wait_for_url(f"**tab={tab}")
    with page.expect_download() as download:
        page.click("#tab-chat")
        page.click("text=Export transcript")
    exported = Path(download.value.path()).read_bytes()
    everything = b"".join(bodies) + page.content().encode() + exported
    assert len(bodies) > 5
    for key in stack.keys:
        assert key.encode() not in everything


def test_it_exports_a_transcript_whose_curl_works(page, stack):
    open_chat(page, stack)
    page.fill("#id_message", "Say hello.")
    page.click("#composer button[type=submit]")
    page.wait_for_selector(".turn:last-child .bubble-model[data-done='1']", timeout=60_000)
    with page.expect_download() as download:
        page.click("text=Export transcript")
    export = json.loads(Path(download.value.path()).read_text())
    turn = export["turns"][-1]
    assert turn["request"]["messages"][-1] == {"role": "user", "content": "Say hello."}
    out = subprocess.run(
        ["bash", "-c", turn["curl"]],
        env={**os.environ, "KEY": stack.keys[0]},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stdout.rstrip().endswith("data: [DONE]"), out.stdout[-300:]


def test_it_stops_generation_when_the_user_presses_stop(page, stack):
    open_chat(page, stack)
    page.fill("#id_message", "Write a very long essay.")
    page.click("details.params summary")
    page.fill("#id_max_tokens", "3000")
    page.select_option("#id_ignore_eos", "true")
    before = stack.usage_statuses().count(499)
    page.click("#composer button[type=submit]")
    page.wait_for_function(
        "document.querySelector('.turn:last-child .choice').textContent.length > 20"
    )
    page.click(".turn:last-child [data-stop]")
    assert "Stopped." in page.inner_text(".turn:last-child [data-stats]")
    # The relay closed the upstream request: the gateway metered it as abandoned (499)
    # long before 3000 tokens could have been generated.
    deadline = time.monotonic() + 20
    while stack.usage_statuses().count(499) == before:
        assert time.monotonic() < deadline, "the upstream request was not closed"
        time.sleep(0.2)
