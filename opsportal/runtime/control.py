"""The local runtime's control loop: it plays the part of ARM.

Desired state is the local workspaces' endpoint and deployment rows. Each pass loads the engines
they need (serverless endpoints of one offering share one; a managed deployment gets
`instance_count` dedicated replicas), unloads what is no longer wanted, reloads what crashed,
and writes provisioning states back: Creating -> Succeeded, or Failed with the reason.
"""

import logging
import os
import random
import threading
import time
from dataclasses import dataclass, field

from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from opsportal.inventory.models import Endpoint, ManagedDeployment, Offering, ProvisioningState
from opsportal.runtime.decoding import EngineError
from opsportal.runtime.engine import Engine

log = logging.getLogger(__name__)

# Local "VM sizes": threads are the cores a replica uses, n_ctx the context window of each of its
# slots (requests it decodes side by side in one batch; each slot's KV cache is held in memory).
INSTANCE_TYPES: dict[str, dict[str, int]] = {
    "Local_1T_2K": {"threads": 1, "n_ctx": 2048, "slots": 4},
    "Local_2T_4K": {"threads": 2, "n_ctx": 4096, "slots": 4},
    "Local_2T_8K": {"threads": 2, "n_ctx": 8192, "slots": 4},
}
RETRY_FAILED_LOAD_AFTER = 30.0
SERVERLESS_MAX_CTX = 8192


def machine_cores() -> int:
    return os.cpu_count() or 1


def scoring_uri(name: str) -> str:
    return f"{settings.OPSPORTAL_RUNTIME_URL.rstrip('/')}/endpoints/{name}"


@dataclass
class EngineSlot:
    engine: Engine
    waiting: int = 0  # requests it has taken in: decoding, or queued for a free slot
    broken: bool = False


@dataclass
class Route:
    """Where an endpoint's requests go: deployments (traffic %, replica keys)."""

    endpoint_id: int
    name: str
    family: str
    deployments: list[tuple[int, list[tuple]]] = field(default_factory=list)


