"""The emulator as one ASGI application: every request is recorded, may meet an injected fault,
is authenticated as the service it addresses would (Entra token, Key Vault challenge, endpoint
key), is throttled by ARM's buckets, and gets ARM's request and correlation ids back. A path no
route models answers 501 naming the operation."""

import asyncio
import json
import logging
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from opsportal.emulator import arm, control, costs, dataplane, keyvault
from opsportal.emulator.clock import Clock
from opsportal.emulator.faults import bucket_take, fault_pick, fault_response
from opsportal.emulator.identity import Identity, aad_error, keyvault_resource
from opsportal.emulator.routing import (
    AUTH_ARM,
    AUTH_NONE,
    AUTH_VAULT,
    Call,
    Route,
    Router,
    error_response,
    iso,
    retry_after,
)
from opsportal.emulator.state import ArmError, State

log = logging.getLogger(__name__)
identity_routes = Router()
MASKED = {"authorization", "cookie", "api-key"}


@identity_routes.add(
    "GET",
    "/{tenant}/v2.0/.well-known/openid-configuration",
    "Entra.OpenIdConfiguration",
    auth=AUTH_NONE,
)
@identity_routes.add(
    "GET", "/{tenant}/.well-known/openid-configuration", "Entra.OpenIdConfiguration", auth=AUTH_NONE
)
def openid_configuration(emu: "Emulator", call: Call) -> Response:
    tenant = call.params["tenant"]
    if not emu.identity.tenant_known(tenant):
        return JSONResponse(
            aad_error("invalid_tenant", 90002, f"Tenant '{tenant}' not found."), status_code=400
        )
    return JSONResponse(emu.identity.openid_configuration())


@identity_routes.add("GET", "/{tenant}/discovery/v2.0/keys", "Entra.Keys", auth=AUTH_NONE)
def signing_keys(emu: "Emulator", call: Call) -> Response:
    return JSONResponse(emu.identity.jwks())


@identity_routes.add("POST", "/{tenant}/oauth2/v2.0/token", "Entra.Token", auth=AUTH_NONE)
def token(emu: "Emulator", call: Call) -> Response:
    status, body = emu.identity.token_request(
        call.params["tenant"], call.body, call.headers.get("authorization", "")
    )
    return JSONResponse(body, status_code=status, headers={"Cache-Control": "no-store"})


