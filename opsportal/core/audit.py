"""Recording into the audit log: one function every app calls."""

import logging
from typing import Any

from opsportal.core.models import AuditEvent

log = logging.getLogger("opsportal.audit")


def audit_record(
    *,
    actor: Any,
    action: str,
    object_type: str,
    object_label: str,
    workspace: Any = None,
    endpoint: Any = None,
    job: Any = None,
    result: str = AuditEvent.Result.OK,
    detail: str = "",
    correlation_id: Any = None,
) -> AuditEvent:
    """One event. `actor` is a user, or a word for who acted when no user did ("schedule")."""
    user = actor if getattr(actor, "is_authenticated", False) else None
    event = AuditEvent.objects.create(
        actor=user,
        actor_label=user.get_username()
        if user
        else (actor if isinstance(actor, str) else "schedule"),
        action=action,
        object_type=object_type,
        object_label=object_label[:300],
        workspace=workspace,
        endpoint=endpoint,
        job=job,
        result=result,
        detail=detail,
        correlation_id=correlation_id,
    )
    log.info(
        "audit action=%s object=%s result=%s actor=%s correlation_id=%s",
        action,
        object_label,
        result,
        event.actor_label,
        correlation_id or "-",
    )
    return event
