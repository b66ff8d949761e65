"""The local runtime with the real bundled model, called by real clients over HTTP."""

import json
import threading
import time

import httpx
import openai
import pytest

from opsportal.inventory.models import Endpoint, Offering
from opsportal.providers import ProviderError
from opsportal.runtime.models import UsageRecord
from tests.runtime_support import SMOL, start_runtime


@pytest.fixture
def rt(transactional_db, catalog, settings):
    running, stop = start_runtime(settings)
    yield running
    stop()


@pytest.fixture
def smol(rt):
    uri, key = rt.deploy("smol")
    return uri, key


def post(uri: str, key: str | None, path: str, body: dict, **kw) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{uri}{path}", json=body, headers=headers, timeout=60, **kw)


HELLO = [{"role": "user", "content": "Hello"}]


def test_it_answers_the_openai_sdk_in_the_seed_schema(smol):
    uri, key = smol
    client = openai.OpenAI(base_url=f"{uri}/v1", api_key=key)
    reply = client.chat.completions.create(model="anything", messages=HELLO)
    assert reply.object == "chat.completion"
    assert reply.model == "SmolLM2-135M-Instruct"
    assert reply.id.startswith("chatcmpl-")
    assert abs(reply.created - time.time()) < 120
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    # Llama family defaults: max_tokens 16 and ignore_eos true, so exactly 16 tokens, "length".
    assert reply.usage.completion_tokens == 16
    assert choice.finish_reason == "length"
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 16


def test_it_streams_to_the_openai_sdk(smol):
    uri, key = smol
    client = openai.OpenAI(base_url=f"{uri}/v1", api_key=key)
    chunks = list(
        client.chat.completions.create(model="x", messages=HELLO, stream=True, max_tokens=8)
    )
    assert len(chunks) >= 8
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert chunks[-1].choices[0].finish_reason == "length"
    assert "".join(c.choices[0].delta.content or "" for c in chunks)


def test_it_streams_data_only_events_ending_with_done(smol):
    uri, key = smol
    with httpx.stream(
        "POST",
        f"{uri}/chat/completions",
        timeout=60,
        headers={"Authorization": f"Bearer {key}"},
        json={"messages": HELLO, "stream": True, "max_tokens": 6},
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events)
    assert events[-1] == "data: [DONE]"
    payloads = [json.loads(line[6:]) for line in events[:-1]]
    assert {p["object"] for p in payloads} == {"chat.completion.chunk"}
    assert payloads[-1]["usage"]["completion_tokens"] == 6


def test_it_serves_completions_with_logprobs_for_the_llama_family(smol):
    uri, key = smol
    client = openai.OpenAI(base_url=f"{uri}/v1", api_key=key)
    reply = client.completions.create(
        model="x", prompt="The capital of France is", max_tokens=5, logprobs=2, temperature=0
    )
    assert reply.object == "text_completion"
    raw = post(
        uri,
        key,
        "/completions",
        {"prompt": "The capital of France is", "max_tokens": 5, "logprobs": 2, "temperature": 0},
    ).json()
    logprobs = raw["choices"][0]["logprobs"]
    assert set(logprobs) == {"text_offsets", "token_logprobs", "tokens", "top_logprobs"}
    assert len(logprobs["tokens"]) == 5
    assert "".join(logprobs["tokens"]) == raw["choices"][0]["text"]
    assert logprobs["text_offsets"][0] == 0
    assert all(lp <= 0 for lp in logprobs["token_logprobs"])
    # top-2 alternatives plus the sampled token; greedy, so the sampled one is the best.
    for token, top in zip(logprobs["tokens"], logprobs["top_logprobs"], strict=True):
        assert 2 <= len(top) <= 3
        assert top[token] == max(top.values())
    assert raw["choices"][0]["text"] == reply.choices[0].text  # greedy: same both times


def test_it_keeps_stop_text_out_of_the_output(smol):
    uri, key = smol
    body = {"prompt": "1, 2, 3, 4, 5,", "max_tokens": 12, "temperature": 0}
    free = post(uri, key, "/v1/completions", body).json()["choices"][0]
    text = free["text"]
    assert len(text) > 4
    stop = text[2:4]
    cut = post(uri, key, "/v1/completions", {**body, "stop": [stop]}).json()["choices"][0]
    assert cut["text"] == text[: text.index(stop)]
    assert cut["finish_reason"] == "stop"


