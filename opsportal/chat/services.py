"""Test-chat writes and reads: turns, transcripts, export, and where a relay goes."""

import json
import shlex
import uuid
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet

from opsportal.chat.forms import ChatForm
from opsportal.chat.models import ChatTurn
from opsportal.dataplane.scoring import endpoint_url
from opsportal.inventory.models import Endpoint
from opsportal.keys.store import secret_current, secret_value
from opsportal.providers import ProviderError, for_workspace


def chat_history(*, user: AbstractBaseUser, endpoint: Endpoint) -> QuerySet[ChatTurn]:
    return ChatTurn.objects.filter(user=user, endpoint=endpoint, compare_group__isnull=True)


def _messages_so_far(turns: QuerySet[ChatTurn]) -> list[dict[str, str]]:
    """Earlier chat turns that got an answer, as the conversation the next turn continues."""
    messages: list[dict[str, str]] = []
    for turn in turns.filter(mode=ChatTurn.Mode.CHAT, status=ChatTurn.Status.DONE):
        if turn.answer:
            messages += [
                {"role": "user", "content": turn.prompt},
                {"role": "assistant", "content": turn.answer},
            ]
    return messages


def chat_turn_create(
    *,
    user: AbstractBaseUser,
    endpoint: Endpoint,
    form: ChatForm,
    compare_group: uuid.UUID | None = None,
) -> ChatTurn:
    history = [] if compare_group else _messages_so_far(chat_history(user=user, endpoint=endpoint))
    data = form.cleaned_data
    return ChatTurn.objects.create(
        user=user,
        endpoint=endpoint,
        compare_group=compare_group,
        mode=data["mode"],
        route=form.route(),
        prompt=data["message"],
        system_prompt=data.get("system_prompt", ""),
        request_body=form.request_body(history=history),
    )


def chat_clear(*, user: AbstractBaseUser, endpoint: Endpoint) -> int:
    return chat_history(user=user, endpoint=endpoint).delete()[0]


def curl_command(*, scoring_uri: str, route: str, body: dict[str, Any]) -> str:
    """A ready command; the key is a placeholder to fill from the keys tab."""
    stream = " -N" if body.get("stream") else ""
    return (
        f'curl{stream} -H "Authorization: Bearer $KEY" -H "Content-Type: application/json" '
        f"{shlex.quote(endpoint_url(scoring_uri, route))} -d {shlex.quote(json.dumps(body))}"
    )


def transcript_export(*, user: AbstractBaseUser, endpoint: Endpoint) -> dict[str, Any]:
    turns = []
    for turn in chat_history(user=user, endpoint=endpoint):
        turns.append(
            {
                "at": turn.created_at.isoformat(),
                "route": turn.route,
                "request": turn.request_body,
                "curl": curl_command(
                    scoring_uri=endpoint.scoring_uri, route=turn.route, body=turn.request_body
                ),
                "status": turn.status,
                "answers": turn.answers,
                "finish_reasons": turn.finish_reasons,
                "usage": {
                    "prompt_tokens": turn.prompt_tokens,
                    "completion_tokens": turn.completion_tokens,
                    "total_tokens": turn.total_tokens,
                },
                "time_to_first_token_ms": turn.ttft_ms,
                "tokens_per_second": turn.tokens_per_s,
                "error": turn.error or None,
            }
        )
    return {
        "endpoint": endpoint.name,
        "scoring_uri": endpoint.scoring_uri,
        "model": endpoint.offering.model_name if endpoint.offering else None,
        "key": "Set KEY to one of the endpoint's keys; it is never part of an export.",
        "turns": turns,
    }


@dataclass
class RelayTarget:
    url: str
    body: dict[str, Any]
    key: str = field(repr=False)


def relay_target(turn: ChatTurn) -> RelayTarget:
    """Where a turn goes and with which key: fetched here, on the server, never sent to pages."""
    endpoint = turn.endpoint
    if not endpoint.scoring_uri:
        raise ProviderError("This endpoint has no scoring URI yet.")
    # The key consumers are told to use: the newest published version. Rotation publishes each
    # new key before it regenerates the other, so this key works throughout a rotation, and
    # no management call is made per turn. Endpoints the store knows nothing of yet (made
    # outside the console) ask their provider.
    current = secret_current(endpoint=endpoint)
    if current is not None:
        key = secret_value(current)
    else:
        key = for_workspace(endpoint.workspace).keys_get(name=endpoint.name).primary
    return RelayTarget(
        url=endpoint_url(endpoint.scoring_uri, turn.route), body=turn.request_body, key=key
    )


def turn_record(turn_id: int, **fields: Any) -> None:
    ChatTurn.objects.filter(pk=turn_id).update(**fields)
