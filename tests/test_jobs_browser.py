"""The acceptance walk in a real browser on `make run`'s stack: deploy the bundled model through
the wizard, watch the job, call it with curl using the shown URI and a revealed key, rotate the
keys (the old key is refused), schedule rotation, delete it."""

import json
import re
import subprocess

import pytest

from tests.stack_support import logged_in_page, running_stack

pytestmark = pytest.mark.browser
NAME = "web-smol"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with running_stack(
        tmp_path_factory.mktemp("jobs-stack"), OPSPORTAL_JOB_POLL_SECONDS="0.5"
    ) as stack:
        yield stack


@pytest.fixture
def page(stack):
    with logged_in_page(stack) as page:
        page.on("dialog", lambda dialog: dialog.accept())  # the confirm() before rotating
        yield page


def curl(uri: str, key: str) -> tuple[int, str]:
    out = subprocess.run(
        [
            "curl",
            "-s",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "-H",
            f"Authorization: Bearer {key}",
            "-H",
            "Content-Type: application/json",
            f"{uri}/v1/chat/completions",
            "-d",
            json.dumps({"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8}),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    body, _, code = out.stdout.rpartition("\n")
    return int(code), body


def wait_for_job(page) -> list[int]:
    """Follow the job page's live updates until the job ends; return the progress seen."""
    page.evaluate("window.__samePage = true")
    seen = []
    for _ in range(600):
        status = page.get_attribute("#job-live", "data-status")
        seen.append(int(page.inner_text("[data-testid=job-progress]").rstrip("%")))
        if status in ("succeeded", "failed", "cancelled"):
            assert status == "succeeded", page.inner_text("#job-live")
            # The page polled itself to the end: no reload, no navigation.
            assert page.evaluate("window.__samePage") is True
            return seen
        page.wait_for_timeout(250)
    raise AssertionError("the job did not end: " + page.inner_text("#job-live"))


def reveal(page, slot: str) -> str:
    page.click(f"tr[data-slot={slot}] button:has-text('Reveal')")
    return page.input_value("[data-testid=revealed-key]")


def test_deploy_call_rotate_schedule_delete_in_the_browser(page, stack):
    bodies: dict[str, bytes] = {}

    def keep(response) -> None:
        if 300 <= response.status < 400:
            return  # redirects carry no body
        bodies[response.url + f"#{len(bodies)}"] = response.body()

    page.on("response", keep)
    page.goto(f"{stack.url}/deploy/")
    page.select_option("#id_workspace", label="local")
    page.select_option("#id_offering", label="SmolLM2-135M-Instruct (Q4_1)")
    page.fill("#id_name", NAME)
    # The checks answer the latest state of the form (the name is checked 400 ms after typing).
    page.wait_for_selector("[data-check=name][data-status=ok]")
    assert page.get_attribute("[data-check=marketplace]", "data-status") == "todo"
    assert page.get_attribute("[data-check=region]", "data-status") == "ok"
    page.check("#id_accept_terms")
    page.wait_for_selector("[data-check=marketplace][data-status=ok]")
    page.click("text=Start deployment")
    page.wait_for_url("**/jobs/*/")
    progress = wait_for_job(page)
    # The page showed the job unfinished, then finished, updating itself (htmx polls every 2 s,
    # so a quick deploy may show few steps in between).
    assert progress[0] < 100 and progress[-1] == 100, progress
    assert "The endpoint answered" in page.inner_text("[data-testid=job-log]")

    page.click(f"text=Open {NAME}")
    page.wait_for_selector("#keys-panel")
    uri = re.search(r"(http://\S+/endpoints/web-smol)", page.inner_text(".snippet")).group(1)
    first_key = reveal(page, "primary")
    code, body = curl(uri, first_key)
    assert code == 200 and json.loads(body)["choices"][0]["message"]["role"] == "assistant"

    page.click("text=Rotate keys now")
    page.wait_for_url("**/jobs/*/")
    wait_for_job(page)
    assert curl(uri, first_key)[0] == 401  # the old key is refused
    page.goto(f"{stack.url}/endpoints/?q={NAME}")
    page.click(f"#endpoint-results >> text={NAME}")
    page.click("#tab-keys")
    new_key = reveal(page, "primary")
    assert new_key != first_key and curl(uri, new_key)[0] == 200

    page.fill("#id_every_days", "30")
    page.click("text=Save schedule")
    page.wait_for_selector("[data-testid=schedule] >> text=Scheduled every 30 days")
    assert "next rotation" in page.inner_text("[data-testid=schedule]")

    page.click("#tab-overview")
    page.click("text=Delete…")
    page.fill("#id_confirm", "web-smo")
    page.click("text=Delete this endpoint")
    assert "exactly to confirm" in page.inner_text("#id_confirm-error")
    page.fill("#id_confirm", NAME)
    page.click("text=Delete this endpoint")
    page.wait_for_url("**/jobs/*/")
    wait_for_job(page)
    assert curl(uri, new_key)[0] in (401, 404)
    page.goto(f"{stack.url}/endpoints/?q={NAME}")
    assert page.inner_text("[data-testid=result-count]") == "0"

    page.goto(f"{stack.url}/audit/?q={NAME}")
    audit = page.inner_text("#audit-results")
    for action in (
        "endpoint.deploy",
        "key.reveal",
        "key.regenerate",
        "key.schedule",
        "endpoint.delete",
    ):
        assert action in audit, action

    # The keys reached the browser only in the two reveal answers.
    for url, body in bodies.items():
        if "/keys/reveal/" in url:
            continue
        assert first_key.encode() not in body, url
        assert new_key.encode() not in body, url


def test_the_wizard_shows_managed_fields_and_checks_cores_live(page, stack):
    page.goto(f"{stack.url}/deploy/")
    assert not page.is_visible("#id_vm_sku")  # serverless: no VM size
    assert page.is_visible("#id_accept_terms")
    page.select_option("#id_workspace", label="local")
    page.select_option("#id_offering", label="SmolLM2-135M-Instruct (Q4_1)")
    page.check("#id_kind_1")  # managed compute
    # The chosen workspace's VM sizes replace the free-text field.
    page.wait_for_selector("select#id_vm_sku option[value=Local_2T_8K]", state="attached")
    assert page.is_visible("#id_vm_sku") and not page.is_visible("#id_accept_terms")
    page.fill("#id_name", "web-managed")
    page.select_option("#id_vm_sku", "Local_2T_8K")
    page.fill("#id_instance_count", "5")  # 10 cores on a machine that has fewer
    page.locator("#id_instance_count").dispatch_event("change")
    page.wait_for_selector("[data-check=quota][data-status=fail]")
    assert "needs 10 local cores" in page.inner_text("[data-check=quota]")
    page.fill("#id_instance_count", "1")
    page.locator("#id_instance_count").dispatch_event("change")
    page.wait_for_selector("[data-check=quota][data-status=ok]")
    # What the REST API cannot do is said, not offered.
    assert page.locator("#id_shared_quota").count() == 0
    assert "REST API has no setting to turn it on" in page.inner_text("fieldset.managed-only")
    # Submitting something the checks refuse keeps the form, with the error at the field.
    page.fill("#id_name", "9-bad")
    page.click("text=Start deployment")
    page.wait_for_selector("#id_name_error, .errorlist")
    assert "not a valid endpoint name" in page.content()
    assert page.input_value("#id_instance_count") == "1"