def test_it_stops_at_end_of_generation_only_without_ignore_eos(smol):
    uri, key = smol
    body = {
        "messages": [{"role": "user", "content": "Say OK."}],
        "max_tokens": 300,
        "temperature": 0,
    }
    stopped = post(uri, key, "/v1/chat/completions", {**body, "ignore_eos": False}).json()
    assert stopped["choices"][0]["finish_reason"] == "stop"
    assert stopped["usage"]["completion_tokens"] < 300
    forced = post(
        uri, key, "/v1/chat/completions", {**body, "max_tokens": 40, "ignore_eos": True}
    ).json()
    assert forced["usage"]["completion_tokens"] == 40


def test_it_gives_n_choices_and_picks_best_of(smol):
    uri, key = smol
    many = post(
        uri, key, "/v1/completions", {"prompt": "Once upon a time", "n": 3, "max_tokens": 4}
    ).json()
    assert [c["index"] for c in many["choices"]] == [0, 1, 2]
    assert many["usage"]["completion_tokens"] == 12
    best = post(
        uri,
        key,
        "/v1/completions",
        {"prompt": "Once upon a time", "n": 1, "best_of": 3, "max_tokens": 4},
    ).json()
    assert len(best["choices"]) == 1
    assert best["usage"]["completion_tokens"] == 12  # all three candidates were generated


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": HELLO, "temperature": 2.5}, "temperature"),
        ({"messages": HELLO, "presence_penalty": -3}, "presence_penalty"),
        ({"messages": HELLO, "n": 2, "best_of": 2}, "best_of"),
        ({"messages": HELLO, "best_of": 3, "stream": True}, "best_of"),
        ({"messages": HELLO, "use_beam_search": True, "best_of": 1}, "use_beam_search"),
        (
            {"messages": HELLO, "use_beam_search": True, "best_of": 3, "temperature": 0.5},
            "use_beam_search",
        ),
        ({"messages": [{"role": "user", "content": ""}]}, "messages[0].content"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"messages": []}, "messages"),
        ({"messages": HELLO, "max_tokens": 9000}, "max_tokens"),
        ({"messages": HELLO, "max_tokens": 0}, "max_tokens"),
        ({"messages": HELLO, "frequency_penalty": 1}, "frequency_penalty"),
        ({"messages": HELLO, "stop": [1, 2]}, "stop"),
        ({"messages": HELLO, "stop_token_ids": [10**9]}, "stop_token_ids"),
        ({"messages": HELLO, "logprobs": True}, "logprobs"),
    ],
)
def test_it_refuses_bad_parameters_naming_them(smol, body, param):
    uri, key = smol
    response = post(uri, key, "/v1/chat/completions", body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert error["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"use_beam_search": True, "best_of": 3, "temperature": 0}, "use_beam_search"),
        ({"skip_special_tokens": False}, "skip_special_tokens"),
    ],
)
def test_it_refuses_what_the_engine_cannot_honour(smol, body, param):
    uri, key = smol
    response = post(uri, key, "/v1/chat/completions", {"messages": HELLO, **body})
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, "unsupported_parameter")
    assert "not supported" in error["message"]


def test_it_checks_keys_and_regenerates_one_without_touching_the_other(rt, smol):
    uri, _ = smol
    keys = rt.provider.keys_get(name="smol")
    body = {"messages": HELLO, "max_tokens": 1}
    assert post(uri, keys.primary, "/v1/chat/completions", body).status_code == 200
    assert post(uri, keys.secondary, "/v1/chat/completions", body).status_code == 200
    for bad in [None, "wrong-key"]:
        response = post(uri, bad, "/v1/chat/completions", body)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"
    fresh = rt.provider.key_regenerate(name="smol", slot="secondary")
    assert fresh.primary == keys.primary and fresh.secondary != keys.secondary
    assert post(uri, keys.secondary, "/v1/chat/completions", body).status_code == 401
    assert post(uri, fresh.secondary, "/v1/chat/completions", body).status_code == 200
    assert post(uri, keys.primary, "/v1/chat/completions", body).status_code == 200
    assert keys.primary not in repr(keys)


def test_it_limits_requests_per_minute_with_retry_after(rt, smol):
    uri, key = smol
    Offering.objects.filter(slug=SMOL).update(requests_per_minute=2)
    body = {"messages": HELLO, "max_tokens": 1}
    assert post(uri, key, "/v1/chat/completions", body).status_code == 200
    assert post(uri, key, "/v1/chat/completions", body).status_code == 200
    refused = post(uri, key, "/v1/chat/completions", body)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"


