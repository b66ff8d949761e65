"""Test-chat turns: the exact request each one sent, what came back, and how fast."""

from django.conf import settings
from django.db import models


class ChatTurn(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Waiting"
        DONE = "done", "Done"
        STOPPED = "stopped", "Stopped"
        ERROR = "error", "Error"

    class Mode(models.TextChoices):
        CHAT = "chat", "Chat"
        COMPLETIONS = "completions", "Completions"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="chat_turns"
    )
    endpoint = models.ForeignKey(
        "inventory.Endpoint", on_delete=models.CASCADE, related_name="chat_turns"
    )
    # Side-by-side comparisons are kept apart from the endpoint's conversation.
    compare_group = models.UUIDField(null=True, blank=True, db_index=True)
    mode = models.CharField(max_length=12, choices=Mode.choices, default=Mode.CHAT)
    route = models.CharField(max_length=40)
    prompt = models.TextField()
    system_prompt = models.TextField(blank=True)
    request_body = models.JSONField(help_text="Exactly what was sent (never the key).")
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.PENDING)
    answers = models.JSONField(default=list, blank=True)
    finish_reasons = models.JSONField(default=list, blank=True)
    logprobs = models.JSONField(null=True, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    ttft_ms = models.FloatField(null=True, blank=True)
    tokens_per_s = models.FloatField(null=True, blank=True)
    duration_ms = models.FloatField(null=True, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "pk"]
        indexes = [models.Index(fields=["user", "endpoint", "created_at"])]

    def __str__(self) -> str:
        return f"turn {self.pk} on {self.endpoint_id}"

    @property
    def total_tokens(self) -> int | None:
        if self.prompt_tokens is None or self.completion_tokens is None:
            return None
        return self.prompt_tokens + self.completion_tokens

    @property
    def logprob_rows(self) -> list[tuple[str, float, list[tuple[str, float]]]]:
        lp = self.logprobs or {}
        rows = []
        for token, value, top in zip(
            lp.get("tokens", []),
            lp.get("token_logprobs", []),
            lp.get("top_logprobs", []),
            strict=False,
        ):
            alternatives = sorted((top or {}).items(), key=lambda kv: kv[1], reverse=True)
            rows.append((token, value, alternatives))
        return rows

    @property
    def answer(self) -> str:
        return self.answers[0] if self.answers else ""
