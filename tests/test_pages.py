import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from opsportal.inventory.models import Endpoint, ProvisioningState
from tests.conftest import client_for
from tests.factories import (
    DeploymentFactory,
    EndpointFactory,
    JobFactory,
    SubscriptionFactory,
    WorkspaceFactory,
    offering,
)

pytestmark = pytest.mark.production_path


def test_it_renders_every_page_for_a_viewer(world):
    client = client_for(world.viewer)
    SubscriptionFactory(workspace=world.ws_a)
    JobFactory(workspace=world.ws_a, endpoint=world.endpoint_a, target_label="ep-alpha")
    urls = [
        reverse("dashboard"),
        reverse("accounts"),
        reverse("workspaces"),
        reverse("workspace_detail", args=[world.ws_a.pk]),
        reverse("endpoints"),
        reverse("offerings"),
        reverse("offering_detail", args=["mistral-large-2407"]),
        reverse("teams"),
        reverse("team_detail", args=["alpha"]),
        reverse("jobs"),
    ]
    urls += [
        reverse("endpoint_detail", args=[world.endpoint_a.pk]) + f"?tab={tab}"
        for tab in ["overview", "keys", "jobs", "usage", "chat"]
    ]
    for url in urls:
        response = client.get(url)
        assert response.status_code == 200, url
        assert b'src="/static/vendor/htmx-2.0.11.min.js"' in response.content, url


def test_it_shows_the_catalog_facts(world):
    body = client_for(world.viewer).get(reverse("offerings")).content.decode()
    assert "eastus2, swedencentral" in body  # Llama 3 serverless regions
    assert "not stated" in body  # Mistral Nemo on managed compute
    detail = client_for(world.viewer).get(reverse("offering_detail", args=["mistral-small"]))
    text = detail.content.decode()
    assert "no service-level agreement" in text
    assert "azureml://registries/azureml-mistral/models/Mistral-small" in text
    assert "200,000 tokens/min, 1,000 requests/min" in text


def test_it_filters_endpoints(world):
    llama = EndpointFactory(
        workspace=world.ws_a,
        name="llama-serverless",
        kind=Endpoint.Kind.SERVERLESS,
        offering=offering("meta-llama-3-8b-instruct"),
        provisioning_state=ProvisioningState.FAILED,
    )
    client = client_for(world.viewer)

    def names(**params) -> str:
        return client.get(reverse("endpoints"), params).content.decode()

    assert "llama-serverless" in names(kind="serverless")
    assert "ep-alpha" not in names(kind="serverless")
    assert "llama-serverless" in names(state="Failed")
    assert "ep-alpha" not in names(state="Failed")
    assert "llama-serverless" in names(family="Meta")
    assert "ep-alpha" in names(family="Mistral")
    assert "llama-serverless" in names(q="LLAMA")
    assert "llama-serverless" in names(region="eastus2", workspace=str(world.ws_a.pk))
    assert "llama-serverless" in names(team=str(world.team_a.pk))
    # Filtering by another team's workspace shows nothing of it (and is a field error).
    body = names(workspace=str(world.ws_b.pk))
    assert "ep-beta" not in body
    assert "Select a valid choice" in body
    assert llama.pk


def test_it_returns_the_partial_to_htmx_and_the_page_otherwise(world):
    client = client_for(world.viewer)
    full = client.get(reverse("endpoints"), {"kind": "managed"})
    partial = client.get(reverse("endpoints"), {"kind": "managed"}, headers={"HX-Request": "true"})
    restore = client.get(
        reverse("endpoints"),
        {"kind": "managed"},
        headers={"HX-Request": "true", "HX-History-Restore-Request": "true"},
    )
    assert b"<html" in full.content
    assert b"<html" not in partial.content
    assert b'id="endpoint-results"' in partial.content
    assert b"<html" in restore.content
    assert "HX-Request" in partial["Vary"]


def test_it_paginates_endpoints(world, settings):
    settings.OPSPORTAL_PAGE_SIZE = 5
    for i in range(12):
        EndpointFactory(workspace=world.ws_a, name=f"bulk-{i:02d}")
    client = client_for(world.viewer)
    page1 = client.get(reverse("endpoints")).content.decode()
    assert "Page 1 of 3" in page1
    page3 = client.get(reverse("endpoints"), {"page": 3, "kind": "managed"}).content.decode()
    assert "Page 3 of 3" in page3
    assert "kind=managed&amp;page=2" in page3  # pagination keeps the filters
    assert client.get(reverse("endpoints"), {"page": "999"}).status_code == 200


def test_it_shows_endpoints_needing_attention(world):
    EndpointFactory(workspace=world.ws_a, name="broken-one", provisioning_state="Failed")
    body = client_for(world.viewer).get(reverse("dashboard")).content.decode()
    assert "broken-one" in body


def test_it_shows_empty_states(db):
    from tests.factories import UserFactory

    lonely = UserFactory(username="lonely@example.com")
    client = client_for(lonely)
    assert "No endpoints yet" in client.get(reverse("endpoints")).content.decode()
    assert "No workspaces you can see" in client.get(reverse("workspaces")).content.decode()
    assert "not in any team" in client.get(reverse("teams")).content.decode()


def test_it_shows_honest_empty_tabs(world):
    client = client_for(world.viewer)
    url = reverse("endpoint_detail", args=[world.endpoint_a.pk])
    keys = client.get(url, {"tab": "keys"}, headers={"HX-Request": "true"}).content.decode()
    assert "not in the secret store yet" in keys  # no key published for this endpoint
    assert "Reveal" not in keys and "Rotate keys now" not in keys  # a viewer's page
    assert "<html" not in keys
    assert 'aria-selected="true" aria-controls="tab-panel">Keys' in keys


def _queries(client, url: str, params: dict | None = None) -> int:
    with CaptureQueriesContext(connection) as ctx:
        assert client.get(url, params or {}).status_code == 200
    return len(ctx.captured_queries)


def _grow(world, n: int) -> None:
    for i in range(n):
        ws = WorkspaceFactory(team=world.team_a, account=world.ws_a.account)
        ep = EndpointFactory(workspace=ws, name=f"grow-{ws.pk}-{i}")
        DeploymentFactory(endpoint=ep)
        SubscriptionFactory(workspace=ws)
        EndpointFactory(workspace=world.ws_a, name=f"grow-a-{ws.pk}-{i}")
        JobFactory(workspace=ws, endpoint=ep, requested_by=world.viewer)


def test_it_keeps_query_counts_flat_as_rows_grow(world):
    client = client_for(world.viewer)
    pages = [
        (reverse("dashboard"), None),
        (reverse("endpoints"), None),
        (reverse("endpoints"), {"kind": "managed", "region": "eastus2", "q": "grow", "page": 2}),
        (reverse("workspaces"), None),
        (reverse("workspace_detail", args=[world.ws_a.pk]), None),
        (reverse("accounts"), None),
        (reverse("jobs"), None),
        (reverse("endpoint_detail", args=[world.endpoint_a.pk]), None),
    ]
    _grow(world, 3)
    before = [_queries(client, url, params) for url, params in pages]
    _grow(world, 60)
    after = [_queries(client, url, params) for url, params in pages]
    assert after == before
    assert max(after) <= 12
