"""Azure Key Vault as the store consumers read endpoint keys from (OPSPORTAL_KEYVAULT_URL): one
secret per endpoint, a new version per published key. Errors arrive as ProviderError."""

from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from azure.keyvault.secrets import SecretClient
from django.conf import settings

from opsportal.providers import azure_cloud
from opsportal.providers.azure_errors import translate


def configured() -> bool:
    return bool(settings.OPSPORTAL_KEYVAULT_URL)


def client(**client_kwargs: Any) -> SecretClient:
    return SecretClient(
        settings.OPSPORTAL_KEYVAULT_URL,
        azure_cloud.credential(),
        **{**azure_cloud.keyvault_client_kwargs(), **client_kwargs},
    )


def secret_set(name: str, value: str, *, tags: dict[str, str], **client_kwargs: Any) -> str:
    """A new version of the secret; returns the version's id."""
    try:
        secret = client(**client_kwargs).set_secret(
            name, value, content_type="text/plain", tags=tags
        )
    except Exception as exc:
        raise translate(exc, action="read", what="publishing the key to Key Vault") from exc
    return secret.properties.version or ""


def secret_delete(name: str, **client_kwargs: Any) -> None:
    """Deletes the secret (soft delete, as the vault is set up); one already gone is fine."""
    try:
        client(**client_kwargs).begin_delete_secret(name)
    except ResourceNotFoundError:
        return
    except Exception as exc:
        raise translate(exc, action="read", what="deleting the key") from exc
