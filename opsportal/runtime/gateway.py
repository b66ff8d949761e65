"""The local endpoints' data plane: the same routes, rules and shapes as Azure serverless.

    POST {scoring_uri}/v1/chat/completions   and  {scoring_uri}/chat/completions
    POST {scoring_uri}/v1/completions        and  {scoring_uri}/completions   (llama family)
    GET  {scoring_uri}/swagger.json          the endpoint's OpenAPI document

Per request: find the endpoint, check the key (both slots valid; read from the database on every
request, so a regenerated key is refused at once), validate, admit under the rate limits,
hand to a replica (its engine batches requests first come, first served), stream. Usage is
metered off the token path.
"""

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async
from django.utils import timezone
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route as HttpRoute

from opsportal.core.crypto import digest, same_digest
from opsportal.inventory.models import Endpoint, ProvisioningState
from opsportal.runtime import api
from opsportal.runtime.completion import Generation
from opsportal.runtime.control import Runtime
from opsportal.runtime.decoding import GenParams
from opsportal.runtime.limits import RateWindow, retry_after_header
from opsportal.runtime.metering import Meter
from opsportal.runtime.openapi import openapi_document

log = logging.getLogger(__name__)


@dataclass
class EndpointView:
    """What one request needs from the database, read in one go."""

    id: int
    name: str
    state: str
    family: str
    model: str
    default_max_tokens: int
    default_ignore_eos: bool
    rpm: int
    tpm: int
    routes: list[str]
    key_slots: dict[str, str]  # slot -> digest


def _load_endpoint(name: str) -> EndpointView | None:
    ep = (
        Endpoint.objects.alive()
        .filter(name=name, workspace__provider="local")
        .select_related("offering")
        .prefetch_related("local_keys")
        .first()
    )
    if ep is None or ep.offering is None:
        return None
    o = ep.offering
    return EndpointView(
        id=ep.pk,
        name=ep.name,
        state=ep.provisioning_state,
        family=o.api_family,
        model=o.model_name,
        default_max_tokens=o.default_max_tokens,
        default_ignore_eos=o.default_ignore_eos,
        rpm=o.requests_per_minute,
        tpm=o.tokens_per_minute,
        routes=list(o.routes),
        key_slots={k.slot: k.digest for k in ep.local_keys.all()},
    )


load_endpoint = sync_to_async(_load_endpoint, thread_sensitive=False)


