"""Test chat in a real browser against the stack `make run` starts (web, worker, beat, local
runtime with the real model), each in its own process, on a database of its own."""

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.stack_support import Stack, logged_in_page, running_stack

pytestmark = pytest.mark.browser


@dataclass
class ChatStack(Stack):
    keys: tuple[str, str] = ("", "")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    # Local cost meters every 2 s instead of every minute, so the cost test need not wait.
    with running_stack(
        tmp_path_factory.mktemp("stack"), OPSPORTAL_LOCAL_COST_INTERVAL_SECONDS="2"
    ) as base:
        base.manage("local_endpoint", "create", "browser-smol", "--accept-licence")
        keys = base.manage("local_endpoint", "keys", "browser-smol").split()
        yield ChatStack(base.url, base.var, base.env, (keys[1], keys[3]))


@pytest.fixture
def page(stack):
    with logged_in_page(stack) as page:
        yield page


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
        "() => document.querySelector('.turn:last-child .choice').textContent.length > 20"
    )
    page.click(".turn:last-child [data-stop]")
    assert "Stopped." in page.inner_text(".turn:last-child [data-stats]")
    # The relay closed the upstream request: the gateway metered it as abandoned (499)
    # long before 3000 tokens could have been generated.
    deadline = time.monotonic() + 20
    while stack.usage_statuses().count(499) == before:
        assert time.monotonic() < deadline, "the upstream request was not closed"
        time.sleep(0.2)


def test_chat_traffic_shows_up_as_cost_meters_chart_and_quota(page, stack):
    open_chat(page, stack)
    page.fill("#id_message", "Count to five.")
    page.click("#composer button[type=submit]")
    page.wait_for_selector(".turn:last-child .bubble-model[data-done='1']", timeout=60_000)
    page.click("#tab-usage")
    page.wait_for_selector("[data-label='Tokens, last minute']")
    tokens = float(page.get_attribute("[data-label='Tokens, last minute']", "data-value"))
    assert tokens > 0  # the gauge moved with the traffic just sent
    for _ in range(60):  # beat computes the local meters every 2 s here
        if page.locator("tr[data-meter=paygo-inference-output-tokens]").count():
            break
        page.wait_for_timeout(1000)
        page.reload()
    for meter in ("paygo-inference-input-tokens", "paygo-inference-output-tokens"):
        cost = page.inner_text(f"tr[data-meter={meter}] [data-testid=meter-cost]")
        assert float(cost.split()[0]) > 0, meter
    page.wait_for_selector("#endpoint-chart[data-drawn='1']")
    page.goto(f"{stack.url}/costs/")
    assert float(page.inner_text("[data-testid=cost-total]")) > 0
    page.wait_for_selector("#cost-chart[data-drawn='1']")
    assert page.locator("tr[data-meter=paygo-inference-output-tokens]").count() == 1
