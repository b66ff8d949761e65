"""Test chat through the portal relay, against the real local runtime and model."""

import json
import os
import subprocess
import time
from html import unescape

import httpx
import pytest
from asgiref.sync import async_to_sync
from django.urls import reverse

from opsportal.accounts.models import Role
from opsportal.chat.models import ChatTurn
from opsportal.chat.relay import explain
from opsportal.inventory.models import Endpoint, Offering
from opsportal.runtime.models import UsageRecord
from tests.conftest import client_for
from tests.factories import MembershipFactory, UserFactory
from tests.runtime_support import SMOL, start_runtime


@pytest.fixture
def rt(transactional_db, catalog, settings):
    running, stop = start_runtime(settings)
    yield running
    stop()


@pytest.fixture
def chat(rt):
    """An operator of the Local team and a ready local endpoint."""
    rt.deploy("chatty")
    endpoint = Endpoint.objects.get(name="chatty")
    operator = UserFactory(username="op@example.com")
    MembershipFactory(team=endpoint.workspace.team, user=operator, role=Role.OPERATOR)
    return endpoint, operator


def send(user, endpoint, **fields) -> tuple[int, str]:
    data = {"mode": "chat", "route_style": "native", "message": "Hello", "max_tokens": 8, **fields}
    response = client_for(user).post(
        reverse("chat_turn_create", args=[endpoint.pk]), data, headers={"HX-Request": "true"}
    )
    return response.status_code, response.content.decode()


def get_stream(user, turn_id: int) -> httpx.Response:
    """GET the stream through the real ASGI entry point (opsportal.asgi), with a session."""
    from opsportal.asgi import application

    session = client_for(user).cookies["sessionid"].value if user else ""

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver", cookies={"sessionid": session}
        ) as client:
            response = await client.get(reverse("chat_turn_stream", args=[turn_id]))
            await response.aread()
            return response

    return async_to_sync(go)()


def stream(user, turn: ChatTurn) -> tuple[list[tuple[str, dict]], str]:
    response = get_stream(user, turn.pk)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    raw = response.text
    events = []
    for block in raw.strip().split("\n\n"):
        lines = block.split("\n")
        if lines[0].startswith("data:"):  # an endpoint chunk, passed through
            events.append(("message", json.loads(lines[0].removeprefix("data:"))))
        else:
            events.append((lines[0].removeprefix("event: "), json.loads(lines[1][5:])))
    return events, raw


def texts(events) -> list[str]:
    """The answer's text pieces, in order, as the page reads them from the chunks."""
    out = []
    for name, chunk in events:
        if name == "message":
            for c in chunk.get("choices") or []:
                out.append(
                    (c.get("delta") or c.get("message") or {}).get("content") or c.get("text") or ""
                )
    return [t for t in out if t]


def test_it_relays_a_turn_token_by_token(chat):
    endpoint, operator = chat
    status, html = send(operator, endpoint)
    assert status == 200
    turn = ChatTurn.objects.get()
    assert f'data-stream-url="/chat/turns/{turn.pk}/stream/"' in html
    events, _ = stream(operator, turn)
    names = [name for name, _ in events]
    assert names[-2:] == ["stats", "done"]
    tokens = texts(events)
    assert len(tokens) >= 5  # one event per upstream chunk, not one buffered blob
    turn.refresh_from_db()
    assert turn.status == "done"
    assert turn.answer == "".join(tokens)
    assert (turn.completion_tokens, turn.finish_reasons) == (8, ["length"])
    assert turn.prompt_tokens > 0 and turn.ttft_ms > 0 and turn.tokens_per_s > 0
    stats = events[-2][1]["html"]
    assert "finish-length" in stats and "completion <strong>8</strong>" in stats


def test_it_keeps_the_conversation_and_the_exact_request(chat, rt):
    endpoint, operator = chat
    send(operator, endpoint, system_prompt="Be brief.", message="Hi there")
    first = ChatTurn.objects.get()
    stream(operator, first)
    first.refresh_from_db()
    send(
        operator,
        endpoint,
        system_prompt="Be brief.",
        message="And then?",
        temperature="0",
        ignore_eos="false",
        route_style="inference",
    )
    second = ChatTurn.objects.latest("pk")
    assert second.route == "/chat/completions"
    assert second.request_body == {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi there"},
            {"role": "assistant", "content": first.answer},
            {"role": "user", "content": "And then?"},
        ],
        "max_tokens": 8,
        "temperature": 0.0,
        "ignore_eos": False,
        "stream": True,
    }
    events, raw = stream(operator, second)
    assert events[-1][0] == "done"
    key = rt.provider.keys_get(name="chatty")
    page = (
        client_for(operator)
        .get(reverse("endpoint_detail", args=[endpoint.pk]), {"tab": "chat"})
        .content.decode()
    )
    for secret in (key.primary, key.secondary):
        assert secret not in raw and secret not in page
        assert secret not in json.dumps(list(ChatTurn.objects.values()), default=str)