def error_response(err: api.ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


class ArrivalOrder:
    """Requests to one endpoint reach its replicas in the order they reached the gateway."""

    def __init__(self) -> None:
        self.pending: dict[str, list[asyncio.Future]] = {}

    def take(self, name: str) -> asyncio.Future:
        turn = asyncio.get_running_loop().create_future()
        self.pending.setdefault(name, []).append(turn)
        return turn

    async def wait(self, name: str, turn: asyncio.Future) -> None:
        queue = self.pending[name]
        earlier = queue[: queue.index(turn)]
        if earlier:
            await asyncio.wait(earlier)  # never cancels them, even if this request goes away

    def done(self, name: str, turn: asyncio.Future) -> None:
        if not turn.done():
            turn.set_result(None)
        queue = self.pending.get(name, [])
        if turn in queue:
            queue.remove(turn)
        if not queue:
            self.pending.pop(name, None)


class Gateway:
    def __init__(self, runtime: Runtime, meter: Meter) -> None:
        self.runtime = runtime
        self.meter = meter
        self.windows: dict[int, RateWindow] = {}
        self.arrivals = ArrivalOrder()
        routes = [HttpRoute("/healthz", self.healthz, methods=["GET"])]
        for path, mode in [
            ("/v1/chat/completions", "chat"),
            ("/chat/completions", "chat"),
            ("/v1/completions", "completions"),
            ("/completions", "completions"),
        ]:
            routes.append(
                HttpRoute(
                    f"/endpoints/{{name}}{path}",
                    self._handler(path, mode),
                    methods=["POST"],
                    name=f"{mode}:{path}",
                )
            )
        for doc in ("/swagger.json", "/openapi.json"):
            routes.append(HttpRoute(f"/endpoints/{{name}}{doc}", self.openapi, methods=["GET"]))
        self.app = Starlette(routes=routes)

    async def healthz(self, request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "status": "ok",
                "engines": len(self.runtime.slots),
                "endpoints": sorted(self.runtime.routes),
            }
        )

    async def openapi(self, request: Request) -> JSONResponse:
        view = await load_endpoint(request.path_params["name"])
        if view is None:
            return error_response(api.ApiError(404, "No such endpoint.", code="not_found"))
        return JSONResponse(openapi_document(view))

    def _handler(self, path: str, mode: str):  # type: ignore[no-untyped-def]
        async def handle(request: Request) -> Response:
            return await self.serve(request, path, mode)

        return handle

    # --- one request ---------------------------------------------------------------------------
    async def serve(self, request: Request, path: str, mode: str) -> Response:
        started = time.monotonic()
        name = request.path_params["name"]
        raw = await request.body()  # before taking a turn: a slow upload holds up nobody
        turn = self.arrivals.take(name)
        try:
            admitted = await self._admit(request, path, mode, name, raw, started)
            if isinstance(admitted, Response):
                return admitted
            # The checks above wait on a thread for the database: a request that got through
            # them sooner still reaches the replica after those that arrived before it.
            await self.arrivals.wait(name, turn)
            admitted.start()
        finally:
            self.arrivals.done(name, turn)
        job = admitted
        if job.req.stream:
            return StreamingResponse(
                job.stream(),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        try:
            body = await job.complete()
        except api.ApiError as err:
            return error_response(err)
        return JSONResponse(body)

    async def _admit(
        self, request: Request, path: str, mode: str, name: str, raw: bytes, started: float
    ) -> "Response | Generation":
        """Every check before generation: the refusal to send, or the job to start."""
        view = await load_endpoint(name)
        if view is None:
            return error_response(
                api.ApiError(404, f"No endpoint named {name!r}.", code="not_found")
            )
        slot = self._authenticate(request, view)
        meta = {"endpoint_id": view.id, "key_slot": slot or "", "route": path}
        try:
            _check_access(view, slot, path)
            req = api.parse(
                raw, family=view.family, mode=mode, default_ignore_eos=view.default_ignore_eos
            )
            key, engine_slot = self._replica(view)
            prompt, params = self._prepare(req, view, engine_slot)
            window = self.windows.setdefault(view.id, RateWindow())
            _check_rate(view, window)
        except api.ApiError as err:
            self._meter(meta, err.status, started)
            return error_response(err)

        return Generation(
            model=view.model,
            req=req,
            prompt=prompt,
            params=params,
            slot=engine_slot,
            window=window,
            broken=lambda reason: self.runtime.mark_broken(key, reason),
            finished=lambda status, **usage: self._meter(meta, status, started, **usage),
        )

    def _replica(self, view: EndpointView) -> tuple[Any, Any]:
        route = self.runtime.routes.get(view.name)
        picked = self.runtime.pick(route) if route else None
        if picked is None:
            raise api.ApiError(
                503,
                "No replica of this endpoint is loaded yet.",
                code="not_ready",
                headers={"Retry-After": "5"},
            )
        return picked

    def _authenticate(self, request: Request, view: EndpointView) -> str | None:
        header = request.headers.get("authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            return None
        presented_digest = digest(presented.strip())
        for slot, stored in view.key_slots.items():
            if same_digest(stored, presented_digest):
                return slot
        return None

    def _prepare(
        self, req: api.ChatRequest, view: EndpointView, slot: Any
    ) -> tuple[list[int], GenParams]:
        engine = slot.engine
        if req.mode == "chat":
            messages = req.messages
            if req.safe_prompt:
                messages = [{"role": "system", "content": api.SAFE_PROMPT}, *messages]
            prompt = engine.chat_tokens(messages)
        else:
            prompt = engine.text_tokens(req.prompt)
        room = engine.n_ctx - len(prompt)
        if req.max_tokens is None:
            max_tokens = min(view.default_max_tokens, room)
            if max_tokens < 1:
                raise api.ApiError(
                    400,
                    f"The prompt ({len(prompt)} tokens) fills the context length ({engine.n_ctx}).",
                    param="messages" if req.mode == "chat" else "prompt",
                )
        else:
            max_tokens = req.max_tokens
            if len(prompt) + max_tokens > engine.n_ctx:
                raise api.ApiError(
                    400,
                    f"The prompt ({len(prompt)} tokens) plus max_tokens ({max_tokens}) is "
                    f"more than the context length ({engine.n_ctx}).",
                    param="max_tokens",
                )
        bad_ids = [i for i in req.stop_token_ids if i >= engine.n_vocab]
        if bad_ids:
            raise api.ApiError(
                400,
                f"'stop_token_ids' has ids outside the vocabulary "
                f"(0..{engine.n_vocab - 1}): {bad_ids[:5]}.",
                param="stop_token_ids",
            )
        params = GenParams(
            max_tokens=max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            ignore_eos=req.ignore_eos,
            stop=req.stop,
            stop_token_ids=req.stop_token_ids,
            presence_penalty=req.presence_penalty,
            logprobs=req.logprobs,
            score=req.best_of is not None and req.best_of > req.n,
        )
        return prompt, params

    def _meter(
        self,
        meta: dict[str, Any],
        status: int,
        started: float,
        *,
        prompt: int = 0,
        completion: int = 0,
        ttft: float | None = None,
        stream: bool = False,
    ) -> None:
        self.meter.record(
            **meta,
            status_code=status,
            prompt_tokens=prompt,
            completion_tokens=completion,
            ttft_ms=None if ttft is None else (ttft - started) * 1000,
            duration_ms=(time.monotonic() - started) * 1000,
            stream=stream,
            created_at=timezone.now(),
        )


def _check_access(view: EndpointView, slot: str | None, path: str) -> None:
    """The key, the route and the endpoint's state, in the order Azure checks them."""
    if slot is None:
        raise api.ApiError(
            401,
            "Missing or invalid key: send 'Authorization: Bearer <key>' with the endpoint's "
            "primary or secondary key.",
            code="unauthorized",
        )
    if path not in view.routes:
        raise api.ApiError(
            404,
            f"The {view.family} API of this endpoint does not serve {path}; it serves "
            f"{', '.join(view.routes)}.",
            code="not_found",
        )
    if view.state != ProvisioningState.SUCCEEDED:
        raise api.ApiError(
            503,
            f"The endpoint is {view.state}, not ready to serve.",
            code="not_ready",
            headers={"Retry-After": "5"},
        )


def _check_rate(view: EndpointView, window: RateWindow) -> None:
    wait = window.admit(rpm=view.rpm, tpm=view.tpm)
    if wait is not None:
        raise api.ApiError(
            429,
            f"Rate limit of this deployment reached ({view.rpm} requests/min, {view.tpm} "
            f"tokens/min). Retry after {retry_after_header(wait)} s.",
            code="rate_limit_exceeded",
            headers={"Retry-After": retry_after_header(wait)},
        )
