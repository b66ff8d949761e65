"""The secret store that key rotation publishes to.

By default the database, encrypted with the console's Fernet key (OPSPORTAL_SECRET_STORE_KEY or
var/secret_store_key). With OPSPORTAL_KEYVAULT_URL set, each publish is also a new version of one
Key Vault secret per endpoint (`azure-keyvault-secrets`), which consumers read; the database
keeps the encrypted copy the console itself needs (reveal, verification) and the version ids.
"""

import re
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Max

from opsportal.core.crypto import decrypt, digest, encrypt
from opsportal.inventory.models import Endpoint
from opsportal.keys.models import SecretVersion
from opsportal.providers import keyvault
from opsportal.providers.base import ProviderError


def fingerprint(value: str) -> str:
    return digest(value)[:12]


def keyvault_secret_name(endpoint: Endpoint) -> str:
    # Key Vault names: 1-127 letters, digits and hyphens.
    raw = f"opsportal-{endpoint.workspace.name}-{endpoint.name}"
    return re.sub(r"[^A-Za-z0-9-]", "-", raw)[:127]


def secret_publish(
    *, endpoint: Endpoint, slot: str, value: str, job: Any = None, **client_kwargs: Any
) -> SecretVersion:
    """A new version of the endpoint's key: in Key Vault when configured, always in the DB."""
    store, store_version = "db", ""
    if keyvault.configured():
        store = "keyvault"
        store_version = keyvault.secret_set(
            keyvault_secret_name(endpoint),
            value,
            tags={"slot": slot, "endpoint": endpoint.name},
            **client_kwargs,
        )
    for _ in range(3):  # two publishers at once: the loser takes the next number
        try:
            with transaction.atomic():
                latest = endpoint.secret_versions.aggregate(v=Max("version"))["v"] or 0
                return SecretVersion.objects.create(
                    endpoint=endpoint,
                    slot=slot,
                    version=latest + 1,
                    encrypted=encrypt(value),
                    fingerprint=fingerprint(value),
                    store=store,
                    store_version=store_version,
                    job=job,
                )
        except IntegrityError:
            continue
    raise ProviderError("Could not publish the key: the store is busy; retry.", retryable=True)


def secret_current(*, endpoint: Endpoint) -> SecretVersion | None:
    """The key consumers should use now: the newest published version."""
    return endpoint.secret_versions.order_by("-version").first()


def secret_latest_by_slot(*, endpoint: Endpoint) -> dict[str, SecretVersion]:
    latest: dict[str, SecretVersion] = {}
    for version in endpoint.secret_versions.order_by("-version"):
        latest.setdefault(version.slot, version)
    return latest


def secret_value(version: SecretVersion) -> str:
    return decrypt(version.encrypted)


def secrets_forget(*, endpoint: Endpoint, **client_kwargs: Any) -> int:
    """An endpoint is gone: its keys go from the store too."""
    if keyvault.configured() and endpoint.secret_versions.filter(store="keyvault").exists():
        keyvault.secret_delete(keyvault_secret_name(endpoint), **client_kwargs)
    deleted, _ = endpoint.secret_versions.all().delete()
    return deleted