@pytest.mark.parametrize(
    ("fields", "field", "text"),
    [
        ({"temperature": "5"}, "temperature", "between 0 and 2"),
        ({"n": "2", "best_of": "2"}, "best_of", "greater than 'n'"),
        (
            {"use_beam_search": "on", "best_of": "3", "temperature": "1"},
            "use_beam_search",
            "temperature' 0",
        ),
        ({"presence_penalty": "9"}, "presence_penalty", "between -2 and 2"),
        ({"message": ""}, "message", "Write a message"),
        ({"stop_token_ids": "1,x"}, "stop_token_ids", "whole numbers"),
    ],
)
def test_it_shows_field_errors_and_sends_nothing(chat, fields, field, text):
    endpoint, operator = chat
    status, html = send(operator, endpoint, **fields)
    assert status == 422
    assert f'id="id_{field}-error"' in html
    assert text in unescape(html)
    assert not ChatTurn.objects.exists()


def test_it_offers_the_mistral_parameters_only_to_mistral_endpoints(chat):
    endpoint, operator = chat
    Offering.objects.filter(slug=SMOL).update(
        api_family="mistral", routes=["/v1/chat/completions", "/chat/completions"]
    )
    page = (
        client_for(operator)
        .get(reverse("endpoint_detail", args=[endpoint.pk]), {"tab": "chat"})
        .content.decode()
    )
    assert 'name="safe_prompt"' in page and 'name="best_of"' not in page
    assert 'value="completions"' not in page


def test_it_explains_upstream_refusals_in_plain_words(chat, settings):
    endpoint, operator = chat
    Offering.objects.filter(slug=SMOL).update(requests_per_minute=1)
    for _ in range(2):
        send(operator, endpoint)
        events, _ = stream(operator, ChatTurn.objects.latest("pk"))
    turn = ChatTurn.objects.latest("pk")
    assert turn.status == "error"
    assert turn.error.startswith("Rate limit reached (429): the endpoint asks to wait")
    assert "Rate limit reached (429)" in events[-2][1]["html"]


def test_it_reports_timeouts_and_unreachable_endpoints(chat, rt, settings):
    endpoint, operator = chat
    settings.OPSPORTAL_CHAT_TIMEOUT = 0.3
    send(operator, endpoint, max_tokens="400", n="1", best_of="2", ignore_eos="true")
    stream(operator, ChatTurn.objects.latest("pk"))
    assert "did not answer within 0 s (timeout)" in ChatTurn.objects.latest("pk").error
    settings.OPSPORTAL_CHAT_TIMEOUT = 30
    send(operator, endpoint)
    rt.stop_gateway()
    stream(operator, ChatTurn.objects.latest("pk"))
    assert ChatTurn.objects.latest("pk").error.startswith("Could not reach the endpoint")


def test_it_words_every_upstream_status():
    headers = httpx.Headers({"retry-after": "7"})
    body = json.dumps({"error": {"message": "nope"}}).encode()
    assert "refused the key (401)" in explain(401, headers, body, "/v1/chat/completions")
    assert "wait 7 s" in explain(429, headers, body, "/x")
    assert explain(400, headers, body, "/x") == "The endpoint refused the request (400): nope"
    assert "failed (502): nope" in explain(502, headers, body, "/x")
    assert "not ready (503): nope Retry in 7 s." in explain(503, headers, body, "/x")
    assert "failed (500): <html>" in explain(500, httpx.Headers(), b"<html>", "/x")


def test_it_runs_a_turn_once(chat):
    endpoint, operator = chat
    send(operator, endpoint)
    turn = ChatTurn.objects.get()
    stream(operator, turn)
    deadline = time.monotonic() + 10
    while not UsageRecord.objects.exists() and time.monotonic() < deadline:
        time.sleep(0.1)  # metering is written in batches
    served = UsageRecord.objects.count()
    assert served == 1
    events, _ = stream(operator, turn)  # a reopened page replays, it does not send again
    assert [name for name, _ in events] == ["stats", "done"]
    assert UsageRecord.objects.count() == served


