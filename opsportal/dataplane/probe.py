"""One short, real chat call to an endpoint: the deploy job's smoke test and rotation's check
that a new key works. The key goes into the request header and nowhere else."""

import time
from dataclasses import dataclass

import requests
from django.conf import settings

from opsportal.dataplane.scoring import endpoint_url, is_score, score_body, score_text
from opsportal.providers import azure_cloud
from opsportal.providers.base import ErrorCode, ProviderError

CHAT_ROUTE = "/v1/chat/completions"
PROBE_BODY = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8}


@dataclass(frozen=True)
class ProbeResult:
    status: int
    ms: float
    text: str


def probe_url(scoring_uri: str, routes: list[str] | None = None) -> str:
    routes = routes or [CHAT_ROUTE]
    return endpoint_url(scoring_uri, CHAT_ROUTE if CHAT_ROUTE in routes else routes[0])


def endpoint_probe(*, scoring_uri: str, key: str, routes: list[str] | None = None) -> ProbeResult:
    """Raises ProviderError in plain words; retryable when waiting can help. A managed online
    endpoint is called in its /score contract (opsportal.dataplane.scoring)."""
    url = probe_url(scoring_uri, routes)
    score = is_score(scoring_uri)
    body = score_body(PROBE_BODY) if score else PROBE_BODY
    started = time.monotonic()
    try:
        response = requests.post(
            url,
            json=body,
            headers={"Authorization": f"Bearer {key}"},
            timeout=settings.OPSPORTAL_PROBE_TIMEOUT,
            verify=azure_cloud.ca_verify(),
        )
    except requests.RequestException as exc:
        raise ProviderError(
            f"The endpoint at {url} did not answer ({type(exc).__name__}).",
            retryable=True,
            code=ErrorCode.CONNECTION_ERROR,
        ) from None
    ms = (time.monotonic() - started) * 1000
    if response.status_code == 200:
        try:
            if score:
                text = score_text(response.json())
            else:
                choice = response.json()["choices"][0]
                text = (choice.get("message") or {}).get("content") or choice.get("text") or ""
        except (ValueError, KeyError, IndexError, TypeError):
            shape = "/score" if score else "chat completions"
            raise ProviderError(
                f"The endpoint answered 200 but not in the {shape} shape ({url}).",
                code=ErrorCode.BAD_RESPONSE,
            ) from None
        return ProbeResult(200, ms, text.strip()[:80])
    try:
        detail = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        detail = response.text[:200].strip()
    if response.status_code in (401, 403):
        raise ProviderError(
            f"The endpoint refused the key ({response.status_code}).",
            retryable=True,  # a regenerated key can take a moment to reach every replica
            code=ErrorCode.UNAUTHORIZED,
        )
    if response.status_code == 429 or response.status_code >= 500:
        retry_after = response.headers.get("Retry-After")
        raise ProviderError(
            f"The endpoint answered {response.status_code}: {detail}",
            retryable=True,
            retry_after=float(retry_after) if retry_after and retry_after.isdigit() else None,
            code=ErrorCode.THROTTLED if response.status_code == 429 else ErrorCode.SERVER_ERROR,
        )
    raise ProviderError(
        f"The endpoint answered {response.status_code}: {detail}", code=ErrorCode.BAD_REQUEST
    )
