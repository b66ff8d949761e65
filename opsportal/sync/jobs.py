"""The Azure inventory sync as a job, like every other background action: claimed, kept alive
by its heartbeat, re-queued by the reaper if its worker dies, cancellable between steps."""

from opsportal.jobs.models import Job
from opsportal.jobs.services import JobRecorder, runner
from opsportal.providers import azure_cloud
from opsportal.providers.base import ErrorCode, ProviderError
from opsportal.sync.services import configured_subscription_ids, inventory_sync_azure


@runner(Job.Kind.AZURE_SYNC)
def azure_sync_run(rec: JobRecorder) -> None:
    configured, how = azure_cloud.configured()
    if not configured:
        raise ProviderError(how, code=ErrorCode.UNAVAILABLE)
    rec.step(1, f"Signing in to Azure ({how}); correlation id {rec.job.correlation_id}")
    report = inventory_sync_azure(
        credential=azure_cloud.credential(),
        subscription_ids=configured_subscription_ids(),
        progress=rec.step,
        correlation_id=str(rec.job.correlation_id),
    )
    for line in report.lines:
        rec.note(line)
    rec.step(
        100,
        f"{report.subscriptions} subscriptions, {report.workspaces_ok} workspaces synced, "
        f"{len(report.workspaces_failed)} failed, {report.endpoints} endpoints, "
        f"{report.marked_deleted} marked deleted, {report.requests} Azure requests",
    )
    if report.workspaces_failed:
        failed = "; ".join(f"{name}: {err}" for name, err in report.workspaces_failed)
        raise ProviderError(f"Some workspaces failed: {failed}", code=ErrorCode.SERVER_ERROR)