def test_it_limits_tokens_per_minute(rt, smol):
    uri, key = smol
    Offering.objects.filter(slug=SMOL).update(tokens_per_minute=50)
    body = {"messages": HELLO, "max_tokens": 30}
    assert post(uri, key, "/v1/chat/completions", body).status_code == 200  # ~60 tokens used
    refused = post(uri, key, "/v1/chat/completions", body)
    assert refused.status_code == 429 and "Retry-After" in refused.headers


def test_it_meters_every_request(rt, smol):
    uri, key = smol
    post(uri, key, "/v1/chat/completions", {"messages": HELLO, "max_tokens": 3})
    with httpx.stream(
        "POST",
        f"{uri}/v1/chat/completions",
        timeout=60,
        headers={"Authorization": f"Bearer {key}"},
        json={"messages": HELLO, "max_tokens": 4, "stream": True},
    ) as r:
        list(r.iter_lines())
    post(uri, "nope", "/v1/chat/completions", {"messages": HELLO})
    post(uri, key, "/v1/chat/completions", {"messages": HELLO, "temperature": 9})
    deadline = time.monotonic() + 10
    while UsageRecord.objects.count() < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    rows = list(UsageRecord.objects.order_by("created_at", "pk"))
    assert [r.status_code for r in rows] == [200, 200, 401, 400]
    ok, streamed = rows[0], rows[1]
    assert (ok.completion_tokens, ok.key_slot, ok.stream) == (3, "primary", False)
    assert ok.prompt_tokens > 0 and ok.ttft_ms is not None and ok.duration_ms >= ok.ttft_ms
    assert (streamed.completion_tokens, streamed.stream) == (4, True)
    assert rows[2].key_slot == ""


def test_it_serves_both_route_styles_and_its_openapi_document(smol):
    uri, key = smol
    for path in ["/v1/chat/completions", "/chat/completions"]:
        assert post(uri, key, path, {"messages": HELLO, "max_tokens": 1}).status_code == 200
    for path in ["/v1/completions", "/completions"]:
        assert post(uri, key, path, {"prompt": "Hi", "max_tokens": 1}).status_code == 200
    doc = httpx.get(f"{uri}/swagger.json").json()
    assert set(doc["paths"]) == {
        "/v1/chat/completions",
        "/chat/completions",
        "/v1/completions",
        "/completions",
    }
    props = doc["paths"]["/v1/completions"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ]["properties"]
    assert props["max_tokens"]["default"] == 16 and props["ignore_eos"]["default"] is True
    assert httpx.get(f"{rt_url(uri)}/endpoints/ghost/swagger.json").status_code == 404


def rt_url(uri: str) -> str:
    return uri.split("/endpoints/")[0]


def test_it_speaks_the_mistral_family_api(rt):
    from django.core.management import call_command

    offering = Offering.objects.get(slug=SMOL)
    call_command(
        "register_local_model",
        offering.local_model_path,
        name="Smol as Mistral",
        family="mistral",
        context_length=2048,
        slug="smol-mistral",
        verbosity=0,
    )
    uri, key = rt.deploy("smol-mistral-ep", offering="smol-mistral")
    # Completions are not part of the Mistral API; n is not a Mistral parameter.
    assert post(uri, key, "/v1/completions", {"prompt": "Hi"}).status_code == 404
    refused = post(uri, key, "/v1/chat/completions", {"messages": HELLO, "n": 2})
    assert (refused.status_code, refused.json()["error"]["param"]) == (400, "n")
    # No max_tokens: the default (8192) is capped to the context left; ignore_eos defaults off.
    reply = post(
        uri,
        key,
        "/v1/chat/completions",
        {
            "messages": [{"role": "user", "content": "Say OK."}],
            "temperature": 0,
            "safe_prompt": True,
        },
    ).json()
    assert reply["choices"][0]["finish_reason"] == "stop"
    too_long = post(uri, key, "/v1/chat/completions", {"messages": HELLO, "max_tokens": 2048})
    assert too_long.json()["error"]["param"] == "max_tokens"


def test_it_queues_concurrent_requests_in_arrival_order(rt, smol):
    uri, key = smol
    finished: list[int] = []
    lock = threading.Lock()
    clients = [httpx.Client(timeout=60) for _ in range(4)]

    def call(i: int) -> None:
        clients[i].post(
            f"{uri}/v1/completions",
            json={"prompt": f"Story {i}:", "max_tokens": 32},
            headers={"Authorization": f"Bearer {key}"},
        )
        with lock:
            finished.append(i)

    def arrived() -> int:
        """Requests the replica has taken in so far: queued or running, plus answered."""
        with lock:
            done = len(finished)
        return done + sum(slot.waiting for slot in list(rt.runtime.slots.values()))

    threads = []
    for i in range(4):
        # Arrival order 0, 1, 2, 3: each request is queued at the replica before the next is
        # sent (on a busy machine a thread's start says nothing about when its request lands).
        before = arrived()
        threads.append(threading.Thread(target=call, args=(i,)))
        threads[-1].start()
        deadline = time.monotonic() + 30
        while arrived() <= before and i not in finished and time.monotonic() < deadline:
            time.sleep(0.005)
    for t in threads:
        t.join(timeout=60)
    for c in clients:
        c.close()
    assert finished == [0, 1, 2, 3]


