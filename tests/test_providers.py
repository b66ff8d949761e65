import pytest

from opsportal.providers import ProviderError, for_workspace
from tests.factories import WorkspaceFactory


def azure_back_end(ws, **options):
    return ("azure back end", ws.name)


def local_back_end(ws, **options):
    return ("local back end", ws.name)


def test_it_picks_the_back_end_by_the_workspace_provider(db, settings):
    settings.OPSPORTAL_PROVIDERS = {
        "azure": "tests.test_providers.azure_back_end",
        "local": "tests.test_providers.local_back_end",
    }
    assert for_workspace(WorkspaceFactory(name="a", provider="azure")) == ("azure back end", "a")
    assert for_workspace(WorkspaceFactory(name="b", provider="local")) == ("local back end", "b")


def test_it_says_plainly_when_no_back_end_serves_a_workspace(db, settings):
    settings.OPSPORTAL_PROVIDERS = {}
    with pytest.raises(ProviderError) as caught:
        for_workspace(WorkspaceFactory(provider="local"))
    assert "Local runtime workspaces" in caught.value.message
    assert caught.value.retryable is False
