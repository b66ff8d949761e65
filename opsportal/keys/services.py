"""Key rotation requests, schedules and the audited reveal."""

from datetime import timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from opsportal.core.audit import audit_record
from opsportal.core.models import alive
from opsportal.inventory.models import Endpoint, ProvisioningState
from opsportal.jobs.models import Job
from opsportal.jobs.services import job_request
from opsportal.keys.models import RotationSchedule, SecretVersion
from opsportal.keys.store import secret_latest_by_slot, secret_publish, secret_value
from opsportal.providers import for_workspace

ROTATION = "key-rotation"
ACTIVE = [Job.Status.PENDING, Job.Status.RUNNING]


def rotation_active(*, endpoint: Endpoint) -> Job | None:
    return Job.objects.filter(endpoint=endpoint, kind=ROTATION, status__in=ACTIVE).first()


def rotation_request(*, endpoint: Endpoint, user: Any) -> tuple[Job, bool]:
    """A rotation job, unless one is already pending or running: (job, created)."""
    with transaction.atomic():
        running = rotation_active(endpoint=endpoint)
        if running is not None:
            return running, False
        job = job_request(
            action="key.rotate.requested",
            kind=ROTATION,
            target_label=endpoint.name,
            requested_by=user,
            workspace=endpoint.workspace,
            endpoint=endpoint,
            params={"endpoint_id": endpoint.pk},
        )
    return job, True


def rotation_schedule_set(
    *, endpoint: Endpoint, every_days: int | None, user: Any
) -> RotationSchedule | None:
    """Rotate every `every_days` days from now; None turns the schedule off."""
    with transaction.atomic():
        if every_days is None:
            RotationSchedule.objects.filter(endpoint=endpoint).update(
                enabled=False, next_run_at=None, updated_by=user
            )
            schedule = None
            detail = "off"
        else:
            schedule, _ = RotationSchedule.objects.update_or_create(
                endpoint=endpoint,
                defaults={
                    "every_days": every_days,
                    "enabled": True,
                    "next_run_at": timezone.now() + timedelta(days=every_days),
                    "updated_by": user,
                },
            )
            detail = f"every {every_days} days, next {schedule.next_run_at:%Y-%m-%d %H:%M}"
        audit_record(
            actor=user,
            action="key.schedule",
            object_type="endpoint",
            object_label=endpoint.name,
            workspace=endpoint.workspace,
            endpoint=endpoint,
            detail=detail,
        )
    return schedule


def rotations_due_start(*, now: Any = None) -> list[int]:
    """Beat's tick: a rotation job for each endpoint whose schedule is due."""
    now = now or timezone.now()
    started = []
    due = RotationSchedule.objects.filter(
        alive("endpoint"),
        enabled=True,
        next_run_at__lte=now,
        endpoint__provisioning_state=ProvisioningState.SUCCEEDED,
    ).select_related("endpoint", "endpoint__workspace")
    for schedule in due:
        with transaction.atomic():
            # Claim the tick: two beats (or a slow one) never start the same rotation twice.
            claimed = RotationSchedule.objects.filter(
                pk=schedule.pk, next_run_at=schedule.next_run_at
            ).update(next_run_at=now + timedelta(days=schedule.every_days))
            if not claimed:
                continue
            job, created = rotation_request(endpoint=schedule.endpoint, user=None)
            if created:
                started.append(job.pk)
    return started


def key_reveal(*, endpoint: Endpoint, slot: str, user: Any) -> str:
    """One key, for an admin, audited. A key the store does not hold yet (an endpoint found by
    the inventory sync) is read from the provider and published first."""
    latest = secret_latest_by_slot(endpoint=endpoint)
    version: SecretVersion | None = latest.get(slot)
    if version is None:
        keys = for_workspace(endpoint.workspace).keys_get(name=endpoint.name)
        for each in ("secondary", "primary"):
            published = secret_publish(endpoint=endpoint, slot=each, value=getattr(keys, each))
            if each == slot:
                version = published
    assert version is not None
    audit_record(
        actor=user,
        action="key.reveal",
        object_type="endpoint",
        object_label=endpoint.name,
        workspace=endpoint.workspace,
        endpoint=endpoint,
        detail=f"{slot} key, version {version.version}",
    )
    return secret_value(version)
