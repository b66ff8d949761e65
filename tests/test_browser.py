"""The endpoints list in a real browser: filters swap the table in place, the URL follows,
the back button restores the previous filter. Debian's chromium, driven by Playwright."""

import pytest
from django.urls import reverse

from opsportal.inventory.models import Endpoint
from tests.conftest import CHROMIUM, CHROMIUM_ARGS
from tests.factories import EndpointFactory, offering

pytestmark = pytest.mark.browser


@pytest.fixture
def browser(monkeypatch):
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the ORM calls in these tests are
    # ordinary blocking calls made between browser steps, never inside the loop.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as pw:
        instance = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


def log_in(page, live_server, username: str) -> None:
    page.goto(f"{live_server.url}{reverse('login')}")
    page.fill("#id_username", username)
    page.fill("#id_password", "correct horse battery staple")
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server.url}/")


def test_it_filters_in_place_and_follows_the_url(transactional_db, live_server, browser, world):
    for i in range(7):
        EndpointFactory(
            workspace=world.ws_a,
            name=f"managed-{i}",
            offering=offering("mixtral-8x7b-instruct-v01"),
        )
    EndpointFactory(
        workspace=world.ws_a,
        name="llama-serverless",
        kind=Endpoint.Kind.SERVERLESS,
        offering=offering("meta-llama-3-8b-instruct"),
    )
    page = browser.new_page()
    log_in(page, live_server, "viewer@example.com")

    page.goto(f"{live_server.url}{reverse('endpoints')}")
    count = page.locator("[data-testid=result-count]")
    assert count.inner_text() == "9"
    page.evaluate("window.__stillSamePage = true")

    page.select_option("#id_kind", "serverless")
    page.wait_for_url("**/endpoints/?kind=serverless")  # only the fields that are set
    page.wait_for_function(
        "() => document.querySelector('[data-testid=result-count]').innerText === '1'"
    )
    assert page.locator("#endpoint-results").inner_text().count("llama-serverless") == 1
    assert page.evaluate("window.__stillSamePage") is True  # swapped in place, no reload

    page.fill("#id_q", "nothing-matches-this")
    page.wait_for_url("**q=nothing-matches-this*")
    page.wait_for_function(
        "() => document.querySelector('[data-testid=result-count]').innerText === '0'"
    )
    assert "No endpoint matches these filters" in page.inner_text("#endpoint-results")
    assert page.evaluate("window.__stillSamePage") is True

    page.go_back()
    page.wait_for_function(
        "() => document.querySelector('[data-testid=result-count]').innerText === '1'"
    )
    assert "kind=serverless" in page.url and "nothing-matches" not in page.url
    assert page.input_value("#id_kind") == "serverless"
    assert page.input_value("#id_q") == ""

    # A bookmarked URL opens with the filter applied.
    fresh = browser.new_page()
    fresh.context.add_cookies(page.context.cookies())
    fresh.goto(f"{live_server.url}{reverse('endpoints')}?kind=managed")
    assert fresh.locator("[data-testid=result-count]").inner_text() == "8"
    assert fresh.input_value("#id_kind") == "managed"

    # Tabs on the endpoint page swap in place too, and keep an href for plain navigation.
    page.goto(f"{live_server.url}{reverse('endpoint_detail', args=[world.endpoint_a.pk])}")
    page.click("#tab-keys")
    page.wait_for_url("**?tab=keys")
    assert "Keys are never shown here" in page.inner_text("#tab-panel")
    assert page.get_attribute("#tab-keys", "aria-selected") == "true"
