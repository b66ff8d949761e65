"""Zero-downtime key rotation: at every moment at least one published key works.

secondary: regenerate -> verify with a real call -> publish (consumers move to it)
primary:   regenerate -> verify with a real call -> publish
A cancel is honoured only before a slot starts, never between its regenerate and its publish.
"""

from django.utils import timezone

from opsportal.dataplane.probe import endpoint_probe
from opsportal.inventory.models import Endpoint
from opsportal.jobs.models import Job
from opsportal.jobs.services import JobRecorder, runner
from opsportal.keys.models import KeySlot, RotationSchedule
from opsportal.keys.store import secret_publish
from opsportal.providers.base import ErrorCode, ProviderError


@runner(Job.Kind.KEY_ROTATION)
def rotate_run(rec: JobRecorder) -> None:
    endpoint = (
        Endpoint.objects.select_related("workspace", "workspace__account", "offering")
        .alive()
        .filter(pk=rec.job.params["endpoint_id"])
        .first()
    )
    if endpoint is None:
        raise ProviderError(
            "The endpoint was deleted before its keys could rotate.", code=ErrorCode.NOT_FOUND
        )
    provider = rec.provider(endpoint.workspace)
    routes = endpoint.offering.routes if endpoint.offering else None
    rec.step(2, f"Rotating the keys of {endpoint.name}; correlation id {rec.job.correlation_id}")
    for index, slot in enumerate([KeySlot.SECONDARY, KeySlot.PRIMARY]):
        if rec.done(slot):
            continue
        base = 5 + index * 45
        rec.boundary()
        rec.step(base, f"Regenerating the {slot} key")
        # From here to the publish, the slot's step runs to its end, even if cancelled.
        keys = rec.call(
            f"Regenerating the {slot} key",
            provider.key_regenerate,
            name=endpoint.name,
            slot=slot,
            cancellable=False,
        )
        rec.audit("key.regenerate", detail=slot)
        new = getattr(keys, slot)
        rec.step(base + 15, f"Verifying the new {slot} key with a real call")
        result = rec.call(
            f"Verifying the {slot} key",
            endpoint_probe,
            scoring_uri=endpoint.scoring_uri,
            key=new,
            routes=routes,
            cancellable=False,
        )
        rec.audit("key.verify", detail=f"{slot}: answered in {result.ms:.0f} ms")
        rec.step(base + 30, f"The new {slot} key works ({result.ms:.0f} ms); publishing it")
        version = secret_publish(endpoint=endpoint, slot=slot, value=new, job=rec.job)
        rec.audit("key.publish", detail=f"{slot} as version {version.version}")
        rec.step(base + 40, f"Published the {slot} key as version {version.version}")
        rec.checkpoint(slot)
        rec.checkpoint(
            "cancel_note",
            "Cancelled after the secondary key was rotated and published: consumers use it; "
            "the primary key is unchanged. Rotate again to finish.",
        )
    RotationSchedule.objects.filter(endpoint=endpoint).update(last_run_at=timezone.now())
    rec.step(100, "Both keys rotated; the primary key is the published one")
    rec.audit("key.rotate")
