"""Deploy and delete requests: the one door the wizard, the delete page and the REST API use.
Each checks what the asker may do, then creates the job (audited) in one transaction."""

from typing import Any

from django.db import transaction

from opsportal.accounts.models import Role
from opsportal.accounts.permissions import require_role
from opsportal.deployments.forms import DeployForm
from opsportal.inventory.models import Endpoint
from opsportal.jobs.models import Job
from opsportal.jobs.services import job_request

ACTIVE = [Job.Status.PENDING, Job.Status.RUNNING]


def deploy_request(*, form: DeployForm, user: Any) -> Job:
    """A deploy job from a valid wizard form (its pre-flight passed); the operator role on the
    chosen workspace's team is checked here too."""
    workspace = form.cleaned_data["workspace"]
    require_role(user, workspace.team_id, Role.OPERATOR)
    params = form.params()
    existing = (
        form.cleaned_data.get("existing") if params.get("endpoint_mode") == "existing" else None
    )
    return job_request(
        action="endpoint.deploy.requested",
        detail=f"{params['kind']} {params['offering']}"
        + (", Marketplace terms accepted" if params.get("terms_accepted") else ""),
        kind=Job.Kind.DEPLOY,
        target_label=params["name"],
        requested_by=user,
        workspace=workspace,
        endpoint=existing,
        params=params,
    )


def delete_running(*, endpoint: Endpoint) -> Job | None:
    return Job.objects.filter(endpoint=endpoint, kind=Job.Kind.DELETE, status__in=ACTIVE).first()


def delete_request(*, endpoint: Endpoint, user: Any) -> tuple[Job, bool]:
    """A delete job, unless one is already under way: (job, created)."""
    require_role(user, endpoint.workspace.team_id, Role.OPERATOR)
    with transaction.atomic():
        running = delete_running(endpoint=endpoint)
        if running is not None:
            return running, False
        job = job_request(
            action="endpoint.delete.requested",
            kind=Job.Kind.DELETE,
            target_label=endpoint.name,
            requested_by=user,
            workspace=endpoint.workspace,
            endpoint=endpoint,
            params={
                "workspace_id": endpoint.workspace_id,
                "name": endpoint.name,
                "endpoint_id": endpoint.pk,
            },
        )
    return job, True
