"""Per-deployment rate limits over a sliding minute: requests and tokens."""

import math
import threading
import time
from collections import deque

WINDOW = 60.0


class RateWindow:
    def __init__(self) -> None:
        self._requests: deque[float] = deque()
        self._tokens: deque[tuple[float, int]] = deque()
        self._token_total = 0
        self._lock = threading.Lock()

    def _expire(self, now: float) -> None:
        while self._requests and self._requests[0] <= now - WINDOW:
            self._requests.popleft()
        while self._tokens and self._tokens[0][0] <= now - WINDOW:
            self._token_total -= self._tokens.popleft()[1]

    def admit(self, *, rpm: int, tpm: int, now: float | None = None) -> float | None:
        """Count the request and return None, or refuse it: seconds until it would fit."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._expire(now)
            if len(self._requests) >= rpm:
                return self._requests[len(self._requests) - rpm] + WINDOW - now
            if self._token_total >= tpm:
                excess, wait = self._token_total - tpm, 0.0
                for at, tokens in self._tokens:
                    excess -= tokens
                    wait = at + WINDOW - now
                    if excess < 0:
                        break
                return wait
            self._requests.append(now)
            return None

    def add_tokens(self, tokens: int, now: float | None = None) -> None:
        if tokens <= 0:
            return
        now = time.monotonic() if now is None else now
        with self._lock:
            self._tokens.append((now, tokens))
            self._token_total += tokens


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
