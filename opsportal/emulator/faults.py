"""Injected faults and ARM's throttling buckets.

A fault matches a method and a path pattern (regular expression, searched, case-insensitive)
and fires `count` times, or on each match with `probability`. It fires "before" the handler
(nothing changes) or "after" it (the state has changed, the client never hears so). Its action
is a status (429 with Retry-After, 5xx), "reset" (the TCP connection is reset before any
answer) or "drop" (the answer starts, then the connection closes in the middle of its body).
"""

import re
import socket
import struct
import time
from typing import Any

from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from opsportal.emulator.state import ArmError, State

ACTIONS = ("status", "reset", "drop")


def fault_add(state: State, spec: dict[str, Any]) -> dict[str, Any]:
    action = spec.get("action", "status")
    when = spec.get("when", "before")
    if action not in ACTIONS or when not in ("before", "after"):
        raise ArmError(400, "BadFault", f"action is one of {ACTIONS}; when is before or after.")
    try:
        re.compile(spec.get("path", ".*"))
    except re.error as exc:
        raise ArmError(400, "BadFault", f"path is not a regular expression: {exc}") from None
    fault = {
        "id": spec.get("id") or f"fault-{len(state.faults) + 1}-{state.rng.getrandbits(24):06x}",
        "method": str(spec.get("method", "*")).upper(),
        "path": spec.get("path", ".*"),
        "when": when,
        "action": action,
        "status": int(spec.get("status", 503)),
        "retry_after": spec.get("retry_after"),
        "count": spec.get("count", 1 if "probability" not in spec else None),
        "probability": float(spec.get("probability", 1.0)),
        "code": spec.get("code"),
        "fired": 0,
    }
    state.faults.append(fault)
    return fault


def fault_pick(state: State, method: str, path: str, when: str) -> dict[str, Any] | None:
    """The first fault that fires for this request at this moment (under the state lock)."""
    for fault in list(state.faults):
        if fault["when"] != when or fault["method"] not in ("*", method):
            continue
        if not re.search(fault["path"], path, re.IGNORECASE):
            continue
        if fault["probability"] < 1.0 and state.rng.random() >= fault["probability"]:
            continue
        fault["fired"] += 1
        if fault["count"] is not None:
            fault["count"] -= 1
            if fault["count"] <= 0:
                state.faults.remove(fault)
        return fault
    return None


class ResetResponse(Response):
    """No answer: the connection is reset (RST). The socket is reached through the ASGI `send`
    callable's own transport (uvicorn's request cycle); where that is not available, the answer
    is dropped mid-body instead."""

    def __init__(self) -> None:
        super().__init__(status_code=200)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        transport = getattr(getattr(send, "__self__", None), "transport", None)
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is not None:
            # Linger on, timeout 0: closing sends RST instead of FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
            return
        await DropResponse()(scope, receive, send)


class DropResponse(Response):
    """Starts an answer it never finishes: the server closes the connection mid-body."""

    def __init__(self) -> None:
        super().__init__(status_code=200)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"4096")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"', "more_body": True})


def fault_response(fault: dict[str, Any]) -> Response:
    if fault["action"] == "reset":
        return ResetResponse()
    if fault["action"] == "drop":
        return DropResponse()
    status = fault["status"]
    headers = {}
    if fault["retry_after"] is not None:
        headers["Retry-After"] = str(fault["retry_after"])
    code = fault["code"] or {
        429: "TooManyRequests",
        500: "InternalServerError",
        503: "ServiceUnavailable",
    }.get(status, f"Http{status}")
    return JSONResponse(
        {"error": {"code": code, "message": f"Injected fault {fault['id']} ({status})."}},
        status_code=status,
        headers=headers,
    )


def bucket_take(state: State, key: tuple[str, ...], kind: str) -> tuple[float | None, int]:
    """Take one token from ARM's bucket for (scope, principal, kind); real time. Returns (seconds
    to wait or None, tokens remaining)."""
    capacity, refill = state.world["arm_throttle"][kind.removeprefix("tenant-")]
    now = time.monotonic()
    tokens, updated = state.buckets.get(key, [float(capacity), now])
    tokens = min(float(capacity), tokens + (now - updated) * float(refill))
    if tokens < 1:
        state.buckets[key] = [tokens, now]
        return (1 - tokens) / float(refill) if refill else 3600.0, 0
    state.buckets[key] = [tokens - 1, now]
    return None, int(tokens - 1)
