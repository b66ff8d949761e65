"""Writes to the inventory that do not go through a provider."""

import json
from pathlib import Path
from typing import Any

from django.db import transaction

from opsportal.accounts.models import Team
from opsportal.core.audit import audit_record
from opsportal.inventory.models import (
    CloudAccount,
    ComputeQuota,
    Endpoint,
    ManagedDeployment,
    Provider,
    Workspace,
)

OFFERINGS_FILE = Path(__file__).resolve().parent / "data" / "offerings.json"

LOCAL_SUBSCRIPTION_ID = "local"
LOCAL_REGION = "local"
LOCAL_TEAM_NAME = "Local"


def offerings_read(*, path: Path = OFFERINGS_FILE) -> list[dict[str, Any]]:
    return json.loads(path.read_text())["offerings"]


def offerings_load(*, offering_model: Any, path: Path = OFFERINGS_FILE) -> tuple[int, int]:
    """Create or update catalog rows by slug. Takes the model class so migrations can use it."""
    created = updated = 0
    # A migration's historical model may predate some columns of the data file.
    known = {f.name for f in offering_model._meta.get_fields()}
    for row in offerings_read(path=path):
        fields = {k: v for k, v in row.items() if k != "slug" and k in known}
        _, was_created = offering_model.objects.update_or_create(slug=row["slug"], defaults=fields)
        created += was_created
        updated += not was_created
    return created, updated


@transaction.atomic
def local_workspace_ensure() -> Workspace:
    """The local runtime's account, team and workspace: there on every machine, made once."""
    account, _ = CloudAccount.objects.get_or_create(
        provider=Provider.LOCAL,
        subscription_id=LOCAL_SUBSCRIPTION_ID,
        defaults={"display_name": "This machine (local runtime)", "status": CloudAccount.Status.OK},
    )
    team, _ = Team.objects.get_or_create(name=LOCAL_TEAM_NAME, defaults={"slug": "local"})
    workspace, _ = Workspace.objects.get_or_create(
        account=account,
        resource_group="local",
        name="local",
        defaults={"region": LOCAL_REGION, "provider": Provider.LOCAL, "team": team},
    )
    return workspace


def deployments_store(*, endpoint: Any, deployments: Any, now: Any) -> None:
    """An endpoint's deployments as the provider lists them; the ones it no longer lists are
    marked deleted."""
    names = []
    for d in deployments:
        names.append(d.name)
        ManagedDeployment.objects.alive().update_or_create(
            endpoint=endpoint,
            name=d.name,
            defaults={
                "vm_sku": d.instance_type,
                "instance_count": max(1, d.instance_count),
                "traffic_percent": max(0, min(100, d.traffic_percent)),
                "state": d.state,
            },
        )
    endpoint.deployments.alive().exclude(name__in=names).update(deleted_at=now)


def endpoint_row_store(*, workspace: Workspace, info: Any, offering: Any, now: Any) -> Any:
    """An endpoint's inventory row and its deployments' rows, as the provider describes them
    (an EndpointInfo). The sync and the deploy job both write through here."""
    defaults = {
        "kind": info.kind,
        "region": workspace.region,
        "scoring_uri": info.scoring_uri,
        "provisioning_state": info.provisioning_state,
    }
    # A model the catalog does not know (or a managed endpoint with no deployment yet) says
    # nothing about the row's model: keep what the console already knows.
    if offering is not None:
        defaults["offering"] = offering
    if info.model_id:
        defaults["model_id"] = info.model_id
    if info.status_message:
        defaults["status_message"] = info.status_message
    endpoint, _ = Endpoint.objects.alive().update_or_create(
        workspace=workspace, name=info.name, defaults=defaults
    )
    deployments_store(endpoint=endpoint, deployments=info.deployments, now=now)
    return endpoint


def workspace_team_set(*, workspace: Workspace, team: Team | None, user: Any) -> Workspace:
    """A superuser's choice of team for a synced workspace; None hands it back to the Azure tag
    (the next sync applies it)."""
    source = Workspace.TeamSource.MANUAL if team else Workspace.TeamSource.NONE
    with transaction.atomic():
        Workspace.objects.filter(pk=workspace.pk).update(team=team, team_source=source)
        audit_record(
            actor=user,
            action="workspace.team",
            object_type="workspace",
            object_label=workspace.name,
            workspace=workspace,
            detail=f"team {team.name}" if team else "follow the Azure tag",
        )
    workspace.refresh_from_db()
    return workspace


def compute_quota_store(*, account_id: int, region: str, usage: Any) -> None:
    """A region's dedicated cores per VM family, as the provider reports them now (the sync,
    and every job that adds or removes instances, keep the pre-flight's snapshot current)."""
    for u in usage:
        ComputeQuota.objects.update_or_create(
            account_id=account_id,
            region=region,
            family=u.family,
            defaults={"used": max(0, u.used), "limit": max(0, u.limit)},
        )
