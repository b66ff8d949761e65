"""Which Azure cloud the console talks to, and how its SDK clients and HTTP clients reach it.

Public Azure by default. Any other cloud (a sovereign cloud, Azure Stack Hub, an emulator) is
chosen with settings, read from the environment in opsportal/settings.py:

  AZURE_RESOURCE_MANAGER_URL  ARM's base URL (default https://management.azure.com). For any
                              other URL the console reads `{ARM}/metadata/endpoints` once per
                              process, as `az cloud register --endpoint-resource-manager` does,
                              to learn the cloud's name, login endpoint, token audience, portal
                              and storage suffix.
  AZURE_AUTHORITY_HOST        the standard azure-identity variable: where tokens come from.
                              Defaults to the cloud's login endpoint. A host that is not one of
                              Microsoft's authorities is used with instance discovery off.
  OPSPORTAL_CA_BUNDLE         a PEM file of extra certificate authorities to trust for outbound
                              TLS (a private cloud's CA, a corporate TLS proxy), in addition to
                              the usual ones: Azure SDK clients, MSAL, the smoke-test probe and
                              the test-chat relay all use it.
  REGISTRY_DISCOVERY_ENDPOINT_URL  azure-ai-ml's own variable for a custom cloud's registry
                              discovery; otherwise derived from the portal the way azure-ai-ml
                              derives it.

The rest of the code calls the small functions below and never reads these settings itself.
"""

import functools
import os
import shutil
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import certifi
import requests
from azure.identity import DefaultAzureCredential
from django.conf import settings

PUBLIC_ARM = "https://management.azure.com"
PUBLIC_LOGIN = "https://login.microsoftonline.com"
PUBLIC_CLOUD_NAME = "AzureCloud"
METADATA_API_VERSION = "2022-09-01"
# Microsoft's authority hosts (azure.identity.AzureAuthorityHosts): instance discovery works.
MICROSOFT_AUTHORITIES = {
    "login.microsoftonline.com",
    "login.chinacloudapi.cn",
    "login.microsoftonline.us",
    "login.windows.net",
    "login.microsoft.com",
}


class CloudError(Exception):
    """The configured cloud could not be described (its metadata is unreachable or incomplete)."""


@dataclass(frozen=True)
class Cloud:
    name: str
    resource_manager: str  # without a trailing slash
    login_endpoint: str  # without a trailing slash
    audience: str  # ARM's token audience
    portal: str
    storage_suffix: str
    public: bool


PUBLIC = Cloud(
    name=PUBLIC_CLOUD_NAME,
    resource_manager=PUBLIC_ARM,
    login_endpoint=PUBLIC_LOGIN,
    audience=PUBLIC_ARM,
    portal="https://portal.azure.com",
    storage_suffix="core.windows.net",
    public=True,
)


def resource_manager_url() -> str:
    """AZURE_RESOURCE_MANAGER_URL without a trailing slash (public ARM when unset)."""
    return (getattr(settings, "AZURE_RESOURCE_MANAGER_URL", "") or PUBLIC_ARM).rstrip("/")


def cloud() -> Cloud:
    """The cloud the console talks to: public Azure, or what the configured ARM says it is."""
    arm = resource_manager_url()
    if arm == PUBLIC_ARM:
        return PUBLIC
    return _cloud_from_metadata(arm, ca_bundle() or "")


@functools.lru_cache(maxsize=8)
def _cloud_from_metadata(arm: str, bundle: str) -> Cloud:
    url = f"{arm}/metadata/endpoints?api-version={METADATA_API_VERSION}"
    try:
        response = requests.get(url, timeout=30, verify=_verify_for(bundle))
        response.raise_for_status()
        data = response.json()
    except (requests.RequestException, ValueError) as exc:
        raise CloudError(f"Could not read the cloud metadata at {url}: {exc}") from exc
    # Older api-versions answer a list of every cloud the ARM knows: take the one it serves.
    if isinstance(data, list):
        data = next(
            (c for c in data if str(c.get("resourceManager", "")).rstrip("/") == arm),
            data[0] if data else {},
        )
    try:
        auth = data["authentication"]
        audiences = auth.get("audiences") or [data["resourceManager"]]
        return Cloud(
            name=data["name"],
            resource_manager=data["resourceManager"].rstrip("/"),
            login_endpoint=auth["loginEndpoint"].rstrip("/"),
            audience=audiences[0].rstrip("/"),
            portal=data.get("portal", "").rstrip("/"),
            storage_suffix=(data.get("suffixes") or {}).get("storage", ""),
            public=False,
        )
    except (KeyError, TypeError, IndexError) as exc:
        raise CloudError(f"The cloud metadata at {url} lacks {exc}.") from exc


# --- TLS ------------------------------------------------------------------------------------


def ca_bundle() -> str | None:
    """OPSPORTAL_CA_BUNDLE, or None when unset."""
    return getattr(settings, "OPSPORTAL_CA_BUNDLE", "") or None


def _verify_for(bundle: str) -> bool | str:
    return _combined_bundle(bundle) if bundle else True


def _default_bundle() -> str:
    return (
        os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE") or certifi.where()
    )


