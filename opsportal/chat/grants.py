"""Single-use stream grants: the chat form's POST resolves where a turn goes (URI, body, key),
so the stream that follows can open the upstream request at once, without a database round
trip in front of the first token.

A grant lives in this process's memory only, for one minute, bound to the session that made
the POST, and is taken (removed) by the first stream request that presents that session. A
stream that finds no grant (another server process, a reload, an expired grant) takes the full
path: session, permission and key checks against the database. Either way the turn is claimed in
the database before the upstream request is sent, so it is answered once.
"""

import threading
import time
from dataclasses import dataclass, field

from django.utils.crypto import constant_time_compare

from opsportal.chat.models import ChatTurn
from opsportal.chat.services import RelayTarget

LIFETIME_S = 60.0
_grants: dict[int, "Grant"] = {}
_lock = threading.Lock()


@dataclass
class Grant:
    session_key: str = field(repr=False)
    turn: ChatTurn
    target: RelayTarget
    expires: float


def grant_issue(*, session_key: str | None, turn: ChatTurn, target: RelayTarget) -> None:
    if not session_key:
        return
    now = time.monotonic()
    with _lock:
        for turn_id in [t for t, g in _grants.items() if g.expires < now]:
            del _grants[turn_id]
        _grants[turn.pk] = Grant(session_key, turn, target, now + LIFETIME_S)


def grant_take(*, turn_id: int, session_key: str | None) -> Grant | None:
    """The grant of a turn for this session, once; None when there is none to take."""
    if not session_key:
        return None
    with _lock:
        grant = _grants.get(turn_id)
        if grant is None or not constant_time_compare(grant.session_key, session_key):
            return None
        del _grants[turn_id]
    return grant if grant.expires >= time.monotonic() else None
