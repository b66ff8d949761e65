"""What an endpoint's answers and the pages' markup can and cannot do in the console's origin."""

import re
import threading
import time
from pathlib import Path

import pytest
import uvicorn
from asgiref.sync import async_to_sync
from django.test import Client
from starlette.applications import Starlette
from starlette.responses import StreamingResponse
from starlette.routing import Route

from opsportal.chat.models import ChatTurn
from opsportal.chat.relay import relay
from opsportal.chat.services import RelayTarget
from tests.conftest import client_for
from tests.factories import EndpointFactory
from tests.runtime_support import free_port

ROOT = Path(__file__).resolve().parent.parent
# What a hostile endpoint sends: a bare CR inside a data line, which browsers read as a line
# break, so one chunk would carry an event of its own naming the page's "stats" handler.
SMUGGLED = (
    b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\r'
    b'event: stats\rdata: {"html":"<img src=x onerror=alert(document.domain)>"}\n\n'
    b'data: {"choices":[{"index":0,"delta":{"content":" there"},"finish_reason":"stop"}]}\n\n'
    b"event: stats\n"
    b'data: {"html":"<script>steal()</script>"}\n\n'
    b"data: [DONE]\n\n"
)


@pytest.fixture
def hostile_endpoint():
    async def answer(request):  # type: ignore[no-untyped-def]
        async def body():  # type: ignore[no-untyped-def]
            for i in range(0, len(SMUGGLED), 37):  # in awkward pieces, CRs split from LFs
                yield SMUGGLED[i : i + 37]

        return StreamingResponse(body(), media_type="text/event-stream")

    app = Starlette(routes=[Route("/v1/chat/completions", answer, methods=["POST"])])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_the_relay_lets_no_upstream_bytes_name_an_event(world, hostile_endpoint):
    endpoint = EndpointFactory(workspace=world.ws_a, name="hostile", scoring_uri=hostile_endpoint)
    turn = ChatTurn.objects.create(
        user=world.operator,
        endpoint=endpoint,
        mode="chat",
        route="/v1/chat/completions",
        prompt="hi",
        request_body={"messages": [{"role": "user", "content": "hi"}], "stream": True},
    )
    target = RelayTarget(
        url=f"{hostile_endpoint}/v1/chat/completions", body=turn.request_body, key="k"
    )

    async def collect() -> bytes:
        return b"".join([chunk async for chunk in relay(turn, target)])

    out = async_to_sync(collect)()
    assert b"\r" not in out
    assert b"onerror" not in out and b"<script>steal" not in out
    # Every event the page gets: unnamed chunks of JSON, then the console's own stats and done.
    events = [block.split(b"\n")[0] for block in out.strip().split(b"\n\n")]
    assert events.count(b"event: stats") == 1 and events[-1] == b"event: done"
    turn.refresh_from_db()
    # The smuggling chunk is not JSON once read as the browser reads it: dropped, not relayed.
    assert turn.answers == [" there"] and turn.finish_reasons == ["stop"]


def test_every_page_carries_a_strict_content_security_policy(world):
    response = client_for(world.operator).get("/")
    policy = response["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "style-src 'self'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert "frame-ancestors 'none'" in policy
    assert response["X-Content-Type-Options"] == "nosniff"
    assert Client().get("/login/")["Content-Security-Policy"] == policy


def test_no_template_needs_an_inline_script_style_or_handler():
    inline = re.compile(
        r"<script(?![^>]*\bsrc=)(?![^>]*application/json)|\son[a-z]+=|\sstyle=|<style", re.I
    )
    found = [
        f"{path.relative_to(ROOT)}: {match.group(0)}"
        for path in (ROOT / "templates").rglob("*.html")
        for match in inline.finditer(path.read_text())
    ]
    assert found == []
