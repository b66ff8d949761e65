"""The two Azure journeys in a real browser, on `make run`'s stack pointed at the Azure emulator
(through the same AZURE_* settings a real tenant uses): a superuser syncs, deploys Mistral Large
serverless (subscribing on the way), chats, rotates, and sees the Marketplace cost of that
endpoint; then a Llama model on managed compute, with a second deployment at 90/10, chat through
/score, scaling and removing a deployment."""

import pytest

from tests.emulator_support import emulator_world, running_emulator
from tests.stack_support import logged_in_page, running_stack
from tests.test_jobs_browser import wait_for_job

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def azure():
    with running_emulator(world=emulator_world()) as running:
        yield running


@pytest.fixture(scope="module")
def stack(azure, tmp_path_factory):
    with running_stack(
        tmp_path_factory.mktemp("azure-stack"), OPSPORTAL_JOB_POLL_SECONDS="0.5", **azure.env
    ) as stack:
        stack.manage(
            "shell",
            "-c",
            "from opsportal.accounts.models import Team; "
            "Team.objects.get_or_create(slug='alpha', defaults={'name': 'Alpha'})",
        )
        yield stack


@pytest.fixture
def page(stack):
    with logged_in_page(stack) as page:
        page.on("dialog", lambda dialog: dialog.accept())  # the confirms before rotating
        yield page


def job_done(page) -> None:
    """The action led to its job's page; the job ran to its end."""
    try:
        page.wait_for_url("**/jobs/*/", timeout=20000)
    except Exception:
        raise AssertionError(page.inner_text("main")[:2000]) from None
    wait_for_job(page)


def sync(page, stack) -> None:
    page.goto(f"{stack.url}/accounts/")
    page.click("text=Sync now")
    job_done(page)


def chat(page, message: str) -> str:
    page.click("#tab-chat")
    page.wait_for_selector("#tab-panel[data-tab=chat]")
    page.fill("#id_message", message)
    if not page.is_visible("#id_max_tokens"):
        page.click("details.params summary")  # the parameters fold open
    page.fill("#id_max_tokens", "12")
    page.click("#composer button[type=submit]")
    page.wait_for_selector(".turn:last-child .bubble-model[data-done]")
    assert "error" not in page.inner_text(".turn:last-child [data-stats]").lower()
    return page.inner_text(".turn:last-child .choice")


def test_serverless_journey_in_the_browser(page, stack, azure):
    sync(page, stack)
    page.goto(f"{stack.url}/workspaces/")
    page.click("text=ws-eastus2")
    assert "Alpha" in page.inner_text(".facts")  # the team its Azure tag names

    page.goto(f"{stack.url}/deploy/")
    page.select_option("#id_workspace", label="ws-eastus2")
    page.select_option("#id_offering", label="Mistral Large (2402)")
    page.fill("#id_name", "mistral-web")
    page.wait_for_selector("[data-check=marketplace][data-status=todo]")
    assert "Azure AI Developer role" in page.inner_text("[data-check=marketplace]")
    page.check("#id_accept_terms")
    page.wait_for_selector("[data-check=marketplace][data-status=ok]")
    page.click("text=Start deployment")
    job_done(page)
    assert "Subscribing ws-eastus2" in page.inner_text("[data-testid=job-log]")

    page.click("text=Open mistral-web")
    assert chat(page, "Say hello.")
    page.click("#tab-keys")
    page.wait_for_selector("#tab-panel[data-tab=keys]")
    page.click("text=Rotate keys now")
    job_done(page)

    # A day and a half later, Cost Management has billed the tokens; the pull maps them.
    azure.control.advance(36 * 3600)
    assert "rows" in stack.manage("costs_pull", "--force")
    page.goto(f"{stack.url}/costs/")
    costs = page.inner_text("main")
    assert "Mistral Large (2402)" in costs and "Alpha" in costs and "ws-eastus2" in costs
    page.goto(f"{stack.url}/endpoints/?q=mistral-web")
    page.click("#endpoint-results >> text=mistral-web")
    page.click("#tab-usage")
    page.wait_for_selector("#tab-panel[data-tab=usage]")
    usage = page.inner_text("#tab-panel")
    assert "paygo-inference-input-tokens" in usage and "paygo-inference-output-tokens" in usage
    page.goto(f"{stack.url}/quota/")
    assert "mistral-web" in page.inner_text("main")

    page.goto(f"{stack.url}/endpoints/?q=mistral-web")
    page.click("#endpoint-results >> text=mistral-web")
    page.click("text=Delete…")
    page.fill("#id_confirm", "mistral-web")
    page.click("text=Delete this endpoint")
    job_done(page)
    gone = [e for e in azure.control.state()["serverless_endpoints"] if "mistral-web" in e["id"]]
    assert gone == []


