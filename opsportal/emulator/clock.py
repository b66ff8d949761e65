"""The emulator's clock: long-running operations and Cost Management's data lag run on it.

It follows real time times `speed` from an anchor, and can be moved forward at once. Tokens and
throttling windows use real time instead: clients measure those with their own clocks.
"""

import threading
import time
from datetime import UTC, datetime, timedelta


class Clock:
    def __init__(self, *, speed: float = 1.0, start: datetime | None = None) -> None:
        self._lock = threading.Lock()
        self._speed = float(speed)
        self._anchor_real = time.monotonic()
        self._anchor = start or datetime.now(UTC)

    def now(self) -> datetime:
        with self._lock:
            return self._at(time.monotonic())

    def _at(self, real: float) -> datetime:
        return self._anchor + timedelta(seconds=(real - self._anchor_real) * self._speed)

    @property
    def speed(self) -> float:
        return self._speed

    def set(self, *, speed: float | None = None, start: datetime | None = None) -> None:
        """Change the speed (from now on) and/or jump to a moment."""
        with self._lock:
            real = time.monotonic()
            self._anchor = start or self._at(real)
            self._anchor_real = real
            if speed is not None:
                self._speed = float(speed)

    def advance(self, seconds: float) -> datetime:
        with self._lock:
            self._anchor += timedelta(seconds=seconds)
            return self._at(time.monotonic())

    def real_seconds(self, emulated_seconds: float) -> float:
        """How long a client waits in real time for this much emulated time to pass."""
        if self._speed <= 0:
            return float("inf")
        return max(0.0, emulated_seconds) / self._speed
