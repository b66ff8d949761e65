"""Changes to a managed endpoint's deployments, each a job: scale one, split the traffic,
remove one."""

from dataclasses import dataclass

from opsportal.deployments.jobs.steps import (
    call_unless_gone,
    compute_refresh,
    endpoint_find,
    endpoint_row_refresh,
    wait_gone,
    wait_provisioned,
)
from opsportal.inventory.models import (
    Endpoint,
)
from opsportal.jobs.models import Job
from opsportal.jobs.services import JobRecorder, runner
from opsportal.providers.base import (
    EndpointInfo,
    ErrorCode,
    ProviderError,
    WorkspaceBackend,
)


@dataclass
class Change:
    rec: JobRecorder
    endpoint: Endpoint
    provider: WorkspaceBackend

    @classmethod
    def load(cls, rec: JobRecorder) -> "Change":
        endpoint = (
            Endpoint.objects.select_related("workspace", "workspace__account", "offering")
            .alive()
            .filter(pk=rec.job.params["endpoint_id"])
            .first()
        )
        if endpoint is None or endpoint.kind != Endpoint.Kind.MANAGED:
            raise ProviderError(
                "The managed endpoint was deleted before this change could run.",
                code=ErrorCode.NOT_FOUND,
            )
        return cls(rec=rec, endpoint=endpoint, provider=rec.provider(endpoint.workspace))

    def refresh(self, info: EndpointInfo) -> None:
        endpoint_row_refresh(
            provider=self.provider,
            workspace=self.endpoint.workspace,
            info=info,
            offering=self.endpoint.offering,
        )


@runner(Job.Kind.SCALE)
def scale_run(rec: JobRecorder) -> None:
    c = Change.load(rec)
    name, count = rec.job.params["deployment"], rec.job.params["instance_count"]
    where = f"{c.endpoint.name}/{name}"
    rec.phase(
        "quota_checked",
        5,
        "Checking the core quota with the provider",
        lambda: scale_quota_check(c, name, count),
    )
    rec.phase(
        "scaled",
        10,
        f"Scaling {where} to {count} instances",
        lambda: rec.call(
            f"Scaling {where}",
            c.provider.deployment_scale,
            endpoint_name=c.endpoint.name,
            name=name,
            instance_count=count,
        ),
    )
    info = wait_provisioned(rec, c.provider, c.endpoint.name, start=20, end=90, deployment=name)
    c.refresh(info)
    compute_refresh(rec, c.provider, c.endpoint.workspace)
    rec.step(100, f"{where} runs {count} instances")
    rec.audit("deployment.scale", detail=f"{name}: {count} instances")


def scale_quota_check(c: Change, name: str, count: int) -> None:
    """The extra instances' cores fit the family's free quota (asked of the provider, which
    counts what runs now)."""
    rec = c.rec
    info = endpoint_find(rec, c.provider, c.endpoint.name)
    current = next((d for d in (info.deployments if info else ()) if d.name == name), None)
    if current is None:
        raise ProviderError(
            f"{c.endpoint.name} has no deployment {name}.", code=ErrorCode.NOT_FOUND
        )
    sizes = {t.name: t for t in rec.call("VM sizes", c.provider.instance_types)}
    size = sizes.get(current.instance_type)
    extra = (count - current.instance_count) * (size.cores if size else 0)
    if size is None or extra <= 0:
        return
    usage = {u.family: u for u in rec.call("Core quota", c.provider.core_usage)}
    quota = usage.get(size.family)
    if quota is not None and extra > quota.headroom:
        raise ProviderError(
            f"Not enough cores: {count} x {size.name} needs {extra} more {size.family} cores, "
            f"{quota.headroom} of {quota.limit} are free in {c.endpoint.region}. Choose fewer "
            "instances, or ask for more quota.",
            code=ErrorCode.QUOTA_EXCEEDED,
        )
    rec.step(8, f"{extra} more {size.family} cores needed, within quota")


@runner(Job.Kind.TRAFFIC)
def traffic_run(rec: JobRecorder) -> None:
    c = Change.load(rec)
    traffic = {k: int(v) for k, v in rec.job.params["traffic"].items()}
    split = ", ".join(f"{k} {v}%" for k, v in sorted(traffic.items()))
    rec.phase(
        "traffic_set",
        10,
        f"Setting the traffic of {c.endpoint.name}: {split}",
        lambda: rec.call(
            "Setting the traffic",
            c.provider.traffic_set,
            endpoint_name=c.endpoint.name,
            traffic=traffic,
        ),
    )
    info = wait_provisioned(rec, c.provider, c.endpoint.name, start=20, end=90)
    c.refresh(info)
    rec.step(100, f"Traffic of {c.endpoint.name}: {split}")
    rec.audit("endpoint.traffic", detail=split)


@runner(Job.Kind.DEPLOYMENT_DELETE)
def deployment_delete_run(rec: JobRecorder) -> None:
    c = Change.load(rec)
    name = rec.job.params["deployment"]
    where = f"{c.endpoint.name}/{name}"

    rec.phase(
        "deployment_deleted",
        10,
        f"Removing deployment {where}",
        lambda: call_unless_gone(
            rec,
            where,
            c.provider.deployment_delete,
            20,
            endpoint_name=c.endpoint.name,
            name=name,
        ),
    )
    rec.step(30, f"Waiting until {where} is gone")
    info = wait_gone(rec, c.provider, c.endpoint.name, deployment=name)
    assert info is not None  # wait_gone raises when the endpoint itself went
    c.refresh(info)
    compute_refresh(rec, c.provider, c.endpoint.workspace)
    rec.step(100, f"{where} is removed")
    rec.audit("deployment.delete", detail=name)