def test_managed_journey_in_the_browser(page, stack, azure):
    sync(page, stack)
    page.goto(f"{stack.url}/deploy/")
    page.select_option("#id_workspace", label="ws-eastus2")
    page.select_option("#id_offering", label="Meta-Llama-3-8B-Instruct")
    page.check("#id_kind_1")  # managed compute
    page.wait_for_selector(
        "select#id_vm_sku option[value=Standard_NC24ads_A100_v4]", state="attached"
    )
    page.fill("#id_name", "llama-web")
    page.fill("#id_deployment_name", "blue")
    page.select_option("#id_vm_sku", "Standard_NC24ads_A100_v4")
    page.fill("#id_instance_count", "3")
    page.locator("#id_instance_count").dispatch_event("change")
    try:
        page.wait_for_selector("[data-check=quota][data-status=fail]", timeout=10000)
    except Exception:
        raise AssertionError(page.inner_text("#checklist")) from None
    page.fill("#id_instance_count", "2")
    page.locator("#id_instance_count").dispatch_event("change")
    page.wait_for_selector("[data-check=quota][data-status=ok]")
    page.click("text=Start deployment")
    job_done(page)

    page.click("text=Open llama-web")
    page.click("#tab-overview")
    page.wait_for_selector("#tab-panel[data-tab=overview]")
    page.click("text=Add a deployment")
    page.check("#id_kind_1")
    page.check("#id_endpoint_mode_1")  # add to an existing endpoint
    page.wait_for_selector("select#id_existing option >> text=llama-web", state="attached")
    page.select_option("#id_existing", label="llama-web")
    page.fill("#id_deployment_name", "green")
    page.select_option("#id_vm_sku", "Standard_E4s_v3")
    page.fill("#id_instance_count", "1")
    page.fill("#id_traffic_percent", "0")
    page.locator("#id_traffic_percent").dispatch_event("change")
    page.wait_for_selector("[data-check=quota][data-status=ok]")
    page.click("text=Start deployment")
    job_done(page)

    page.click("text=Open llama-web")
    page.click("#tab-overview")
    page.wait_for_selector("#tab-panel[data-tab=overview]")
    page.click("text=Scale, split traffic, remove…")
    page.fill("#traffic-blue", "90")
    page.fill("#traffic-green", "10")
    page.click("text=Apply traffic split")
    job_done(page)
    (endpoint,) = [e for e in azure.control.state()["online_endpoints"] if "llama-web" in e["id"]]
    assert endpoint["traffic"] == {"blue": 90, "green": 10}

    page.goto(f"{stack.url}/endpoints/?q=llama-web")
    page.click("#endpoint-results >> text=llama-web")
    assert "/score" in page.inner_text("#tab-panel")
    assert chat(page, "Say hello.")

    page.click("#tab-overview")
    page.wait_for_selector("#tab-panel[data-tab=overview]")
    page.click("text=Scale, split traffic, remove…")
    page.fill("#count-green", "2")
    page.click("tr[data-deployment=green] >> text=Scale")
    job_done(page)
    page.go_back()
    page.reload()
    page.fill("#traffic-blue", "0")
    page.fill("#traffic-green", "100")
    page.click("text=Apply traffic split")
    job_done(page)
    page.go_back()
    page.reload()
    page.click("tr[data-deployment=blue] >> text=Remove…")
    page.click("button:has-text('Remove blue')")
    job_done(page)
    (endpoint,) = [e for e in azure.control.state()["online_endpoints"] if "llama-web" in e["id"]]
    assert [(d["name"], d["capacity"]) for d in endpoint["deployments"]] == [("green", 2)]
