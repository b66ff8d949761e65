"""The embedded default's Celery broker and result store: one SQLite file, no server.

`CELERY_BROKER_URL=sqlite:///path` and `CELERY_RESULT_BACKEND=sqlite:///path` name them (the
aliases are registered in opsportal.celery before the app reads its configuration).

Why not kombu's own transports: the filesystem transport writes a message file and then fills
it while workers move and read files without a lock, so a worker can read an empty file and
die (kombu issue 1551). kombu's SQLAlchemy transport is transactional, but it keeps every
delivered message as a hidden row for ever and hands its transport options to
`create_engine`, so neither its poll interval nor SQLite's locking mode can be set. This one
is kombu's virtual transport over the standard library's sqlite3: a message is inserted in one
transaction and taken out (read and deleted) in one statement, so it is read whole exactly
once.

A message a worker has taken is gone from the file, as with every transport without
acknowledgements held by a server: if that worker dies before the task ends, the message does
not come back. Jobs do not depend on it: their rows carry the state, and the reaper
(opsportal.jobs.services.jobs_reap, every OPSPORTAL_TICK_SECONDS) queues again a running job
whose heartbeat stopped (after OPSPORTAL_JOB_STALE_SECONDS) and a pending job nobody took
(after OPSPORTAL_JOB_LOST_SECONDS). Scheduled work simply runs at its next tick. There is no
broadcast either (no fanout exchange): cancelling a job never relies on it.
"""

import os
import sqlite3
import threading
import time
from contextlib import suppress
from pathlib import Path
from queue import Empty
from typing import Any

from celery.backends.base import KeyValueStoreBackend
from kombu.transport import virtual
from kombu.utils.json import dumps, loads

SCHEME = "sqlite"
SCHEMA = """
CREATE TABLE IF NOT EXISTS broker_message (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS broker_message_queue ON broker_message (queue, id);
CREATE TABLE IF NOT EXISTS celery_result (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    expires_at REAL
);
"""


def database_path(url: str) -> Path:
    """`sqlite:///relative/path` or `sqlite:////absolute/path`, as SQLAlchemy spells them."""
    scheme, sep, rest = url.partition(":///")
    if not sep or scheme != SCHEME or not rest:
        raise ValueError(f"Expected sqlite:///PATH, got {url!r}.")
    return Path(rest).resolve()


def connect(path: Path) -> sqlite3.Connection:
    """A connection in WAL mode that waits for other writers instead of failing "locked".
    The file is created readable by this user only: it holds every task's arguments."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        with suppress(FileExistsError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(SCHEMA)
    return conn


class Channel(virtual.Channel):
    """One connection per channel; kombu may call a channel from more than one thread."""

    def __init__(self, connection: Any, **kwargs: Any) -> None:
        super().__init__(connection, **kwargs)
        self._db = connect(database_path(self.connection.client.hostname))
        self._lock = threading.Lock()

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO broker_message (queue, payload, created_at) VALUES (?, ?, ?)",
                (queue, dumps(message), time.time()),
            )

    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:
        with self._lock:
            # A plain read first: an empty queue (the usual case) takes no write lock.
            if self._db.execute(
                "SELECT 1 FROM broker_message WHERE queue = ? LIMIT 1", (queue,)
            ).fetchone():
                row = self._db.execute(
                    "DELETE FROM broker_message WHERE id = (SELECT id FROM broker_message "
                    "WHERE queue = ? ORDER BY id LIMIT 1) RETURNING payload",
                    (queue,),
                ).fetchone()
                if row is not None:
                    return loads(row[0])
        raise Empty()

    def _size(self, queue: str) -> int:
        with self._lock:
            return self._db.execute(
                "SELECT count(*) FROM broker_message WHERE queue = ?", (queue,)
            ).fetchone()[0]

    def _purge(self, queue: str) -> int:
        with self._lock:
            return self._db.execute("DELETE FROM broker_message WHERE queue = ?", (queue,)).rowcount

    def _delete(self, queue: str, *args: Any, **kwargs: Any) -> None:
        self._purge(queue)

    def close(self) -> None:
        super().close()
        with self._lock:
            self._db.close()


class Transport(virtual.Transport):
    Channel = Channel
    # Dispatch latency of an idle worker; an idle poll is one indexed read.
    polling_interval = 0.2
    can_parse_url = True
    default_port = 0
    driver_type = "sqlite"
    driver_name = "sqlite3"
    connection_errors = (sqlite3.OperationalError,)
    channel_errors = (sqlite3.OperationalError,)

    def driver_version(self) -> str:
        return sqlite3.sqlite_version


class ResultBackend(KeyValueStoreBackend):
    """Task results in the same file, for the few callers that wait on one."""

    supports_autoexpire = False

    def __init__(self, url: str | None = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, url=url, **kwargs)
        self._db = connect(database_path(url or ""))
        self._lock = threading.Lock()

    def get(self, key: bytes | str) -> bytes | None:
        with self._lock:
            row = self._db.execute(
                "SELECT value FROM celery_result WHERE key = ?", (self._text(key),)
            ).fetchone()
        return row[0] if row else None

    def mget(self, keys: list[bytes | str]) -> list[bytes | None]:
        return [self.get(key) for key in keys]

    def set(self, key: bytes | str, value: bytes | str) -> None:
        expires = self.expires
        at = time.time() + expires if isinstance(expires, int | float) and expires else None
        data = value.encode() if isinstance(value, str) else value
        with self._lock:
            self._db.execute(
                "INSERT INTO celery_result (key, value, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
                "expires_at = excluded.expires_at",
                (self._text(key), data, at),
            )

    def delete(self, key: bytes | str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM celery_result WHERE key = ?", (self._text(key),))

    def cleanup(self) -> None:
        """Celery beat's daily backend_cleanup: results past their expiry go."""
        with self._lock:
            self._db.execute(
                "DELETE FROM celery_result WHERE expires_at IS NOT NULL AND expires_at < ?",
                (time.time(),),
            )

    @staticmethod
    def _text(key: bytes | str) -> str:
        return key.decode() if isinstance(key, bytes) else key


def writable(url: str) -> None:
    """Raise unless the broker's file can take a write (the readiness check)."""
    conn = connect(database_path(url))
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
    finally:
        conn.close()
