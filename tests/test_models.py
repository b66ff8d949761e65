"""The seed's rules that the database itself holds."""

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from opsportal.inventory.models import Endpoint
from tests.factories import (
    DeploymentFactory,
    EndpointFactory,
    SubscriptionFactory,
    WorkspaceFactory,
    offering,
)

pytestmark = pytest.mark.production_path


def serverless(**kwargs) -> Endpoint:
    kwargs.setdefault("offering", offering("meta-llama-3-8b-instruct"))
    return EndpointFactory(kind=Endpoint.Kind.SERVERLESS, **kwargs)


def refused(make) -> bool:
    try:
        with transaction.atomic():
            make()
    except IntegrityError:
        return True
    return False


def test_it_allows_one_serverless_endpoint_per_model_per_workspace(db):
    ws = WorkspaceFactory()
    serverless(workspace=ws, name="llama-a")
    assert refused(lambda: serverless(workspace=ws, name="llama-b"))
    # Another model in the same workspace is fine, and so is the same model elsewhere.
    serverless(workspace=ws, name="mistral-a", offering=offering("mistral-small"))
    serverless(workspace=WorkspaceFactory(), name="llama-c")


def test_it_keeps_serverless_names_unique_in_a_region(db):
    serverless(workspace=WorkspaceFactory(region="eastus2"), name="shared-name")
    assert refused(
        lambda: serverless(workspace=WorkspaceFactory(region="eastus2"), name="shared-name")
    )
    serverless(workspace=WorkspaceFactory(region="swedencentral"), name="shared-name")


def test_it_frees_the_name_and_model_once_deleted(db):
    ws = WorkspaceFactory()
    old = serverless(workspace=ws, name="reused")
    old.deleted_at = timezone.now()
    old.save()
    serverless(workspace=ws, name="reused")
    assert Endpoint.objects.filter(name="reused").count() == 2


def test_it_copies_the_region_from_the_workspace(db):
    endpoint = EndpointFactory(workspace=WorkspaceFactory(region="westus3"))
    assert endpoint.region == "westus3"


def test_it_refuses_a_serverless_endpoint_without_content_safety(db):
    ws = WorkspaceFactory()
    assert refused(lambda: serverless(workspace=ws, name="unsafe", content_safety=False))
    # A synced endpoint of a model the catalog does not list keeps its model id instead.
    serverless(workspace=ws, name="unknown-model", offering=None, model_id="azureml://x/y")
    EndpointFactory(workspace=ws, name="managed-unsafe", content_safety=False)


def test_it_allows_one_marketplace_subscription_per_offering_per_workspace(db):
    ws = WorkspaceFactory()
    SubscriptionFactory(workspace=ws)
    assert refused(lambda: SubscriptionFactory(workspace=ws))
    SubscriptionFactory(workspace=ws, offering=offering("mistral-small"))


def test_it_bounds_instance_count_and_traffic(db):
    endpoint = EndpointFactory()
    assert refused(lambda: DeploymentFactory(endpoint=endpoint, instance_count=0))
    assert refused(lambda: DeploymentFactory(endpoint=endpoint, traffic_percent=101))
    DeploymentFactory(endpoint=endpoint, instance_count=2, traffic_percent=100)


def test_it_loads_the_catalog_from_the_data_file(db):
    from opsportal.inventory.models import Offering
    from opsportal.inventory.services import offerings_read

    assert Offering.objects.count() == len(offerings_read()) == 14
    llama = offering("meta-llama-3-70b-instruct")
    assert llama.serverless_regions == ["eastus2", "swedencentral"]
    assert (llama.default_max_tokens, llama.default_ignore_eos) == (16, True)
    assert "/v1/completions" in llama.routes
    large = offering("mistral-large-2402")
    assert large.registry_model_id == "azureml://registries/azureml-mistral/models/Mistral-large"
    assert (large.default_max_tokens, large.default_ignore_eos) == (8192, False)
    assert len(large.serverless_regions) == 7
    assert offering("mistral-nemo").managed_compute is None
    assert offering("mixtral-8x7b-v01").serverless is False
    assert large.serverless_allowed_in("eastus") and not llama.serverless_allowed_in("eastus")


def test_it_ships_the_bundled_local_model_in_the_catalog(db):
    from opsportal.runtime.engine import resolve_model_path

    smol = offering("smollm2-135m-instruct")
    assert (smol.provider_scope, smol.api_family, smol.serverless_regions) == (
        "local",
        "llama",
        ["local"],
    )
    path = resolve_model_path(smol.local_model_path)
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.stat().st_size > 90_000_000
