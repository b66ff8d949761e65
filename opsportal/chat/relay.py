"""The test-chat relay: browser <- server-sent events <- this process <- endpoint data plane.

Nothing is buffered: each upstream chunk becomes one event to the browser as it arrives. The key
is added here and goes no further. When the browser goes away, Django cancels this generator,
which closes the upstream request, and the endpoint stops generating.
"""

import asyncio
import json
import re
import time
import weakref
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import httpx
from asgiref.sync import sync_to_async
from django.conf import settings
from django.template.loader import render_to_string

from opsportal.chat.models import ChatTurn
from opsportal.chat.services import RelayTarget
from opsportal.providers import azure_cloud

_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient]" = (
    weakref.WeakKeyDictionary()
)


def client() -> httpx.AsyncClient:
    """One pooled client per event loop (so per server process): no new connection or TLS
    set-up per turn. Pooled connections belong to the loop that opened them."""
    loop = asyncio.get_running_loop()
    found = _clients.get(loop)
    if found is None:
        found = _clients[loop] = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
            verify=azure_cloud.ssl_context(),
        )
    return found


# An upstream chunk passes through only as one `data:` line of JSON: nothing that could name an
# event or smuggle other fields into the page's stream.
SAFE = re.compile(rb"data: ?\{[^\n]*\}\n\n")
# A chunk that carries text: the first one marks the time to first token.
CONTENT = re.compile(rb'"(?:content|text)": ?"[^"]')


def data_event(data: dict[str, Any]) -> bytes:
    """An unnamed event (the page's `message`): one chunk in the endpoint's own shape."""
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def explain(status: int, headers: httpx.Headers, raw: bytes, route: str) -> str:
    """An upstream refusal in plain words."""
    try:
        message = json.loads(raw)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = raw.decode("utf-8", "replace")[:300].strip() or "no details"
    if status in (401, 403):
        return (
            f"The endpoint refused the key ({status}). It may have just been regenerated: "
            "send again; if it keeps failing, check the endpoint's keys."
        )
    if status == 429:
        wait = headers.get("retry-after", "a few")
        return f"Rate limit reached (429): the endpoint asks to wait {wait} s. {message}"
    if status == 400:
        return f"The endpoint refused the request (400): {message}"
    if status == 404:
        return f"The endpoint does not serve {route} (404): {message}"
    if status == 503:
        wait = headers.get("retry-after")
        return f"The endpoint is not ready (503): {message}" + (
            f" Retry in {wait} s." if wait else ""
        )
    return f"The endpoint failed ({status}): {message} Try again."


def _finish(turn: ChatTurn, fields: dict[str, Any]) -> str:
    ChatTurn.objects.filter(pk=turn.pk).update(**fields)
    for name, value in fields.items():
        setattr(turn, name, value)
    return render_to_string("chat/_stats.html", {"turn": turn})


finish = sync_to_async(_finish)


class _Collected:
    def __init__(self) -> None:
        self.answers: dict[int, list[str]] = defaultdict(list)
        self.finish: dict[int, str | None] = {}
        self.usage: dict[str, int] | None = None
        self.logprobs: dict[str, list] = {
            "tokens": [],
            "token_logprobs": [],
            "top_logprobs": [],
            "text_offsets": [],
        }
        self.has_logprobs = False
        self.chunks = 0
        self.first_at: float | None = None

    def take(self, chunk: dict[str, Any], mode: str) -> list[tuple[int, str]]:
        out = []
        for choice in chunk.get("choices") or []:
            index = choice.get("index", 0)
            if mode == "chat":
                text = (choice.get("delta") or choice.get("message") or {}).get("content")
            else:
                text = choice.get("text")
            if text:
                if self.first_at is None:
                    self.first_at = time.monotonic()
                self.answers[index].append(text)
                self.chunks += 1
                out.append((index, text))
            if choice.get("finish_reason"):
                self.finish[index] = choice["finish_reason"]
            else:
                self.finish.setdefault(index, None)
            lp = choice.get("logprobs")
            if index == 0 and isinstance(lp, dict):
                self.has_logprobs = True
                for key in self.logprobs:
                    self.logprobs[key] += lp.get(key) or []
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        return out


