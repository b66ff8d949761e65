"""How a client calls an endpoint's data plane, by the kind of scoring URI it has.

Serverless endpoints (and every local endpoint) serve the seed's routes under their URI:
`{uri}/v1/chat/completions` and the rest. A managed online endpoint on Azure has one scoring
route, `.../score`, and speaks the model's own scoring contract, which for the catalog's Llama
chat models is `{"input_data": {"input_string": [messages], "parameters": {...}}}` answered with
`{"output": "..."}` (text generation: a list of prompts, answered `[{"0": "..."}]`). That shape
is read from Azure ML's catalog samples, not from a published API reference (UNVERIFIED); it has
no streaming, no usage block and no finish_reason.
"""

import json
from typing import Any

SCORE = "/score"
# The chat parameters a /score request can carry, under the Hugging Face names it uses.
SCORE_PARAMETERS = ("max_tokens", "temperature", "top_p")
SCORE_DEFAULT_MAX_NEW_TOKENS = 256


def is_score(scoring_uri: str) -> bool:
    return scoring_uri.rstrip("/").endswith(SCORE)


def endpoint_url(scoring_uri: str, route: str) -> str:
    """Where a request for `route` goes: the scoring URI itself for /score endpoints."""
    if is_score(scoring_uri):
        return scoring_uri
    return scoring_uri.rstrip("/") + route


def score_body(chat: dict[str, Any]) -> dict[str, Any]:
    """A chat-completions request body as the /score contract takes it."""
    parameters: dict[str, Any] = {
        "max_new_tokens": chat.get("max_tokens") or SCORE_DEFAULT_MAX_NEW_TOKENS
    }
    sampled = chat.get("temperature", 1.0) != 0
    parameters["do_sample"] = sampled
    if sampled:
        parameters["temperature"] = chat.get("temperature", 1.0)
        parameters["top_p"] = chat.get("top_p", 1.0)
    return {"input_data": {"input_string": chat["messages"], "parameters": parameters}}


def score_text(answer: Any) -> str:
    """The generated text of a /score answer (either of the catalog's two shapes)."""
    if isinstance(answer, dict) and isinstance(answer.get("output"), str):
        return answer["output"]
    if isinstance(answer, list) and answer and isinstance(answer[0], dict):
        first = answer[0].get("0")
        if isinstance(first, str):
            return first
    raise ValueError("not a /score answer: " + json.dumps(answer)[:200])


def score_as_chat(answer: Any, *, model: str = "") -> dict[str, Any]:
    """A /score answer in the chat-completion shape the console reads everywhere else."""
    return {
        "object": "chat.completion",
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": score_text(answer)},
                "finish_reason": None,
            }
        ],
        "usage": None,
    }