@functools.lru_cache(maxsize=8)
def _combined_bundle(extra: str) -> str:
    """The default trust store plus the extra CAs, as one file (VAR_DIR/ca-bundle.pem):
    `requests` and azure-core take a single CA file, which replaces the default store rather
    than adding to it. Replaced atomically, and only when it changes: web, workers and runtime
    may all start at once."""
    text = Path(_default_bundle()).read_text() + "\n" + Path(extra).read_text()
    path = Path(settings.VAR_DIR) / "ca-bundle.pem"
    if not path.is_file() or path.read_text() != text:
        fd, tmp = tempfile.mkstemp(dir=settings.VAR_DIR, prefix=".ca-bundle-")
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    return str(path)


def ca_verify() -> bool | str:
    """The `verify` argument for requests (and azure-core's `connection_verify`)."""
    bundle = ca_bundle()
    return _combined_bundle(bundle) if bundle else True


def ssl_context() -> ssl.SSLContext | bool:
    """The `verify` argument for httpx: the default trust plus OPSPORTAL_CA_BUNDLE."""
    bundle = ca_bundle()
    if not bundle:
        return True
    context = ssl.create_default_context()
    context.load_verify_locations(cafile=bundle)
    return context


def _tls_kwargs() -> dict[str, Any]:
    bundle = ca_bundle()
    return {"connection_verify": _combined_bundle(bundle)} if bundle else {}


# --- credentials and SDK clients --------------------------------------------------------------

# Extra keyword arguments for every Azure client the providers build (the contract tests set
# retry_total=0 and polling_interval=0 here, so the jobs' own retry is what they exercise).
CLIENT_DEFAULTS: dict[str, Any] = {}


def configured() -> tuple[bool, str]:
    """Whether any credential source is set up (without asking Azure), and which."""
    if os.environ.get("AZURE_CLIENT_ID") and os.environ.get("AZURE_TENANT_ID"):
        return True, "service principal or workload identity from AZURE_* variables"
    if os.environ.get("IDENTITY_ENDPOINT") or os.environ.get("MSI_ENDPOINT"):
        return True, "managed identity"
    if shutil.which("az") and os.path.isdir(os.path.expanduser("~/.azure")):
        return True, "Azure CLI login (az login)"
    return False, (
        "Azure is not configured: set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET "
        "(or a certificate), run on a managed identity, or sign in with `az login`."
    )


def authority_host() -> str:
    """AZURE_AUTHORITY_HOST, else the cloud's login endpoint."""
    configured = getattr(settings, "AZURE_AUTHORITY_HOST", "") or ""
    return (configured or cloud().login_endpoint).rstrip("/")


def credential_kwargs() -> dict[str, Any]:
    """Keyword arguments for any azure-identity credential: authority, instance discovery off for
    an authority Microsoft does not run, and the CA bundle for MSAL's HTTP."""
    authority = authority_host()
    host = urlsplit(authority if "://" in authority else f"https://{authority}").hostname or ""
    kwargs: dict[str, Any] = {"authority": authority, **_tls_kwargs()}
    if host.lower() not in MICROSOFT_AUTHORITIES:
        kwargs["disable_instance_discovery"] = True
    return kwargs


def credential() -> Any:
    """The console's credential: DefaultAzureCredential (service principal from AZURE_* variables,
    workload or managed identity, Azure CLI login) for the configured cloud."""
    return DefaultAzureCredential(
        exclude_interactive_browser_credential=True, **credential_kwargs()
    )


def arm_scope() -> str:
    return f"{cloud().audience}/.default"


def mgmt_client_kwargs() -> dict[str, Any]:
    """For azure-mgmt-* clients (Cost Management, subscriptions): ARM's URL and token scope."""
    current = cloud()
    if current.public:
        return _tls_kwargs()
    return {
        "base_url": current.resource_manager,
        "credential_scopes": [arm_scope()],
        **_tls_kwargs(),
    }


def ml_client_kwargs() -> dict[str, Any]:
    """For azure-ai-ml's MLClient. The cloud is always named: MLClient remembers the last cloud
    it saw in os.environ (AZUREML_CURRENT_CLOUD) for the whole process otherwise."""
    current = cloud()
    if current.public:
        return {"cloud": PUBLIC_CLOUD_NAME, **_tls_kwargs()}
    suffix = ".".join(current.portal.split(".")[2:]).replace("/", "")
    discovery = os.environ.get("REGISTRY_DISCOVERY_ENDPOINT_URL") or (
        f"https://{current.name.lower()}west.api.ml.azure.{suffix}/"
    )
    return {
        "cloud": current.name,
        "cloud_metadata": {
            "azure_portal": f"{current.portal}/",
            "resource_manager": f"{current.resource_manager}/",
            "active_directory": f"{current.login_endpoint}/",
            "aml_resource_id": f"https://ml.azure.{suffix}/",
            "storage_endpoint": current.storage_suffix,
            "registry_discovery_endpoint": discovery,
        },
        **_tls_kwargs(),
    }


def keyvault_client_kwargs() -> dict[str, Any]:
    """For azure-keyvault clients (the vault URL itself names the vault and its cloud)."""
    return _tls_kwargs()
