"""Routes of the emulator (method + path pattern, case-insensitive as ARM is) and what a handler
receives. A path no route matches is answered 501 by the app, never a silent 200."""

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from starlette.responses import JSONResponse, Response

from opsportal.emulator.state import ArmError

# Who checks the caller: ARM and Cost Management take an Entra token for the ARM audience, Key
# Vault one for its own resource (with the 401 challenge), data planes an endpoint key.
AUTH_NONE, AUTH_ARM, AUTH_VAULT, AUTH_KEY = "none", "arm", "keyvault", "key"


@dataclass
class Call:
    method: str
    path: str
    params: dict[str, str]
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes
    claims: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def json(self) -> Any:
        if not self.body:
            return {}
        try:
            return json.loads(self.body)
        except ValueError:
            raise ArmError(
                400, "InvalidRequestContent", "The request content is not valid JSON."
            ) from None

    @property
    def api_version(self) -> str:
        return self.query.get("api-version", "")


@dataclass
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Callable[..., Any]
    operation: str
    auth: str = AUTH_ARM
    # ARM's throttling buckets: read (GET), write (PUT/PATCH/POST), delete; "" for none.
    throttle: str = ""


class Router:
    def __init__(self) -> None:
        self.routes: list[Route] = []

    def add(
        self,
        method: str,
        path: str,
        operation: str,
        *,
        auth: str = AUTH_ARM,
        throttle: str | None = None,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register a handler. `path` uses {name} for one segment and {name:path} for several."""
        pieces = []
        for literal, name, kind in re.findall(r"([^{]*)(?:\{(\w+)(:path)?\})?", path):
            pieces.append(re.escape(literal))
            if name:
                pieces.append(f"(?P<{name}>.+?)" if kind else f"(?P<{name}>[^/]+)")
        pattern = re.compile(f"^{''.join(pieces)}/?$", re.IGNORECASE)
        if throttle is None:
            throttle = (
                {"GET": "reads", "DELETE": "deletes"}.get(method, "writes")
                if auth == AUTH_ARM
                else ""
            )

        def register(handler: Callable[..., Any]) -> Callable[..., Any]:
            self.routes.append(Route(method, pattern, handler, operation, auth, throttle))
            return handler

        return register

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        for route in self.routes:
            if route.method != method:
                continue
            found = route.pattern.match(path)
            if found:
                return route, found.groupdict()
        return None


def arm_json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(body, status_code=status, headers=headers)


def error_response(error: ArmError) -> Response:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def retry_after(real_seconds: float) -> str:
    """Retry-After in whole seconds, at least 1: azure-core reads 0 as "no hint" and falls back
    to its own polling interval (30 s for some operations)."""
    return str(max(1, math.ceil(min(60.0, real_seconds))))
