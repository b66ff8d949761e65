"""The test-chat stream, served by opsportal.asgi in front of Django.

One request per answer, held open while tokens flow. Django's middleware chain costs several
milliseconds of thread hops before the first byte (bench/relay.py measured it), so this route
authenticates the session itself, in one hop to a worker thread, with Django's own session store
and auth checks, then streams. Everything else in the console goes through Django.
"""

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, load_backend
from django.contrib.auth.models import AbstractBaseUser
from django.db import close_old_connections
from django.template.loader import render_to_string
from django.utils.crypto import constant_time_compare
from django.utils.module_loading import import_string

from opsportal.accounts.models import ROLE_RANK, Role
from opsportal.accounts.permissions import role_on
from opsportal.chat import services
from opsportal.chat.grants import grant_take
from opsportal.chat.models import ChatTurn
from opsportal.chat.relay import event, relay
from opsportal.providers import ProviderError

log = logging.getLogger(__name__)
PATH = re.compile(r"^/chat/turns/(?P<turn_id>\d+)/stream/$")
# What Django's middleware would add to the answer, and this route bypasses it: never sniffed,
# never framed, nothing in it runs.
STREAM_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
    (b"referrer-policy", b"same-origin"),
]

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def user_from_session(session_key: str | None) -> AbstractBaseUser | None:
    """The logged-in user of a session, checked as django.contrib.auth.get_user checks it."""
    if not session_key:
        return None
    session = import_string(settings.SESSION_ENGINE).SessionStore(session_key)
    try:
        user_id = session[SESSION_KEY]
        backend_path = session[BACKEND_SESSION_KEY]
    except KeyError:
        return None
    if backend_path not in settings.AUTHENTICATION_BACKENDS:
        return None
    user = load_backend(backend_path).get_user(user_id)
    if user is None or not getattr(user, "is_active", True):
        return None
    if not constant_time_compare(session.get(HASH_SESSION_KEY, ""), user.get_session_auth_hash()):
        return None
    return user


def stream_setup(session_key: str | None, turn_id: int) -> tuple[ChatTurn, Any, str]:
    """Who asks, which turn, and where it goes; or the stored result of a finished turn."""
    user = user_from_session(session_key)
    if user is None:
        raise Refused(403, "Log in again: this session has ended.")
    turn = (
        ChatTurn.objects.select_related("endpoint", "endpoint__workspace")
        .filter(pk=turn_id, user=user)
        .first()
    )
    # The same rule as the pages: another team's endpoint, or a deleted one, is not there.
    role = None
    if turn and turn.endpoint.deleted_at is None and turn.endpoint.workspace.deleted_at is None:
        role = role_on(user, turn.endpoint.workspace.team_id)
    if role is None:
        raise Refused(404, "No such chat turn.")
    if ROLE_RANK[Role(role)] < ROLE_RANK[Role.OPERATOR]:
        raise Refused(403, "Test chat needs the operator role.")
    if turn.status != ChatTurn.Status.PENDING:
        return turn, None, render_to_string("chat/_stats.html", {"turn": turn})
    # Claim the turn, so a second tab or a reload cannot send it twice.
    if not ChatTurn.objects.filter(pk=turn.pk, status=ChatTurn.Status.PENDING).update(
        status=ChatTurn.Status.STOPPED
    ):
        raise Refused(404, "This turn is already being answered.")
    try:
        return turn, services.relay_target(turn), ""
    except ProviderError as exc:
        ChatTurn.objects.filter(pk=turn.pk).update(status=ChatTurn.Status.ERROR, error=exc.message)
        turn.refresh_from_db()
        return turn, None, render_to_string("chat/_stats.html", {"turn": turn})


async def _replay(html: str) -> AsyncIterator[bytes]:
    yield event("stats", {"html": html})
    yield event("done", {})


def _cookie(scope: Scope, name: str) -> str | None:
    for header, value in scope.get("headers", []):
        if header == b"cookie":
            for part in value.decode("latin-1").split(";"):
                key, _, val = part.strip().partition("=")
                if key == name:
                    return val
    return None


def turn_claim(turn_id: int) -> bool:
    """Take a pending turn for this stream: false when another stream already has it."""
    try:
        return bool(
            ChatTurn.objects.filter(pk=turn_id, status=ChatTurn.Status.PENDING).update(
                status=ChatTurn.Status.STOPPED
            )
        )
    finally:
        close_old_connections()


async def serve(scope: Scope, receive: Receive, send: Send, turn_id: int) -> None:
    session_key = _cookie(scope, settings.SESSION_COOKIE_NAME)
    grant = grant_take(turn_id=turn_id, session_key=session_key)
    claimed: asyncio.Future[bool] | None = None
    try:
        if grant is not None:
            # Resolved at the POST: the upstream request goes out at once, and the turn is
            # claimed meanwhile; nothing is relayed unless the claim succeeds.
            claimed = asyncio.ensure_future(
                sync_to_async(turn_claim, thread_sensitive=False)(turn_id)
            )
            turn, target, finished = grant.turn, grant.target, ""
        else:
            turn, target, finished = await sync_to_async(stream_setup)(session_key, turn_id)
    except Refused as refused:
        await send(
            {
                "type": "http.response.start",
                "status": refused.status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), *STREAM_HEADERS],
            }
        )
        await send({"type": "http.response.body", "body": refused.message.encode()})
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/event-stream"),
                (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no"),
                *STREAM_HEADERS,
            ],
        }
    )
    body = relay(turn, target, claimed=claimed) if target is not None else _replay(finished)

    async def pump() -> None:
        async for chunk in body:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def until_disconnect() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    # Whichever ends first wins: the answer is complete, or the browser went away (then the
    # relay is cancelled, which closes the upstream request and stops the generation).
    pumping = asyncio.ensure_future(pump())
    watching = asyncio.ensure_future(until_disconnect())
    try:
        await asyncio.wait({pumping, watching}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (pumping, watching):
            task.cancel()
        await asyncio.gather(pumping, watching, return_exceptions=True)
    if pumping.done() and not pumping.cancelled() and pumping.exception() is not None:
        log.error("chat stream of turn %s failed", turn_id, exc_info=pumping.exception())
