"""Managed online endpoints are called in their /score contract, everywhere the console calls
an endpoint: the smoke test, test chat, the exported curl."""

import pytest

from opsportal.chat.forms import ChatForm
from opsportal.chat.services import curl_command
from opsportal.dataplane.scoring import endpoint_url, score_as_chat, score_body, score_text
from tests.factories import EndpointFactory, offering

SCORE_URI = "https://ep-llama.eastus2.inference.ml.azure.com/score"


def test_routes_go_under_a_serverless_uri_and_not_under_score():
    assert endpoint_url("https://x.models.ai.azure.com", "/v1/chat/completions") == (
        "https://x.models.ai.azure.com/v1/chat/completions"
    )
    assert endpoint_url(SCORE_URI, "/v1/chat/completions") == SCORE_URI


def test_a_chat_body_in_the_score_contract_and_back():
    chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 12, "temperature": 0}
    assert score_body(chat) == {
        "input_data": {
            "input_string": [{"role": "user", "content": "Hi"}],
            "parameters": {"max_new_tokens": 12, "do_sample": False},
        }
    }
    sampled = score_body({**chat, "temperature": 0.7, "top_p": 0.9})["input_data"]["parameters"]
    assert sampled == {"max_new_tokens": 12, "do_sample": True, "temperature": 0.7, "top_p": 0.9}
    assert score_text({"output": "Hello"}) == "Hello"
    assert score_text([{"0": "Once upon"}]) == "Once upon"
    answer = score_as_chat({"output": "Hello"})
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": "Hello"}
    with pytest.raises(ValueError):
        score_text({"choices": []})


def test_test_chat_on_a_managed_azure_endpoint_speaks_its_contract(world):
    endpoint = EndpointFactory(
        workspace=world.ws_a,
        name="ep-llama",
        kind="managed",
        content_safety=False,
        scoring_uri=SCORE_URI,
        offering=offering("meta-llama-3-8b-instruct"),
    )
    form = ChatForm(
        {"mode": "chat", "route_style": "score", "message": "Hi", "max_tokens": 8},
        endpoint=endpoint,
    )
    assert form.is_valid(), form.errors
    assert "n" not in form.fields and "logprobs" not in form.fields  # not in the contract
    assert form.route() == "/score"
    body = form.request_body(history=[])
    assert body["input_data"]["input_string"][-1] == {"role": "user", "content": "Hi"}
    assert body["input_data"]["parameters"]["max_new_tokens"] == 8
    curl = curl_command(scoring_uri=SCORE_URI, route="/score", body=body)
    assert f"{SCORE_URI} -d" in curl and "/score/v1" not in curl
