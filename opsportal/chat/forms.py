"""The test-chat form: every parameter of the endpoint's API family, checked with the same rules
the endpoints apply (opsportal.runtime.api), so a bad value is a field error before any call."""

import json
from typing import Any

from django import forms

from opsportal.dataplane.scoring import SCORE, SCORE_PARAMETERS, is_score, score_body
from opsportal.inventory.models import Endpoint
from opsportal.runtime import api

TRISTATE = [("", "Family default"), ("true", "true"), ("false", "false")]

HELP = {
    "max_tokens": "Prompt tokens + max_tokens must fit the model's context length.",
    "temperature": "0 to 2; 0 is greedy. Change temperature or top_p, not both.",
    "top_p": "Above 0, up to 1. Change temperature or top_p, not both.",
    "ignore_eos": "Keep generating after the end-of-sequence token, up to max_tokens.",
    "safe_prompt": "Prepend Mistral's safety system prompt.",
    "n": "How many completions to return.",
    "best_of": "Generate this many and return the n best by log-prob per token. Must be greater "
    "than n; cannot stream, so the answer arrives at once.",
    "logprobs": "Top-k log-probabilities per token, plus the sampled token's.",
    "presence_penalty": "-2.0 to 2.0; positive values push toward new topics.",
    "stop": "One stop sequence per line; the stop text is not included in the output.",
    "stop_token_ids": "Token ids that end generation, comma-separated.",
    "use_beam_search": "Needs best_of greater than 1 and temperature 0.",
    "skip_special_tokens": "Leave special tokens out of the text.",
}

FIELD_OF_PARAM = {"messages": "message", "prompt": "message"}


class ChatForm(forms.Form):
    mode = forms.ChoiceField(
        choices=[("chat", "Chat"), ("completions", "Completions")], initial="chat"
    )
    route_style = forms.ChoiceField(
        choices=[("native", "Native (/v1/...)"), ("inference", "Azure AI Model Inference")],
        initial="native",
        label="Route",
    )
    system_prompt = forms.CharField(
        required=False, widget=forms.Textarea(attrs={"rows": 2}), max_length=20_000
    )
    message = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}),
        max_length=50_000,
        error_messages={"required": "Write a message to send."},
    )
    max_tokens = forms.IntegerField(required=False, min_value=1)
    temperature = forms.FloatField(required=False)
    top_p = forms.FloatField(required=False)
    ignore_eos = forms.ChoiceField(required=False, choices=TRISTATE)
    safe_prompt = forms.BooleanField(required=False)
    n = forms.IntegerField(required=False)
    best_of = forms.IntegerField(required=False)
    logprobs = forms.IntegerField(required=False)
    presence_penalty = forms.FloatField(required=False)
    stop = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))
    stop_token_ids = forms.CharField(required=False)
    use_beam_search = forms.BooleanField(required=False)
    skip_special_tokens = forms.ChoiceField(required=False, choices=TRISTATE)

    MISTRAL_ONLY = ("safe_prompt",)
    LLAMA_ONLY = (
        "n",
        "best_of",
        "logprobs",
        "presence_penalty",
        "stop",
        "stop_token_ids",
        "use_beam_search",
        "skip_special_tokens",
    )

    def __init__(self, *args: Any, endpoint: Endpoint, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.endpoint = endpoint
        offering = endpoint.offering
        self.family = offering.api_family if offering else "mistral"
        drop = self.LLAMA_ONLY if self.family == "mistral" else self.MISTRAL_ONLY
        for name in drop:
            del self.fields[name]
        if not offering or "/v1/completions" not in offering.routes:
            self.fields["mode"].choices = [("chat", "Chat")]
        for name, text in HELP.items():
            if name in self.fields:
                self.fields[name].help_text = text
        if offering:
            self.fields["max_tokens"].help_text += f" Default {offering.default_max_tokens}."
            self.fields[
                "ignore_eos"
            ].help_text += f" Default {'true' if offering.default_ignore_eos else 'false'}."
        self.score = is_score(endpoint.scoring_uri)
        if self.score:
            # A managed online endpoint: one route, the model's scoring contract, and only the
            # parameters that contract takes.
            self.fields["mode"].choices = [("chat", "Chat")]
            self.fields["route_style"].choices = [("score", f"{SCORE} (the model's contract)")]
            self.fields["route_style"].initial = "score"
            for name in [n for n in self.fields if n in HELP and n not in SCORE_PARAMETERS]:
                del self.fields[name]

    @property
    def parameter_fields(self) -> list[forms.BoundField]:
        return [
            self[name]
            for name in self.fields
            if name not in ("mode", "route_style", "system_prompt", "message")
        ]

    def parameters(self) -> dict[str, Any]:
        """The generation parameters that were set, in the API's own types."""
        data = self.cleaned_data
        params: dict[str, Any] = {}
        for name in (
            "max_tokens",
            "temperature",
            "top_p",
            "n",
            "best_of",
            "logprobs",
            "presence_penalty",
        ):
            if data.get(name) is not None:
                params[name] = data[name]
        for name in ("ignore_eos", "skip_special_tokens"):
            if data.get(name):
                params[name] = data[name] == "true"
        for name in ("safe_prompt", "use_beam_search"):
            if data.get(name):
                params[name] = True
        if data.get("stop"):
            params["stop"] = [line for line in data["stop"].splitlines() if line]
        return params

    def clean_stop_token_ids(self) -> list[int]:
        raw = self.cleaned_data.get("stop_token_ids", "")
        try:
            return [int(part) for part in raw.replace(" ", "").split(",") if part]
        except ValueError:
            raise forms.ValidationError("Token ids are whole numbers, comma-separated.") from None

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if self.errors:
            return data
        body = self.body(history=[])
        try:
            api.parse(
                _json(body),
                family=self.family,
                mode=data["mode"],
                default_ignore_eos=bool(
                    self.endpoint.offering and self.endpoint.offering.default_ignore_eos
                ),
                local_engine=False,
            )
        except api.ApiError as err:
            param = (err.param or "").split(".")[0].split("[")[0]
            field = FIELD_OF_PARAM.get(param, param)
            self.add_error(field if field in self.fields else None, err.message)
        return data

    def route(self) -> str:
        if self.score:
            return SCORE
        mode, native = self.cleaned_data["mode"], self.cleaned_data["route_style"] == "native"
        path = "/chat/completions" if mode == "chat" else "/completions"
        return f"/v1{path}" if native else path

    def body(self, *, history: list[dict[str, str]]) -> dict[str, Any]:
        """The exact request body: conversation so far, the new message, the parameters set."""
        data = self.cleaned_data
        body: dict[str, Any] = {}
        if data["mode"] == "chat":
            messages = []
            if data.get("system_prompt"):
                messages.append({"role": "system", "content": data["system_prompt"]})
            messages += history
            messages.append({"role": "user", "content": data["message"]})
            body["messages"] = messages
        else:
            body["prompt"] = data["message"]
        body.update(self.parameters())
        if data.get("stop_token_ids"):
            body["stop_token_ids"] = data["stop_token_ids"]
        # best_of cannot stream: such turns arrive whole.
        body["stream"] = not (body.get("best_of") or 1) > 1
        return body

    def request_body(self, *, history: list[dict[str, str]]) -> dict[str, Any]:
        """What is sent: the body above, or for a /score endpoint that body in its contract."""
        body = self.body(history=history)
        return score_body(body) if self.score else body


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()
