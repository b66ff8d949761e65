import logging
import os
import time

from celery import shared_task

log = logging.getLogger(__name__)


@shared_task(ignore_result=False)
def ping(payload: str) -> dict[str, object]:
    """Round trip through the broker: proves a worker took the message and answered."""
    return {"echo": payload, "worker_pid": os.getpid(), "at": time.time()}


@shared_task
def heartbeat() -> None:
    """Beat's own liveness line in the worker log."""
    log.info("beat heartbeat")
