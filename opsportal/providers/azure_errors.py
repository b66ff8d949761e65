"""Azure SDK exceptions in the console's words: a ProviderError with an ErrorCode, the service's
own code, whether trying again can help, and what role an action needs when Azure refuses it."""

from typing import Any

from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    IncompleteReadError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)

from opsportal.providers.base import ErrorCode, ProviderError

# What each kind of action needs, (docs/azure.md, "Roles").
NEEDS = {
    "subscribe": (
        "Subscribing to a Marketplace offer needs Owner or Contributor on the Azure subscription, "
        "or a custom role with Microsoft.MarketplaceOrdering/agreements/offers/plans/read and "
        ".../plans/sign/action, Microsoft.MarketplaceOrdering/offerTypes/publishers/offers/plans/"
        "agreements/read, Microsoft.Marketplace/offerTypes/publishers/offers/plans/agreements/read "
        "and Microsoft.SaaS/register/action; Microsoft.SaaS/resources/read|write on the resource "
        "group; and Microsoft.MachineLearningServices/workspaces/"
        "marketplaceModelSubscriptions/* on the workspace."
    ),
    "endpoints": (
        "Managing endpoints needs Microsoft.MachineLearningServices/workspaces/"
        "serverlessEndpoints/* (or onlineEndpoints/*) on the workspace: the AzureML Data "
        "Scientist role, or Azure AI Developer on the resource group."
    ),
    "read": "Reading needs at least the Reader role on the subscription or workspace.",
}
QUOTA_CODES = {"QuotaExceeded", "InsufficientQuota", "OutOfQuota", "QuotaLimitExceeded"}


def translate(exc: Exception, *, action: str = "read", what: str = "") -> ProviderError:
    """An SDK exception in plain words, and whether trying again can help."""
    subject = f" ({what})" if what else ""
    service_code = getattr(getattr(exc, "error", None), "code", None) or ""
    if isinstance(exc, ClientAuthenticationError) and getattr(exc, "status_code", None) != 403:
        return ProviderError(
            f"Azure did not accept the credential{subject}: {_first_line(exc)}. Check the AZURE_* "
            "variables or sign in again.",
            code=ErrorCode.UNAUTHORIZED,
        )
    if isinstance(exc, ResourceNotFoundError):
        return ProviderError(
            f"Not found in Azure{subject}: it was deleted or never existed.",
            code=ErrorCode.NOT_FOUND,
            service_code=service_code,
        )
    if isinstance(exc, ResourceExistsError):
        return ProviderError(
            f"Azure reports a conflict{subject}: {_first_line(exc)}",
            code=ErrorCode.CONFLICT,
            service_code=service_code,
        )
    if isinstance(exc, ServiceRequestError | ServiceResponseError | IncompleteReadError):
        # IncompleteReadError: the connection broke in the middle of Azure's answer.
        return ProviderError(
            f"Could not reach Azure{subject}: {_first_line(exc)}. Will retry.",
            retryable=True,
            code=ErrorCode.CONNECTION_ERROR,
        )
    if isinstance(exc, HttpResponseError):
        return _translate_status(exc, exc.status_code or 0, service_code, action, subject)
    return ProviderError(
        f"Unexpected error from the Azure SDK{subject}: {type(exc).__name__}",
        code=ErrorCode.UNEXPECTED,
    )


def _translate_status(
    exc: HttpResponseError, status: int, service_code: str, action: str, subject: str
) -> ProviderError:
    said = _first_line(exc)
    if service_code == "ServerlessModelNotAvailableInRegion":
        return ProviderError(
            f"This model is not offered as a serverless API in the workspace's region"
            f"{subject}. Use a workspace in a region the catalog lists for it.",
            code=ErrorCode.NOT_IN_REGION,
            service_code=service_code,
        )
    if service_code in QUOTA_CODES or "quota" in said.lower():
        return ProviderError(
            f"Not enough VM core quota{subject}: {said}. Free cores in this region and VM family, "
            "or request a quota increase.",
            code=ErrorCode.QUOTA_EXCEEDED,
            service_code=service_code,
        )
    if status in (401, 403):
        return ProviderError(
            f"Azure refused the action ({status}){subject}. {NEEDS[action]}",
            code=ErrorCode.FORBIDDEN,
            service_code=service_code,
        )
    if status == 404:
        return ProviderError(
            f"Not found in Azure{subject}.", code=ErrorCode.NOT_FOUND, service_code=service_code
        )
    if status == 409:
        return ProviderError(
            f"Azure reports a conflict{subject}: {said}",
            code=ErrorCode.CONFLICT,
            service_code=service_code,
        )
    if status == 429:
        wait = retry_after(exc)
        wait = 30.0 if wait is None else wait
        return ProviderError(
            f"Azure is throttling requests{subject}; wait {wait:g} s.",
            retryable=True,
            retry_after=wait,
            code=ErrorCode.THROTTLED,
        )
    if status >= 500:
        return ProviderError(
            f"Azure failed ({status}){subject}: {said}. Will retry.",
            retryable=True,
            code=ErrorCode.SERVER_ERROR,
            service_code=service_code,
        )
    return ProviderError(
        f"Azure refused the request ({status}){subject}: {said}",
        code=ErrorCode.BAD_REQUEST,
        service_code=service_code,
    )


def _first_line(exc: Exception) -> str:
    text = getattr(exc, "message", None) or str(exc)
    return text.strip().splitlines()[0][:300] if text else type(exc).__name__


def retry_after(
    exc: HttpResponseError, names: tuple[str, ...] = ("retry-after", "x-ms-retry-after-ms")
) -> float | None:
    """The wait a throttled answer asked for, in seconds: the first of `names` (case does not
    matter; a name ending in -ms is in milliseconds), or None when it asked for none."""
    headers = getattr(exc.response, "headers", {}) or {}
    lowered = {k.lower(): v for k, v in headers.items()}
    for name in names:
        if name in lowered:
            try:
                value = float(lowered[name])
            except ValueError:
                continue
            return value / 1000 if name.endswith("-ms") else value
    return None


def raise_for_status(response: Any) -> Any:
    """An HTTP response the SDK's own pipeline returned, as the SDK's exception when it failed."""
    if response.status_code >= 400:
        raise HttpResponseError(response=response)
    return response