def test_it_stops_generating_when_the_client_goes_away(rt, smol):
    uri, key = smol
    with httpx.stream(
        "POST",
        f"{uri}/v1/completions",
        timeout=60,
        headers={"Authorization": f"Bearer {key}"},
        json={"prompt": "Go on forever:", "max_tokens": 4000, "stream": True},
    ) as r:
        lines = r.iter_lines()
        next(lines)
    started = time.monotonic()
    quick = post(uri, key, "/v1/completions", {"prompt": "Hi", "max_tokens": 1})
    assert quick.status_code == 200
    # 4000 tokens would take ~40 s; the replica was freed as soon as the stream closed.
    assert time.monotonic() - started < 20
    deadline = time.monotonic() + 10
    while not UsageRecord.objects.filter(status_code=499).exists():
        assert time.monotonic() < deadline, "no metering row for the abandoned stream"
        time.sleep(0.1)
    assert UsageRecord.objects.get(status_code=499).completion_tokens < 4000


def test_it_deploys_managed_replicas_within_the_core_quota(rt):
    provider = rt.provider
    info = provider.endpoint_create(name="smol-managed", kind="managed", offering_slug=SMOL)
    assert info.provisioning_state == "Creating"
    usage = provider.core_usage()[0]
    with pytest.raises(ProviderError) as too_big:
        provider.deployment_create(
            endpoint_name="smol-managed",
            name="huge",
            instance_type="Local_1T_2K",
            instance_count=usage.limit + 1,
            traffic_percent=100,
        )
    assert too_big.value.code == "QuotaExceeded"
    provider.deployment_create(
        endpoint_name="smol-managed",
        name="blue",
        instance_type="Local_1T_2K",
        instance_count=1,
        traffic_percent=100,
    )
    assert provider.core_usage()[0].used == usage.used + 1
    rt.wait_state("smol-managed", "Succeeded")
    deadline = time.monotonic() + 30
    while ("replica",) not in {k[:1] for k in rt.runtime.slots} and time.monotonic() < deadline:
        time.sleep(0.1)
    key = provider.keys_get(name="smol-managed").primary
    reply = post(
        info.scoring_uri, key, "/v1/chat/completions", {"messages": HELLO, "max_tokens": 2}
    )
    assert reply.status_code == 200, reply.text
    assert provider.endpoint_get("smol-managed").deployments[0].state == "Succeeded"


def test_it_refuses_what_azure_would_refuse(rt, smol):
    provider = rt.provider
    with pytest.raises(ProviderError) as second:
        provider.endpoint_create(name="smol-two", kind="serverless", offering_slug=SMOL)
    assert second.value.code == "Conflict" and "smol" in second.value.message
    with pytest.raises(ProviderError) as azure_only:
        provider.endpoint_create(
            name="mistral-here", kind="serverless", offering_slug="mistral-small"
        )
    assert azure_only.value.code == "ModelNotAvailableLocally"
    with pytest.raises(ProviderError) as bad_name:
        provider.endpoint_create(name="9-bad_name", kind="managed", offering_slug=SMOL)
    assert bad_name.value.code == "InvalidName"


def test_it_needs_the_licence_accepted_before_a_serverless_endpoint(rt):
    with pytest.raises(ProviderError) as caught:
        rt.provider.endpoint_create(name="smol-early", kind="serverless", offering_slug=SMOL)
    assert caught.value.code == "SubscriptionRequired"


def test_it_reports_a_model_that_cannot_load_as_failed(rt):
    Offering.objects.create(
        slug="missing-model",
        family="Local",
        model_name="Missing",
        publisher="x",
        tier="open",
        api_family="llama",
        serverless=True,
        serverless_regions=["local"],
        managed_compute=True,
        routes=["/v1/completions"],
        default_max_tokens=16,
        default_ignore_eos=True,
        provider_scope="local",
        local_model_path="/nowhere/model.gguf",
    )
    rt.provider.subscription_create(offering_slug="missing-model")
    rt.provider.endpoint_create(name="broken", kind="serverless", offering_slug="missing-model")
    ep = rt.wait_state("broken", "Failed")
    assert "Model file not found: /nowhere/model.gguf" in ep.status_message


