"""The data-plane request rules of DESIGN.md §1, per API family (mistral, llama) and route.

Every refusal names the field. Parameters the local engine cannot honour are refused with a
400 that says so, never dropped.
"""

import json
from dataclasses import dataclass, field
from typing import Any

# What safe_prompt=true puts before the messages, as Mistral's platform does.
SAFE_PROMPT = (
    "Always assist with care, respect, and truth. Respond with utmost utility yet securely. "
    "Avoid harmful, unethical, prejudiced, or negative content. Ensure replies promote "
    "fairness and positivity."
)

ROLES = {"system", "user", "assistant"}
MAX_N = 16
MAX_LOGPROBS = 20

COMMON = {"stream", "max_tokens", "temperature", "top_p", "ignore_eos", "model"}
LLAMA = {
    "n",
    "stop",
    "best_of",
    "logprobs",
    "presence_penalty",
    "use_beam_search",
    "stop_token_ids",
    "skip_special_tokens",
}
ALLOWED = {
    ("mistral", "chat"): COMMON | {"messages", "safe_prompt"},
    ("llama", "chat"): COMMON | LLAMA | {"messages"},
    ("llama", "completions"): COMMON | LLAMA | {"prompt"},
}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status == 400 else self.code
        return {
            "error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        }


@dataclass
class ChatRequest:
    mode: str  # chat | completions
    messages: list[dict[str, str]] = field(default_factory=list)
    prompt: str = ""
    stream: bool = False
    max_tokens: int | None = None  # None: the family default, capped to the context left
    temperature: float = 1.0
    top_p: float = 1.0
    ignore_eos: bool = False
    safe_prompt: bool = False
    n: int = 1
    best_of: int | None = None
    stop: list[str] = field(default_factory=list)
    logprobs: int | None = None
    presence_penalty: float = 0.0
    stop_token_ids: list[int] = field(default_factory=list)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _bool(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ApiError(400, f"'{name}' must be true or false.", param=name)
    return value


def _number(body: dict[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if not _is_number(value):
        raise ApiError(400, f"'{name}' must be a number.", param=name)
    if not lo <= value <= hi:
        raise ApiError(400, f"'{name}' must be between {lo:g} and {hi:g}; got {value}.", param=name)
    return float(value)


def _int(body: dict[str, Any], name: str, lo: int, hi: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not _is_int(value):
        raise ApiError(400, f"'{name}' must be an integer.", param=name)
    if value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise ApiError(400, f"'{name}' must be {bound}; got {value}.", param=name)
    return value


def parse(
    raw: bytes, *, family: str, mode: str, default_ignore_eos: bool, local_engine: bool = True
) -> ChatRequest:
    """Validate a request body. `local_engine` adds the refusals of what llama.cpp cannot do;
    without it, only the seed's rules apply (what any endpoint of the family accepts)."""
    try:
        body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    allowed = ALLOWED[(family, mode)]
    for name in body:
        if name not in allowed:
            raise ApiError(
                400,
                f"Unknown parameter '{name}' for the {family.capitalize()} {mode} API.",
                param=name,
            )

    req = ChatRequest(mode=mode)
    if mode == "chat":
        req.messages = _messages(body.get("messages"))
    else:
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise ApiError(
                400, "'prompt' is required and must be a non-empty string.", param="prompt"
            )
        req.prompt = prompt

    req.stream = _bool(body, "stream", False)
    req.max_tokens = _int(body, "max_tokens", 1)
    req.temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    req.top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if req.top_p == 0.0:
        raise ApiError(400, "'top_p' must be greater than 0.", param="top_p")
    req.ignore_eos = _bool(body, "ignore_eos", default_ignore_eos)
    req.safe_prompt = _bool(body, "safe_prompt", False)
    if "model" in body and not isinstance(body["model"], str):
        raise ApiError(400, "'model' must be a string.", param="model")

    if family == "llama":
        _llama_rules(body, req, local_engine)
    return req


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise ApiError(
            400, "'messages' is required and must be a non-empty list.", param="messages"
        )
    messages = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise ApiError(400, f"'{where}' must be an object with role and content.", param=where)
        role = message.get("role")
        if role not in ROLES:
            raise ApiError(
                400,
                f"'{where}.role' must be one of system, user, assistant; got {role!r}.",
                param=f"{where}.role",
            )
        content = message.get("content")
        if not isinstance(content, str) or not content:
            raise ApiError(
                400,
                f"'{where}.content' is required and must be non-empty text.",
                param=f"{where}.content",
            )
        extra = set(message) - {"role", "content"}
        if extra:
            name = sorted(extra)[0]
            raise ApiError(400, f"Unknown field '{name}' in {where}.", param=f"{where}.{name}")
        messages.append({"role": role, "content": content})
    return messages


def _llama_rules(body: dict[str, Any], req: ChatRequest, local_engine: bool) -> None:
    n = _int(body, "n", 1, MAX_N)
    req.n = n or 1
    req.best_of = _int(body, "best_of", 1, MAX_N)
    if req.best_of is not None and n is not None and req.best_of <= n:
        raise ApiError(
            400, f"'best_of' ({req.best_of}) must be greater than 'n' ({n}).", param="best_of"
        )
    if req.best_of is not None and req.best_of > 1 and req.stream:
        raise ApiError(
            400,
            "'best_of' cannot be used with 'stream': the best completions are "
            "only known once all are generated.",
            param="best_of",
        )
    req.logprobs = _int(body, "logprobs", 0, MAX_LOGPROBS)
    req.presence_penalty = _number(body, "presence_penalty", 0.0, -2.0, 2.0)

    stop = body.get("stop")
    if stop is not None:
        items = [stop] if isinstance(stop, str) else stop
        if not isinstance(items, list) or not all(isinstance(s, str) and s for s in items):
            raise ApiError(
                400, "'stop' must be a non-empty string or a list of them.", param="stop"
            )
        if len(items) > 16:
            raise ApiError(400, "'stop' takes at most 16 sequences.", param="stop")
        req.stop = items

    ids = body.get("stop_token_ids")
    if ids is not None:
        if not isinstance(ids, list) or not all(_is_int(i) and i >= 0 for i in ids):
            raise ApiError(
                400,
                "'stop_token_ids' must be a list of token ids (integers).",
                param="stop_token_ids",
            )
        req.stop_token_ids = ids

    beam = _bool(body, "use_beam_search", False)
    if beam and not ((req.best_of or 1) > 1 and req.temperature == 0):
        raise ApiError(
            400,
            "'use_beam_search' needs 'best_of' greater than 1 and 'temperature' 0.",
            param="use_beam_search",
        )
    if beam and local_engine:
        raise ApiError(
            400,
            "'use_beam_search' is not supported by the local llama.cpp engine; "
            "use best_of with sampling instead.",
            param="use_beam_search",
            code="unsupported_parameter",
        )
    skip = body.get("skip_special_tokens")
    if skip is not None:
        if not isinstance(skip, bool):
            raise ApiError(
                400, "'skip_special_tokens' must be true or false.", param="skip_special_tokens"
            )
        if skip is False and local_engine:
            raise ApiError(
                400,
                "'skip_special_tokens': false is not supported by the local "
                "engine: special tokens are never rendered as text.",
                param="skip_special_tokens",
                code="unsupported_parameter",
            )
