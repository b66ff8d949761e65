"""Changes to a managed endpoint's deployments (instance count, traffic split, removing one):
the pre-flight of each, from the inventory, and the job that carries it out."""

from dataclasses import dataclass
from typing import Any

from django.db import transaction

from opsportal.deployments.preflight import compute_facts
from opsportal.inventory.models import Endpoint, ManagedDeployment
from opsportal.jobs.models import Job
from opsportal.jobs.services import job_request

CHANGE_KINDS = (Job.Kind.SCALE, Job.Kind.TRAFFIC, Job.Kind.DEPLOYMENT_DELETE)
MAX_INSTANCES = 20


class ChangeRefused(Exception):
    """A change the pre-flight refuses, in words for the person who asked, and the field."""

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.field = field


@dataclass(frozen=True)
class Requested:
    job: Job
    created: bool  # False: a change of this endpoint was already under way


def change_running(*, endpoint: Endpoint) -> Job | None:
    """One change at a time per endpoint (Azure refuses a second update while one runs)."""
    return Job.objects.filter(
        endpoint=endpoint,
        kind__in=[*CHANGE_KINDS, Job.Kind.DEPLOY],
        status__in=[Job.Status.PENDING, Job.Status.RUNNING],
    ).first()


def live_deployments(endpoint: Endpoint) -> dict[str, ManagedDeployment]:
    return {d.name: d for d in endpoint.deployments.alive()}


def scale_check(*, endpoint: Endpoint, name: str, instance_count: int) -> str:
    """Refuse what Azure would: an unknown deployment, a count out of range, cores beyond the
    free quota of the deployment's VM family. Returns the check's line for the log."""
    deployment = live_deployments(endpoint).get(name)
    if deployment is None:
        raise ChangeRefused(f"{endpoint.name} has no deployment {name!r}.")
    if not 1 <= instance_count <= MAX_INSTANCES:
        raise ChangeRefused(f"Choose 1 to {MAX_INSTANCES} instances.", field="instance_count")
    if instance_count == deployment.instance_count:
        raise ChangeRefused(
            f"{name} already runs {instance_count} instances.", field="instance_count"
        )
    facts = compute_facts(endpoint.workspace)
    if not facts.known or deployment.vm_sku not in facts.sizes:
        return "The core quota is not known here; the job checks it with the provider."
    cores, family = facts.sizes[deployment.vm_sku]
    extra = cores * (instance_count - deployment.instance_count)
    used, limit = facts.usage.get(family, (0, 0))
    free = max(0, limit - used)
    if extra > free:
        raise ChangeRefused(
            f"{instance_count} x {deployment.vm_sku} needs {extra} more {family} cores; {free} of "
            f"{limit} are free in {endpoint.region}. Choose fewer instances, or ask for quota.",
            field="instance_count",
        )
    return f"{max(0, extra)} more {family} cores needed, {free} free."


def traffic_check(*, endpoint: Endpoint, traffic: dict[str, int]) -> None:
    live = live_deployments(endpoint)
    unknown = sorted(set(traffic) - set(live))
    if unknown:
        raise ChangeRefused(f"{endpoint.name} has no deployment {unknown[0]!r}.")
    if any(not 0 <= v <= 100 for v in traffic.values()):
        raise ChangeRefused("Each share is 0 to 100 %.", field="traffic")
    total = sum(traffic.get(name, 0) for name in live)
    if total not in (0, 100):
        raise ChangeRefused(
            f"The shares add up to {total} %; they must add up to 100 % (or 0 %, to serve "
            "nothing).",
            field="traffic",
        )


def remove_check(*, endpoint: Endpoint, name: str) -> None:
    deployment = live_deployments(endpoint).get(name)
    if deployment is None:
        raise ChangeRefused(f"{endpoint.name} has no deployment {name!r}.")
    if deployment.traffic_percent:
        raise ChangeRefused(
            f"{name} still takes {deployment.traffic_percent} % of the traffic: give its share to "
            "the other deployments first (Azure does not remove a deployment that serves)."
        )


def change_request(*, endpoint: Endpoint, user: Any, kind: str, **params: Any) -> Requested:
    """Check the change, then queue its job (audited); or the change already under way."""
    with transaction.atomic():
        running = change_running(endpoint=endpoint)
        if running is not None:
            return Requested(running, False)
        if kind == Job.Kind.SCALE:
            scale_check(endpoint=endpoint, **params)
            detail = f"{params['name']}: {params['instance_count']} instances"
            params = {"deployment": params["name"], "instance_count": params["instance_count"]}
        elif kind == Job.Kind.TRAFFIC:
            traffic_check(endpoint=endpoint, **params)
            detail = ", ".join(f"{k} {v}%" for k, v in sorted(params["traffic"].items()))
        elif kind == Job.Kind.DEPLOYMENT_DELETE:
            remove_check(endpoint=endpoint, **params)
            detail = params["name"]
            params = {"deployment": params["name"]}
        else:
            raise ValueError(f"not a deployment change: {kind}")
        job = job_request(
            action=f"{kind}.requested",
            detail=detail,
            kind=kind,
            target_label=endpoint.name,
            requested_by=user,
            workspace=endpoint.workspace,
            endpoint=endpoint,
            params={"endpoint_id": endpoint.pk, **params},
        )
    return Requested(job, True)
