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
from opsportal.dataplane.scoring import SCORE, score_as_chat
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


# Server-sent events end a line at CR, LF or CRLF (the WHATWG rules browsers follow), so the
# relay splits on all three: an upstream "\r" can never start a line of its own in the page.
LINE = re.compile(rb"\r\n|\r|\n")


class UpstreamEvents:
    """An upstream event stream, read as the browser would: each event is the data of its
    `data:` lines; `event:`, `id:` and every other field are dropped, not relayed."""

    def __init__(self) -> None:
        self.pending = b""
        self.data: list[bytes] = []

    def feed(self, raw: bytes) -> list[bytes]:
        """The data of every event that `raw` completes."""
        buffer = self.pending + raw
        # A trailing CR may be the first half of a CRLF: wait for the next read to know.
        held = buffer.endswith(b"\r")
        lines = LINE.split(buffer[:-1] if held else buffer)
        # The last piece is half a line until its line break arrives.
        self.pending = lines.pop() + (b"\r" if held else b"")
        events = []
        for line in lines:
            if not line:
                if self.data:
                    events.append(b"\n".join(self.data))
                    self.data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                self.data.append(value[1:] if value.startswith(b" ") else value)
        return events


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
                # Every upstream event is parsed, and only its JSON, serialised again by us,
                # reaches the page as one unnamed event: nothing upstream sends can name an
                # event or add a field to the page's stream.
                events, ended = UpstreamEvents(), False
                async for raw in upstream.aiter_raw():
                    for data in events.feed(raw):
                        if data.strip() == b"[DONE]":
                            ended = True
                            break
                        try:
                            chunk = json.loads(data)
                        except ValueError:
                            continue  # not an event the page can read
                        if not isinstance(chunk, dict):
                            continue
                        if not isinstance(chunk.get("choices"), list) and not chunk.get("error"):
                            continue  # not a completion chunk: nothing the page reads
                        if chunk.get("error"):
                            failure = chunk["error"]
                            status = ChatTurn.Status.ERROR
                            said = failure.get("message") if isinstance(failure, dict) else failure
                            error = f"The endpoint failed mid-answer: {said}"
                            ended = True
                            break
                        got.take(chunk, turn.mode)
                        yield data_event(chunk)
                    if ended:
                        break
            else:
                answer = json.loads(await upstream.aread())
                if turn.route == SCORE:
                    answer = score_as_chat(answer)
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
        await asyncio.shield(finish(turn, _fields(got, started, ChatTurn.Status.STOPPED, "")))
        raise
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
