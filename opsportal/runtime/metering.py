"""Usage rows written in batches by one thread, so the token path never waits on the database."""

import logging
import queue
import threading
from typing import Any

from django.db import close_old_connections

from opsportal.runtime.models import UsageRecord

log = logging.getLogger(__name__)


class Meter:
    def __init__(self, *, interval: float = 0.5, batch: int = 500) -> None:
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue()
        self._interval = interval
        self._batch = batch
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="meter", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def record(self, **fields: Any) -> None:
        self._queue.put(fields)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.flush()

    def flush(self) -> int:
        rows = []
        while len(rows) < self._batch:
            try:
                rows.append(UsageRecord(**self._queue.get_nowait()))
            except queue.Empty:
                break
        if rows:
            try:
                UsageRecord.objects.bulk_create(rows)
            except Exception:
                # A lost batch of metering must not stop serving; the log says how many.
                log.exception("could not write %d usage rows", len(rows))
        return len(rows)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            close_old_connections()
            while self.flush() == self._batch:
                pass