async def relay(
    turn: ChatTurn, target: RelayTarget, *, claimed: "asyncio.Future[bool] | None" = None
) -> AsyncIterator[bytes]:
    """Relay one answer. `claimed`, when given, is the turn's claim, running while the upstream
    request goes out: nothing is relayed or recorded unless it succeeds (another stream has
    the turn otherwise, and this upstream request is closed at once)."""
    started = time.monotonic()
    got = _Collected()
    status, error = ChatTurn.Status.DONE, ""
    streaming = bool(target.body.get("stream"))
    blocks: list[bytes] = []  # relayed upstream chunks, parsed when the answer ends

    def collect() -> None:
        for block in blocks:
            got.take(json.loads(block[5:]), turn.mode)
        blocks.clear()

    try:
        async with client().stream(
            "POST",
            target.url,
            json=target.body,
            headers={"Authorization": f"Bearer {target.key}"},
            timeout=httpx.Timeout(settings.OPSPORTAL_CHAT_TIMEOUT, connect=10.0),
        ) as upstream:
            if claimed is not None and not await claimed:
                yield event("stats", {"html": '<p class="muted">Answered in another window.</p>'})
                yield event("done", {})
                return
            if upstream.status_code != 200:
                status = ChatTurn.Status.ERROR
                error = explain(
                    upstream.status_code, upstream.headers, await upstream.aread(), turn.route
                )
            elif streaming:
                # Upstream events pass through as they are (the page reads each chunk itself):
                # no parsing on the way, so the relay takes as little CPU as possible from the
                # model beside it. The chunks are parsed once the answer is complete.
                pending, ended = b"", False
                async for raw in upstream.aiter_raw():
                    pending += raw.replace(b"\r\n", b"\n")
                    while not ended and (cut := pending.find(b"\n\n")) >= 0:
                        block, pending = pending[: cut + 2], pending[cut + 2 :]
                        if not block.startswith(b"data:"):
                            continue
                        if block.startswith(b"data: [DONE]"):
                            ended = True
                            break
                        if b'"error"' in block:
                            failure = json.loads(block[5:]).get("error")
                            if failure:
                                status = ChatTurn.Status.ERROR
                                error = f"The endpoint failed mid-answer: {failure.get('message')}"
                                ended = True
                                break
                        if got.first_at is None and CONTENT.search(block):
                            got.first_at = time.monotonic()
                        blocks.append(block)
                        yield block if SAFE.fullmatch(block) else data_event(json.loads(block[5:]))
                    if ended:
                        break
            else:
                answer = json.loads(await upstream.aread())
                got.take(answer, turn.mode)
                yield data_event(answer)
    except httpx.TimeoutException:
        status = ChatTurn.Status.ERROR
        error = (
            f"The endpoint did not answer within {settings.OPSPORTAL_CHAT_TIMEOUT:.0f} s (timeout)."
        )
    except httpx.HTTPError as exc:
        status = ChatTurn.Status.ERROR
        error = (
            f"Could not reach the endpoint at {turn.endpoint.scoring_uri} ({type(exc).__name__})."
        )
    except (asyncio.CancelledError, GeneratorExit):
        # The browser went away (or pressed stop): keep what arrived, then let go.
        collect()
        await asyncio.shield(finish(turn, _fields(got, started, ChatTurn.Status.STOPPED, "")))
        raise
    collect()
    html = await finish(turn, _fields(got, started, status, error))
    yield event("stats", {"html": html})
    yield event("done", {})


def _fields(got: _Collected, started: float, status: str, error: str) -> dict[str, Any]:
    end = time.monotonic()
    completion = (got.usage or {}).get("completion_tokens", got.chunks if got.chunks else None)
    fields: dict[str, Any] = {
        "status": status,
        "error": error,
        "answers": ["".join(got.answers[i]) for i in sorted(got.answers)],
        "finish_reasons": [got.finish.get(i) for i in sorted(got.finish)],
        "prompt_tokens": (got.usage or {}).get("prompt_tokens"),
        "completion_tokens": completion,
        "duration_ms": (end - started) * 1000,
        "logprobs": got.logprobs if got.has_logprobs else None,
    }
    if got.first_at is not None:
        fields["ttft_ms"] = (got.first_at - started) * 1000
        if completion and completion > 1 and end > got.first_at:
            fields["tokens_per_s"] = (completion - 1) / (end - got.first_at)
    return fields
