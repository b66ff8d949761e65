"""Azure's published REST examples (../shared/azure-fixtures) served to the SDK's real HTTP
pipeline with `responses`. Nothing reaches the network: an unmatched URL fails the request.

Adaptations, each visible at its call site through `adapt=` (NOTES.md §7.4 says why):
  * list examples carry a placeholder nextLink, which the pager would follow: dropped, except in
    the paging test, which serves a real second page;
  * examples use "string" for ids; the SDK parses online deployment ids: a real ARM id is set.
"""

import copy
import json
import re
from pathlib import Path
from typing import Any

import responses
from azure.core.credentials import AccessToken, AccessTokenInfo

FIXTURES = Path(__file__).resolve().parent.parent.parent / "shared" / "azure-fixtures"
if not FIXTURES.is_dir():  # a checkout with shared/ inside it
    FIXTURES = Path(__file__).resolve().parent.parent / "shared" / "azure-fixtures"

ARM = "https://management.azure.com"
SUB = "00000000-1111-2222-3333-444444444444"
RG = "test-rg"
WS = "my-aml-workspace"
W = (
    f"{ARM}/subscriptions/{SUB}/resourceGroups/{RG}"
    f"/providers/Microsoft.MachineLearningServices/workspaces/{WS}"
)
LOC = f"{ARM}/subscriptions/{SUB}/providers/Microsoft.MachineLearningServices/locations/eastus2"


class FakeCredential:
    """Any object with get_token will do for azure-core; it never leaves this process."""

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("fake-token", 9_999_999_999)

    def get_token_info(self, *scopes: str, **kwargs: Any) -> AccessTokenInfo:
        return AccessTokenInfo("fake-token", 9_999_999_999)


def example(path: str, code: str = "200") -> dict[str, Any]:
    """The response body of a published example, as published."""
    data = json.loads((FIXTURES / path).read_text())
    return copy.deepcopy(data["responses"][code].get("body") or {})


def example_request(path: str) -> dict[str, Any]:
    return json.loads((FIXTURES / path).read_text())["parameters"]


def without_next_link(body: dict[str, Any]) -> dict[str, Any]:
    body.pop("nextLink", None)
    return body


def url(path: str) -> re.Pattern[str]:
    """Match a path whatever its query (api-versions are asserted separately)."""
    return re.compile(re.escape(path) + r"(\?.*)?$")


def api_version(call: Any) -> str:
    match = re.search(r"api-version=([^&]+)", call.request.url)
    return match.group(1) if match else ""


def body_of(call: Any) -> Any:
    return json.loads(call.request.body) if call.request.body else None


def calls_to(rs: responses.RequestsMock, method: str, path_fragment: str) -> list[Any]:
    return [c for c in rs.calls if c.request.method == method and path_fragment in c.request.url]
