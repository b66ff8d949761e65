"""Each local endpoint's own OpenAPI document, built from its API family's rules."""

from typing import Any

MESSAGE = {
    "type": "object",
    "required": ["role", "content"],
    "properties": {
        "role": {"type": "string", "enum": ["system", "user", "assistant"]},
        "content": {"type": "string", "minLength": 1},
    },
}


def _params(view: Any) -> dict[str, Any]:
    common: dict[str, Any] = {
        "stream": {
            "type": "boolean",
            "default": False,
            "description": "Data-only server-sent events, ending with data: [DONE].",
        },
        "max_tokens": {
            "type": "integer",
            "minimum": 1,
            "default": view.default_max_tokens,
            "description": "Prompt tokens + max_tokens must fit the context length.",
        },
        "temperature": {
            "type": "number",
            "minimum": 0,
            "maximum": 2,
            "default": 1,
            "description": "0 is greedy. Change temperature or top_p, not both.",
        },
        "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 1},
        "ignore_eos": {"type": "boolean", "default": view.default_ignore_eos},
    }
    if view.family == "mistral":
        common["safe_prompt"] = {
            "type": "boolean",
            "default": False,
            "description": "Prepend a safety system prompt.",
        }
        return common
    common.update(
        {
            "n": {"type": "integer", "minimum": 1, "default": 1},
            "stop": {
                "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
                "description": "Not included in the output.",
            },
            "best_of": {
                "type": "integer",
                "minimum": 1,
                "default": 1,
                "description": "Must be greater than n when both are given; cannot stream.",
            },
            "logprobs": {"type": "integer", "minimum": 0, "maximum": 20},
            "presence_penalty": {"type": "number", "minimum": -2, "maximum": 2},
            "use_beam_search": {
                "type": "boolean",
                "default": False,
                "description": "Needs best_of > 1 and temperature 0. Not supported "
                "by the local engine (400).",
            },
            "stop_token_ids": {"type": "array", "items": {"type": "integer"}},
            "skip_special_tokens": {
                "type": "boolean",
                "description": "Only true is supported locally.",
            },
        }
    )
    return common


def openapi_document(view: Any) -> dict[str, Any]:
    params = _params(view)
    paths: dict[str, Any] = {}
    for route in view.routes:
        chat = "chat" in route
        body = {
            "type": "object",
            "additionalProperties": False,
            "required": ["messages"] if chat else ["prompt"],
            "properties": {
                **params,
                ("messages" if chat else "prompt"): {
                    "type": "array",
                    "minItems": 1,
                    "items": MESSAGE,
                }
                if chat
                else {"type": "string", "minLength": 1},
                "model": {
                    "type": "string",
                    "description": "Ignored; echoed as the deployed model.",
                },
            },
        }
        paths[route] = {
            "post": {
                "summary": ("Chat completion" if chat else "Text completion") + f" ({view.model})",
                "security": [{"bearer": []}],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": body}},
                },
                "responses": {
                    "200": {"description": "chat.completion / text_completion, or an event stream"},
                    "400": {"description": "A parameter is invalid; error.param names it."},
                    "401": {"description": "Missing or invalid key."},
                    "429": {"description": "Rate limit reached; see Retry-After."},
                },
            }
        }
    return {
        "openapi": "3.0.3",
        "info": {"title": f"{view.name} ({view.model})", "version": "1"},
        "servers": [{"url": "."}],
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": paths,
    }