def test_it_deletes_an_endpoint_and_refuses_it_at_once(rt, smol):
    uri, key = smol
    rt.provider.endpoint_delete(name="smol")
    assert post(uri, key, "/v1/chat/completions", {"messages": HELLO}).status_code in (401, 404)
    rt.wait_state("smol", "deleted")
    assert post(uri, key, "/v1/chat/completions", {"messages": HELLO}).status_code == 404
    assert not Endpoint.objects.filter(name="smol", deleted_at__isnull=True).exists()


def _engine_of(rt, name: str):
    """The engine serving a serverless endpoint (the offering's shared one)."""
    route = rt.runtime.routes[name]
    (key,) = route.deployments[0][1]
    return rt.runtime.slots[key]


def _unique_tail(text: str, width: int = 4) -> str:
    """A piece near the end of `text` that occurs nowhere else in it."""
    for start in range(len(text) - width - 2, 0, -1):
        piece = text[start : start + width]
        if piece.strip() and text.count(piece) == 1:
            return piece
    raise AssertionError(f"no unique piece in {text!r}")


def test_it_batches_concurrent_requests_each_with_its_own_parameters(rt, smol):
    uri, key = smol
    counting = {"prompt": "1, 2, 3, 4, 5,", "max_tokens": 40, "temperature": 0}
    capital = {
        "prompt": "The capital of France is",
        "max_tokens": 6,
        "logprobs": 2,
        "temperature": 0,
    }
    free = post(uri, key, "/v1/completions", counting).json()["choices"][0]["text"]
    alone = post(uri, key, "/v1/completions", capital).json()["choices"][0]
    stop = _unique_tail(free)
    slot = _engine_of(rt, "smol")
    shared_before = slot.engine.stats.shared_steps

    replies: dict[str, dict] = {}

    def call(name: str, body: dict) -> None:
        replies[name] = post(uri, key, "/v1/completions", body).json()

    first = threading.Thread(target=call, args=("stop", {**counting, "stop": [stop]}))
    first.start()
    deadline = time.monotonic() + 30
    while slot.waiting < 1 and "stop" not in replies and time.monotonic() < deadline:
        time.sleep(0.002)
    second = threading.Thread(target=call, args=("logprobs", capital))
    second.start()
    first.join(timeout=60)
    second.join(timeout=60)

    # They were decoded side by side: some llama_decode calls carried both sequences.
    assert slot.engine.stats.shared_steps > shared_before
    cut = replies["stop"]["choices"][0]
    assert cut["finish_reason"] == "stop"
    assert cut["text"] == free[: free.index(stop)] and stop not in cut["text"]
    assert replies["stop"]["usage"]["completion_tokens"] < 40
    scored = replies["logprobs"]["choices"][0]
    assert scored["text"] == alone["text"] and scored["finish_reason"] == "length"
    assert replies["logprobs"]["usage"]["completion_tokens"] == 6
    logprobs = scored["logprobs"]
    assert logprobs["tokens"] == alone["logprobs"]["tokens"]
    assert "".join(logprobs["tokens"]) == scored["text"]
    for token, top in zip(logprobs["tokens"], logprobs["top_logprobs"], strict=True):
        assert 2 <= len(top) <= 3 and top[token] == max(top.values())
    assert cut["logprobs"] is None


def test_it_frees_a_slot_as_soon_as_its_client_goes_away(rt, settings):
    settings.OPSPORTAL_RUNTIME_SERVERLESS_SLOTS = 1
    uri, key = rt.deploy("smol-one-slot")
    slot = _engine_of(rt, "smol-one-slot")
    assert slot.engine.slots == 1
    with httpx.stream(
        "POST",
        f"{uri}/v1/completions",
        timeout=60,
        headers={"Authorization": f"Bearer {key}"},
        json={"prompt": "Go on forever:", "max_tokens": 4000, "stream": True},
    ) as r:
        next(r.iter_lines())
    # The only slot was the abandoned stream's: this one gets it once that stream is dropped.
    quick = post(uri, key, "/v1/completions", {"prompt": "Hi", "max_tokens": 1})
    assert quick.status_code == 200
    assert slot.waiting == 0
    steps = slot.engine.stats.steps
    time.sleep(0.5)
    assert slot.engine.stats.steps == steps, "the abandoned sequence is still being decoded"
