"""Personas: an operator and a viewer of team A, an admin of team A, an outsider in team B."""

from dataclasses import dataclass

import pytest
from django.test import Client

from opsportal.accounts.models import Role
from tests.factories import (
    EndpointFactory,
    MembershipFactory,
    TeamFactory,
    UserFactory,
    WorkspaceFactory,
)


@dataclass
class World:
    team_a: object
    team_b: object
    ws_a: object
    ws_b: object
    endpoint_a: object
    endpoint_b: object
    admin: object
    operator: object
    viewer: object
    outsider: object


@pytest.fixture
def catalog(db) -> None:
    """The catalog comes from a data migration; a transactional test's flush removes it."""
    from opsportal.inventory.models import Offering
    from opsportal.inventory.services import offerings_load

    offerings_load(offering_model=Offering)


@pytest.fixture
def world(catalog) -> World:
    team_a, team_b = TeamFactory(name="Alpha", slug="alpha"), TeamFactory(name="Beta", slug="beta")
    ws_a = WorkspaceFactory(team=team_a, name="ws-alpha")
    ws_b = WorkspaceFactory(team=team_b, name="ws-beta")
    users = {}
    for name, team, role in [
        ("admin", team_a, Role.ADMIN),
        ("operator", team_a, Role.OPERATOR),
        ("viewer", team_a, Role.VIEWER),
        ("outsider", team_b, Role.ADMIN),
    ]:
        users[name] = UserFactory(username=f"{name}@example.com")
        MembershipFactory(team=team, user=users[name], role=role)
    return World(
        team_a=team_a,
        team_b=team_b,
        ws_a=ws_a,
        ws_b=ws_b,
        endpoint_a=EndpointFactory(workspace=ws_a, name="ep-alpha"),
        endpoint_b=EndpointFactory(workspace=ws_b, name="ep-beta"),
        **users,
    )


# Debian's chromium as root, on a machine without outside network (see the env notes).
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture(autouse=True)
def fast_password_hashing(settings) -> None:
    # The default hasher is slow on purpose; tests create many users.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
