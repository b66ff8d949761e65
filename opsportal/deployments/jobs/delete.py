"""The delete job: ask the provider, wait until the endpoint is gone, mark its row deleted and
forget its keys."""

from django.db import transaction
from django.utils import timezone

from opsportal.deployments.jobs.steps import call_unless_gone, compute_refresh, wait_gone
from opsportal.inventory.models import (
    Endpoint,
    ProvisioningState,
    Workspace,
)
from opsportal.jobs.models import Job
from opsportal.jobs.services import JobRecorder, runner
from opsportal.keys.models import RotationSchedule
from opsportal.keys.store import secrets_forget
from opsportal.providers.base import (
    WorkspaceBackend,
)


@runner(Job.Kind.DELETE)
def delete_run(rec: JobRecorder) -> None:
    p = rec.job.params
    workspace = Workspace.objects.select_related("account").get(pk=p["workspace_id"])
    name = p["name"]
    provider = rec.provider(workspace)
    row = Endpoint.objects.filter(pk=p.get("endpoint_id")).first()
    rec.phase(
        "delete_requested",
        10,
        f"Deleting {name} from {workspace.name}",
        lambda: delete_ask(rec, provider, name),
    )
    # Deletion is under way at the provider and cannot be undone: no cancel point from here.
    rec.step(40, "Waiting until the endpoint is gone")
    wait_gone(rec, provider, name)
    if row is not None:
        now = timezone.now()
        with transaction.atomic():
            Endpoint.objects.alive().filter(pk=row.pk).update(
                deleted_at=now, provisioning_state=ProvisioningState.DELETING, updated_at=now
            )
            row.deployments.alive().update(deleted_at=now)
            RotationSchedule.objects.filter(endpoint=row).update(enabled=False, next_run_at=None)
        rec.step(80, "Forgetting its keys")
        secrets_forget(endpoint=row)
    if row is not None and row.kind == Endpoint.Kind.MANAGED:
        compute_refresh(rec, provider, workspace)
    rec.step(100, f"{name} is deleted")
    rec.audit("endpoint.delete")


def delete_ask(rec: JobRecorder, provider: WorkspaceBackend, name: str) -> None:
    call_unless_gone(rec, name, provider.endpoint_delete, 20, name=name)
    rec.checkpoint(
        "cancel_note",
        f"Cancelled after deletion of {name} was asked: the provider deletes it anyway; the next "
        "inventory sync removes its row.",
    )