class Runtime:
    def __init__(self) -> None:
        self.slots: dict[tuple, EngineSlot] = {}
        self.routes: dict[str, Route] = {}
        self._failed: dict[tuple, tuple[float, str]] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # --- what the gateway asks ---------------------------------------------------------------
    def pick(self, route: Route) -> tuple[tuple, EngineSlot] | None:
        """A replica for one request: a deployment by traffic weight, then the least busy."""
        live = [(w, keys) for w, keys in route.deployments if w > 0 and keys]
        if not live:
            return None
        weights = [w for w, _ in live]
        _, keys = random.choices(live, weights=weights)[0]
        with self._lock:
            candidates = [(k, self.slots[k]) for k in keys if k in self.slots]
        candidates = [(k, s) for k, s in candidates if not s.broken]
        if not candidates:
            return None
        return min(candidates, key=lambda pair: pair[1].waiting)

    def mark_broken(self, key: tuple, reason: str) -> None:
        slot = self.slots.get(key)
        if slot is not None:
            slot.broken = True
            log.error("engine %s failed, will be reloaded: %s", key, reason)

    # --- the loop ------------------------------------------------------------------------------
    def start(self, interval: float = 1.0) -> None:
        self._thread = threading.Thread(
            target=self._loop, args=(interval,), name="reconciler", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._lock:
            slots, self.slots = list(self.slots.values()), {}
        for slot in slots:
            slot.engine.close()

    def _loop(self, interval: float) -> None:
        while not self._stop.is_set():
            close_old_connections()
            try:
                self.reconcile()
            except Exception:
                log.exception("reconcile pass failed; trying again")
            self._stop.wait(interval)

    def reconcile(self) -> None:
        endpoints = list(
            Endpoint.objects.alive()
            .filter(workspace__provider="local")
            .select_related("offering")
            .prefetch_related("deployments")
        )
        wanted: dict[tuple, tuple[Offering, int, int, int]] = {}
        routes: dict[str, Route] = {}
        for ep in endpoints:
            if ep.provisioning_state == ProvisioningState.DELETING:
                self._finish_delete(ep)
                continue
            route, needs = self._plan(ep)
            wanted.update(needs)
            errors = [msg for key in needs if (msg := self._ensure(key, *needs[key]))]
            self._report(ep, errors, route)
            routes[ep.name] = route

        with self._lock:
            for key in [k for k in self.slots if k not in wanted or self.slots[k].broken]:
                log.info("unloading engine %s", key)
                # Requests still on it finish; it is freed when the last one lets go of it.
                del self.slots[key]
            self.routes = routes

    def _plan(self, ep: Endpoint) -> tuple[Route, dict[tuple, tuple[Offering, int, int, int]]]:
        offering = ep.offering
        route = Route(
            endpoint_id=ep.pk, name=ep.name, family=offering.api_family if offering else ""
        )
        needs: dict[tuple, tuple[Offering, int, int, int]] = {}
        if offering is None:
            return route, needs
        if ep.kind == Endpoint.Kind.SERVERLESS:
            key = ("shared", offering.pk)
            n_ctx = min(offering.context_length or 4096, SERVERLESS_MAX_CTX)
            needs[key] = (
                offering,
                n_ctx,
                machine_cores(),
                settings.OPSPORTAL_RUNTIME_SERVERLESS_SLOTS,
            )
            route.deployments.append((100, [key]))
            return route, needs
        for dep in ep.deployments.all():
            if dep.deleted_at is not None or dep.state == ProvisioningState.DELETING:
                continue
            size = INSTANCE_TYPES.get(dep.vm_sku)
            if size is None:
                continue
            keys = []
            for i in range(dep.instance_count):
                key = ("replica", dep.pk, i)
                needs[key] = (offering, size["n_ctx"], size["threads"], size["slots"])
                keys.append(key)
            route.deployments.append((dep.traffic_percent, keys))
        return route, needs

    def _ensure(
        self, key: tuple, offering: Offering, n_ctx: int, threads: int, slots: int
    ) -> str | None:
        """Load the engine for `key` if it is not loaded; return an error message if it fails."""
        slot = self.slots.get(key)
        if slot is not None and not slot.broken:
            return None
        failed = self._failed.get(key)
        if failed and time.monotonic() - failed[0] < RETRY_FAILED_LOAD_AFTER:
            return failed[1]
        if not offering.local_model_path:
            return f"{offering.display_name} has no local model file."
        started = time.monotonic()
        try:
            engine = Engine(offering.local_model_path, n_ctx=n_ctx, n_threads=threads, slots=slots)
        except EngineError as exc:
            self._failed[key] = (time.monotonic(), str(exc))
            return str(exc)
        self._failed.pop(key, None)
        with self._lock:
            self.slots[key] = EngineSlot(engine)
        log.info("loaded %s for %s in %.1fs", offering.slug, key, time.monotonic() - started)
        return None

    def _report(self, ep: Endpoint, errors: list[str], route: Route) -> None:
        if errors:
            state, message = ProvisioningState.FAILED, "; ".join(sorted(set(errors)))
        elif ep.kind == Endpoint.Kind.MANAGED and not route.deployments:
            state, message = ProvisioningState.SUCCEEDED, "No deployments: requests get 503."
        else:
            state, message = ProvisioningState.SUCCEEDED, ""
        uri = scoring_uri(ep.name)
        if (ep.provisioning_state, ep.status_message, ep.scoring_uri) != (state, message, uri):
            Endpoint.objects.filter(pk=ep.pk).update(
                provisioning_state=state,
                status_message=message,
                scoring_uri=uri,
                updated_at=timezone.now(),
            )
        if ep.kind != Endpoint.Kind.MANAGED:
            return  # serverless endpoints have no deployments: no queries on every pass
        deployment_state = ProvisioningState.FAILED if errors else ProvisioningState.SUCCEEDED
        for dep in ep.deployments.all():
            if dep.deleted_at is not None or dep.state in (
                deployment_state,
                ProvisioningState.DELETING,
            ):
                continue
            # Only as planned in this pass: a deployment scaled meanwhile waits for the next.
            ManagedDeployment.objects.filter(
                pk=dep.pk, instance_count=dep.instance_count, vm_sku=dep.vm_sku
            ).exclude(state__in=[deployment_state, ProvisioningState.DELETING]).update(
                state=deployment_state, updated_at=timezone.now()
            )
        ManagedDeployment.objects.alive().filter(
            endpoint=ep, state=ProvisioningState.DELETING
        ).update(deleted_at=timezone.now())

    def _finish_delete(self, ep: Endpoint) -> None:
        now = timezone.now()
        ManagedDeployment.objects.alive().filter(endpoint=ep).update(
            deleted_at=now, state=ProvisioningState.DELETING
        )
        Endpoint.objects.filter(pk=ep.pk).update(deleted_at=now, updated_at=now)
        log.info("endpoint %s deleted", ep.name)
