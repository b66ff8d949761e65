"""Readiness checks: can this process serve and hand work to the workers?"""

from typing import TypedDict

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.executor import MigrationExecutor
from kombu import Connection

from opsportal.core import broker


class Check(TypedDict):
    ok: bool
    detail: str


def check_database() -> Check:
    try:
        with connections[DEFAULT_DB_ALIAS].cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:  # any driver error means "not reachable"
        return {"ok": False, "detail": f"database unreachable: {type(exc).__name__}"}
    return {"ok": True, "detail": connections[DEFAULT_DB_ALIAS].vendor}


def check_migrations() -> Check:
    try:
        connection = connections[DEFAULT_DB_ALIAS]
        executor = MigrationExecutor(connection)
        plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    except Exception as exc:
        return {"ok": False, "detail": f"cannot read migrations: {type(exc).__name__}"}
    if plan:
        return {"ok": False, "detail": f"{len(plan)} migration(s) not applied"}
    return {"ok": True, "detail": "all applied"}


def broker_transport() -> str:
    return settings.CELERY_BROKER_URL.split("://", 1)[0]


def check_broker() -> Check:
    transport = broker_transport()
    try:
        with Connection(
            settings.CELERY_BROKER_URL,
            transport_options=settings.CELERY_BROKER_TRANSPORT_OPTIONS,
            connect_timeout=2,
        ) as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
            if transport == broker.SCHEME:
                # A virtual transport "connects" to anything: prove its file takes writes.
                broker.writable(settings.CELERY_BROKER_URL)
    except Exception as exc:
        # The URL may carry a password: report the transport only.
        return {"ok": False, "detail": f"{transport} broker unreachable: {type(exc).__name__}"}
    return {"ok": True, "detail": transport}


def readiness() -> dict[str, Check]:
    return {
        "database": check_database(),
        "migrations": check_migrations(),
        "broker": check_broker(),
    }
