"""One admitted request on one replica: its n (or best_of) runs side by side in the replica's
batch, and their answer in the API's shapes: a whole completion, or server-sent chunks (the
per-token chunk is pre-serialised around its text)."""

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from opsportal.runtime import api
from opsportal.runtime.decoding import EngineError, Finish, GenParams, Piece
from opsportal.runtime.limits import RateWindow


class Generation:
    """One admitted request: n (or best_of) completions on one replica, side by side."""

    def __init__(
        self,
        *,
        model: str,
        req: api.ChatRequest,
        prompt: list[int],
        params: GenParams,
        slot: Any,
        window: RateWindow,
        broken: Callable[[str], None],
        finished: Callable[..., None],
    ) -> None:
        """`slot` is the replica that runs it; `broken(reason)` is told when its engine fails,
        `finished(status, prompt=, completion=, ttft=, stream=)` once when it ends."""
        self.model, self.req, self.prompt, self.params = model, req, prompt, params
        self.slot, self.window, self.broken, self.finished = slot, window, broken, finished
        self.id = ("chatcmpl-" if req.mode == "chat" else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.cancel = threading.Event()
        self.out: asyncio.Queue = asyncio.Queue()
        self.first_token_at: float | None = None
        self.completion_tokens = 0

    @property
    def runs(self) -> int:
        return self.req.best_of if self.params.score and self.req.best_of else self.req.n

    def start(self) -> None:
        """Every run as its own sequence in the replica's batch (on the event loop)."""
        loop = asyncio.get_running_loop()
        out = self.out
        slot, runs = self.slot, self.runs
        state = {"taken": False, "left": runs}

        # These run on the event loop (posted from the decode thread), even once this request
        # has gone away: the replica's count of requests stays right.
        def taken() -> None:
            if not state["taken"]:
                state["taken"] = True
                slot.waiting += 1

        def deliver(index: int, batch: list[Piece | Finish | EngineError]) -> None:
            for event in batch:
                out.put_nowait((index, event))
            if isinstance(batch[-1], Finish | EngineError):
                if isinstance(batch[-1], EngineError):
                    self.broken(str(batch[-1]))
                state["left"] -= 1
                if state["left"] == 0:
                    if state["taken"]:
                        slot.waiting -= 1
                    out.put_nowait(None)

        def sink_for(index: int):  # type: ignore[no-untyped-def]
            return lambda batch: loop.call_soon_threadsafe(deliver, index, batch)

        for index in range(runs):
            slot.engine.submit(
                self.prompt,
                self.params,
                sink_for(index),
                self.cancel,
                taken=lambda: loop.call_soon_threadsafe(taken),
            )

    async def events(self) -> AsyncIterator[tuple[int, Piece | Finish | EngineError]]:
        """The runs' events as they come."""
        try:
            while (item := await self.out.get()) is not None:
                if isinstance(item[1], Piece) and self.first_token_at is None:
                    self.first_token_at = time.monotonic()
                if isinstance(item[1], Finish):
                    self.completion_tokens += item[1].completion_tokens
                yield item
        finally:
            self.cancel.set()  # a client that went away frees its slots at the next step

    def _finish(self, status: int) -> None:
        prompt_tokens = len(self.prompt)
        self.window.add_tokens(prompt_tokens + self.completion_tokens)
        self.finished(
            status,
            prompt=prompt_tokens,
            completion=self.completion_tokens,
            ttft=self.first_token_at,
            stream=self.req.stream,
        )

    def usage(self) -> dict[str, int]:
        prompt = len(self.prompt)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": self.completion_tokens,
            "total_tokens": prompt + self.completion_tokens,
        }

    def _logprobs(self, pieces: list[Piece]) -> dict[str, list] | None:
        if self.req.logprobs is None:
            return None
        return {
            "text_offsets": [o for p in pieces for o in p.text_offsets],
            "token_logprobs": [v for p in pieces for v in p.token_logprobs],
            "tokens": [t for p in pieces for t in p.tokens],
            "top_logprobs": [t for p in pieces for t in p.top_logprobs],
        }

    def _choice(self, index: int, text: str, reason: str | None, logprobs: Any) -> dict[str, Any]:
        if self.req.mode == "chat":
            return {
                "index": index,
                "message": {"role": "assistant", "content": text},
                "finish_reason": reason,
                "logprobs": logprobs,
            }
        return {"index": index, "text": text, "finish_reason": reason, "logprobs": logprobs}

    async def complete(self) -> dict[str, Any]:
        texts: dict[int, list[Piece]] = {}
        finishes: dict[int, Finish] = {}
        async for index, event in self.events():
            if isinstance(event, EngineError):
                self._finish(500)
                raise api.ApiError(
                    500,
                    "The model failed while generating; the runtime will reload it. Try again.",
                    code="engine_error",
                )
            if isinstance(event, Piece):
                texts.setdefault(index, []).append(event)
            else:
                finishes[index] = event
        order = sorted(finishes)
        if self.params.score:
            # best_of: keep the n completions with the highest mean log-prob per token.
            def mean(i: int) -> float:
                return finishes[i].sum_logprob / max(1, finishes[i].completion_tokens)

            order = sorted(order, key=mean, reverse=True)[: self.req.n]
        choices = []
        for new_index, i in enumerate(order):
            pieces = texts.get(i, [])
            choices.append(
                self._choice(
                    new_index,
                    "".join(p.text for p in pieces),
                    finishes[i].reason,
                    self._logprobs(pieces),
                )
            )
        self._finish(200)
        return {
            "id": self.id,
            "object": "chat.completion" if self.req.mode == "chat" else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": self.usage(),
        }

    def _chunk(
        self,
        index: int,
        *,
        text: str | None = None,
        reason: str | None = None,
        logprobs: Any = None,
        first: bool = False,
    ) -> dict[str, Any]:
        if self.req.mode == "chat":
            delta: dict[str, str] = {}
            if first:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            choice = {"index": index, "delta": delta, "finish_reason": reason, "logprobs": logprobs}
            kind = "chat.completion.chunk"
        else:
            choice = {
                "index": index,
                "text": text or "",
                "finish_reason": reason,
                "logprobs": logprobs,
            }
            kind = "text_completion"
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }

    async def stream(self) -> AsyncIterator[bytes]:
        started_choices: set[int] = set()
        frames: dict[int, tuple[bytes, bytes]] = {}
        status, done, finished = 200, False, 0
        try:
            async for index, event in self.events():
                if isinstance(event, EngineError):
                    status = 500
                    err = {
                        "error": {
                            "message": "The model failed while generating.",
                            "type": "engine_error",
                            "param": None,
                            "code": "engine_error",
                        }
                    }
                    yield _sse(err)
                    break
                first = index not in started_choices
                started_choices.add(index)
                if isinstance(event, Piece) and (first or self.req.logprobs is not None):
                    yield _sse(
                        self._chunk(
                            index, text=event.text, first=first, logprobs=self._logprobs([event])
                        )
                    )
                elif isinstance(event, Piece):
                    # The hot path, once per token: only the text changes between chunks.
                    if index not in frames:
                        frames[index] = _frame(self._chunk(index, text=_SLOT))
                    head, tail = frames[index]
                    yield head + json.dumps(event.text).encode() + tail
                elif event.reason != "cancelled":
                    chunk = self._chunk(index, reason=event.reason, first=first)
                    finished += 1
                    if finished == self.runs:  # runs interleave: the last to end has the total
                        chunk["usage"] = self.usage()
                    yield _sse(chunk)
            if status == 200:
                yield b"data: [DONE]\n\n"
                done = True
        finally:
            # 499: the client went away before the end (the generation was stopped).
            self._finish(status if done or status != 200 else 499)


_SLOT = "\u0000slot\u0000"


def _frame(chunk: dict[str, Any]) -> tuple[bytes, bytes]:
    """A chunk's SSE bytes split around its text, to be filled in per token."""
    head, tail = _sse(chunk).split(json.dumps(_SLOT).encode())
    return head, tail


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"