class Emulator:
    def __init__(
        self,
        world: dict[str, Any],
        *,
        base_url: str,
        vault_ports: dict[str, int] | None = None,
        speed: float = 1.0,
        start: Any = None,
    ) -> None:
        """`vault_ports`: the port each vault of the world answers on (same host as ARM)."""
        self.clock = Clock(speed=speed, start=start)
        host = urlsplit(base_url).hostname
        self.vault_by_port = {port: name.lower() for name, port in (vault_ports or {}).items()}
        self.state = State(
            world,
            clock=self.clock,
            base_url=base_url,
            vault_urls={
                name: f"https://{host}:{port}" for name, port in (vault_ports or {}).items()
            },
        )
        self.identity = Identity(self.state)
        self.routes: list[Route] = [
            *control.router.routes,
            *identity_routes.routes,
            *arm.router.routes,
            *costs.router.routes,
            *keyvault.router.routes,
            *dataplane.router.routes,
        ]

    @property
    def cloud_name(self) -> str:
        # MLClient keeps clouds by name for the life of the process: one name per address.
        return f"AzureEmulator{urlsplit(self.state.base_url).port or 443}"

    def cloud_metadata(self) -> dict[str, Any]:
        base = self.state.base_url
        return {
            "name": self.cloud_name,
            "portal": f"{base}/portal",
            "resourceManager": f"{base}/",
            "authentication": {
                "loginEndpoint": f"{base}/",
                "audiences": [f"{base}/"],
                "tenant": "common",
                "identityProvider": "AAD",
            },
            "media": f"{base}/media",
            "graphAudience": f"{base}/graph",
            "graph": f"{base}/graph",
            "suffixes": {
                "storage": "emulator.invalid",
                "keyVaultDns": "emulator.invalid",
                "acrLoginServer": "emulator.invalid",
                "sqlServerHostname": "emulator.invalid",
                "azureDataLakeStoreFileSystem": "emulator.invalid",
                "azureDataLakeAnalyticsCatalogAndJob": "emulator.invalid",
            },
            "batch": f"{base}/batch",
            "sqlManagement": f"{base}/sql",
            "vmImageAliasDoc": f"{base}/vmimages",
            "activeDirectoryDataLake": f"{base}/datalake",
            "microsoftGraphResourceId": f"{base}/graph",
            "appInsightsResourceId": f"{base}/appinsights",
            "logAnalyticsResourceId": f"{base}/loganalytics",
        }

    # --- ASGI ---------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        body = await request.body()
        path = scope["path"]
        vault = self.vault_by_port.get((scope.get("server") or ("", 0))[1])
        if vault is not None:
            path = f"/keyvault/{vault}{path}"
        call = Call(
            extra={"vault": vault is not None},
            method=request.method,
            path=path,
            params={},
            query=dict(request.query_params),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
        )
        response = await self.dispatch(call)
        await response(scope, receive, send)

    async def dispatch(self, call: Call) -> Response:
        state = self.state
        found = self.route(call)
        operation = found[0].operation if found else f"{call.method} {call.path}"
        request_id = str(uuid.uuid4())
        correlation = call.headers.get("x-ms-correlation-request-id") or str(uuid.uuid4())
        entry = {
            "at": iso(self.clock.now()),
            "real_time": time.time(),
            "method": call.method,
            "path": call.path,
            "query": call.query,
            "api_version": call.api_version,
            "operation": operation,
            "headers": {k: ("***" if k in MASKED else v) for k, v in call.headers.items()},
            "client_request_id": call.headers.get("x-ms-client-request-id"),
            "correlation_request_id": correlation,
            "request_id": request_id,
            "body": self._recorded_body(call, found[0] if found else None),
            "status": None,
            "fault": None,
        }
        if not call.path.startswith(control.C + "/"):
            with state.lock:
                state.requests.append(entry)
        extra = {"x-ms-request-id": request_id, "x-ms-correlation-request-id": correlation}
        response = await self._respond(call, found, entry, extra)
        if not call.path.startswith(control.C + "/"):
            for name, value in extra.items():
                response.headers.setdefault(name, value)
        entry["status"] = response.status_code
        return response

    def route(self, call: Call) -> tuple[Route, dict[str, str]] | None:
        on_vault = bool(call.extra.get("vault"))
        for route in self.routes:
            # A vault's port serves the vault and nothing else; vaults answer only there.
            if route.method != call.method or (route.auth == AUTH_VAULT) != on_vault:
                continue
            matched = route.pattern.match(call.path)
            if matched:
                return route, matched.groupdict()
        return None

    async def _respond(
        self,
        call: Call,
        found: tuple[Route, dict[str, str]] | None,
        entry: dict,
        extra: dict[str, str],
    ) -> Response:
        state = self.state
        if found is None:
            return JSONResponse(
                {
                    "error": {
                        "code": "NotImplemented",
                        "message": f"The Azure emulator does not model {call.method} {call.path}.",
                    }
                },
                status_code=501,
            )
        route, call.params = found
        controlled = call.path.startswith(control.C + "/")
        with state.lock:
            fault = None if controlled else fault_pick(state, call.method, call.path, "before")
        if fault is not None:
            entry["fault"] = fault["id"]
            return fault_response(fault)
        try:
            refused = self.authenticate(route, call)
            if refused is not None:
                return refused
            throttled = self.throttle(route, call, extra)
            if throttled is not None:
                return throttled
            if asyncio.iscoroutinefunction(route.handler):
                response = await route.handler(self, call)
            else:
                with state.lock:
                    state.settle()
                    response = route.handler(self, call)
        except ArmError as err:
            response = error_response(err)
        except Exception as exc:  # an emulator bug answers like a server failure, loudly
            log.exception("emulator failed on %s %s", call.method, call.path)
            response = JSONResponse(
                {
                    "error": {
                        "code": "InternalServerError",
                        "message": f"Emulator failure: {type(exc).__name__}: {exc}",
                    }
                },
                status_code=500,
            )
        with state.lock:
            fault = None if controlled else fault_pick(state, call.method, call.path, "after")
        if fault is not None:
            entry["fault"] = fault["id"]
            return fault_response(fault)
        return response

    def authenticate(self, route: Route, call: Call) -> Response | None:
        if route.auth not in (AUTH_ARM, AUTH_VAULT):
            return None
        header = call.headers.get("authorization", "")
        if route.auth == AUTH_ARM:
            check = self.identity.check(header, self.identity.arm_audiences())
            if check.ok:
                call.claims = check.claims
                return None
            tenant = self.identity.tenant_id()
            return JSONResponse(
                {"error": {"code": check.code, "message": check.message}},
                status_code=401,
                headers={
                    "WWW-Authenticate": (
                        f'Bearer authorization_uri="{self.state.base_url}/{tenant}", '
                        f'error="invalid_token", error_description="{check.message}"'
                    )
                },
            )
        vault_url = self.state.vault_urls.get(call.params.get("vault", "").lower(), "")
        resource = keyvault_resource(vault_url) or vault_url
        check = self.identity.check(header, {resource, f"{resource}/"})
        if check.ok:
            call.claims = check.claims
            return None
        message = {
            "AuthenticationFailed": "AKV10000: Request is missing a Bearer or PoP token.",
            "InvalidAuthenticationTokenAudience": "AKV10022: Invalid audience.",
            "ExpiredAuthenticationToken": "AKV10032: The token is expired.",
        }.get(check.code, "AKV10032: Invalid token.")
        return JSONResponse(
            {"error": {"code": "Unauthorized", "message": message}},
            status_code=401,
            headers={
                "WWW-Authenticate": (
                    f'Bearer authorization="{self.state.base_url}/{self.identity.tenant_id()}", '
                    f'resource="{resource}"'
                )
            },
        )

    def throttle(self, route: Route, call: Call, extra: dict[str, str]) -> Response | None:
        if not route.throttle:
            return None
        kind = route.throttle
        principal = (call.claims or {}).get("oid", "anonymous")
        scope = call.params.get("sub", "").lower() if not kind.startswith("tenant-") else "tenant"
        with self.state.lock:
            wait, remaining = bucket_take(self.state, (scope or "tenant", principal, kind), kind)
        level = "tenant" if scope in ("", "tenant") else "subscription"
        header = f"x-ms-ratelimit-remaining-{level}-{kind.removeprefix('tenant-')}"
        extra[header] = str(remaining)
        if wait is None:
            return None
        verb = kind.removeprefix("tenant-").rstrip("s")
        who = f"subscription '{scope}'" if level == "subscription" else "the tenant"
        return JSONResponse(
            {
                "error": {
                    "code": "SubscriptionRequestsThrottled"
                    if level == "subscription"
                    else "TenantRequestsThrottled",
                    "message": (
                        f"Number of '{verb}' requests for {who} actor '{principal}' exceeded. "
                        f"Please try again after '{retry_after(wait)}' seconds after additional "
                        "tokens are available. Refer to https://aka.ms/arm-throttling"
                    ),
                }
            },
            status_code=429,
            headers={"Retry-After": retry_after(wait)},
        )

    @staticmethod
    def _recorded_body(call: Call, route: Route | None) -> Any:
        """ARM request bodies, for inspection (keys masked); never tokens' or vaults' bodies."""
        if route is None or route.auth != AUTH_ARM or not call.body or len(call.body) > 20_000:
            return None
        try:
            body = json.loads(call.body)
        except ValueError:
            return None
        if isinstance(body, dict) and "keyValue" in body:
            body = {**body, "keyValue": "***"}
        return body
