import pytest

import opsportal.providers.local  # noqa: F401  (registered before each test empties the registry)
from opsportal.providers import ProviderError, base, for_workspace, register
from tests.factories import WorkspaceFactory


def test_it_picks_the_back_end_by_the_workspace_provider(db, monkeypatch):
    monkeypatch.setattr(base, "_FACTORIES", {})
    register("azure")(lambda ws, **options: ("azure back end", ws.name))
    register("local")(lambda ws, **options: ("local back end", ws.name))
    assert for_workspace(WorkspaceFactory(name="a", provider="azure")) == ("azure back end", "a")
    assert for_workspace(WorkspaceFactory(name="b", provider="local")) == ("local back end", "b")


def test_it_says_plainly_when_no_back_end_serves_a_workspace(db, monkeypatch):
    monkeypatch.setattr(base, "_FACTORIES", {})
    with pytest.raises(ProviderError) as caught:
        for_workspace(WorkspaceFactory(provider="local"))
    assert "Local runtime workspaces" in caught.value.message
    assert caught.value.retryable is False