def test_it_exports_a_transcript_with_a_working_curl(chat, rt):
    endpoint, operator = chat
    send(operator, endpoint, message="Count to three.")
    stream(operator, ChatTurn.objects.get())
    response = client_for(operator).get(reverse("chat_export", args=[endpoint.pk]))
    assert "attachment" in response["Content-Disposition"]
    export = response.json()
    (turn,) = export["turns"]
    assert turn["request"]["messages"][-1]["content"] == "Count to three."
    assert "$KEY" in turn["curl"]
    key = rt.provider.keys_get(name="chatty").primary
    assert key not in response.content.decode()
    out = subprocess.run(
        ["bash", "-c", turn["curl"].replace(" -N ", " ")],
        env={**os.environ, "KEY": key},
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[0][6:])["object"] == "chat.completion.chunk"


def test_it_clears_the_conversation(chat):
    endpoint, operator = chat
    send(operator, endpoint)
    response = client_for(operator).post(
        reverse("chat_clear", args=[endpoint.pk]), headers={"HX-Request": "true"}
    )
    assert response.status_code == 200
    assert not ChatTurn.objects.exists()


def test_it_compares_two_endpoints(chat, rt):
    endpoint, operator = chat
    rt.provider.endpoint_create(name="chatty-managed", kind="managed", offering_slug=SMOL)
    rt.provider.deployment_create(
        endpoint_name="chatty-managed",
        name="blue",
        instance_type="Local_1T_2K",
        instance_count=1,
        traffic_percent=100,
    )
    rt.wait_state("chatty-managed", "Succeeded")
    other = Endpoint.objects.get(name="chatty-managed")
    response = client_for(operator).post(
        reverse("chat_compare_create"),
        {"left": endpoint.pk, "right": other.pk, "message": "Hi", "max_tokens": 4},
        headers={"HX-Request": "true"},
    )
    assert response.status_code == 200
    turns = list(ChatTurn.objects.order_by("pk"))
    assert [t.endpoint_id for t in turns] == [endpoint.pk, other.pk]
    assert turns[0].compare_group == turns[1].compare_group is not None
    for turn in turns:
        events, _ = stream(operator, turn)
        assert events[-1][0] == "done"
        turn.refresh_from_db()
        assert turn.completion_tokens == 4
    # Comparisons stay out of each endpoint's own conversation.
    page = (
        client_for(operator)
        .get(reverse("endpoint_detail", args=[endpoint.pk]), {"tab": "chat"})
        .content.decode()
    )
    assert "turn-" not in page


def test_it_keeps_chat_to_operators(chat):
    endpoint, operator = chat
    viewer = UserFactory(username="v@example.com")
    MembershipFactory(team=endpoint.workspace.team, user=viewer, role=Role.VIEWER)
    status, _ = send(viewer, endpoint)
    assert status == 403
    page = (
        client_for(viewer)
        .get(reverse("endpoint_detail", args=[endpoint.pk]), {"tab": "chat"})
        .content.decode()
    )
    assert "needs the operator role" in page
    send(operator, endpoint)
    turn = ChatTurn.objects.get()
    outsider = UserFactory(username="out@example.com")
    assert (
        client_for(outsider)
        .post(reverse("chat_turn_create", args=[endpoint.pk]), {"message": "x"})
        .status_code
        == 404
    )
    assert get_stream(outsider, turn.pk).status_code == 404
    assert get_stream(viewer, turn.pk).status_code == 404  # not theirs
    assert get_stream(None, turn.pk).status_code == 403  # no session


def test_the_stream_after_the_post_uses_its_grant_once(chat):
    from opsportal.chat import grants

    endpoint, operator = chat
    client = client_for(operator)
    response = client.post(
        reverse("chat_turn_create", args=[endpoint.pk]),
        {"mode": "chat", "route_style": "native", "message": "Hello", "max_tokens": 8},
        headers={"HX-Request": "true"},
    )
    assert response.status_code == 200
    turn = ChatTurn.objects.get()
    assert turn.pk in grants._grants  # resolved at the POST, in this process
    session = client.cookies["sessionid"].value
    # Another session of the same user cannot take it: it gets the full checks instead.
    assert grants.grant_take(turn_id=turn.pk, session_key="not-the-session") is None

    async def go() -> httpx.Response:
        from opsportal.asgi import application

        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=application),
            base_url="http://testserver",
            cookies={"sessionid": session},
        ) as c:
            r = await c.get(reverse("chat_turn_stream", args=[turn.pk]))
            await r.aread()
            return r

    first = async_to_sync(go)()
    assert turn.pk not in grants._grants  # taken
    assert first.status_code == 200 and '"delta":{"content":' in first.text
    turn.refresh_from_db()
    assert turn.status == "done" and turn.completion_tokens == 8
    again = async_to_sync(go)()  # no grant now: the stored answer is replayed, nothing is sent
    assert '"delta"' not in again.text and "event: stats" in again.text
