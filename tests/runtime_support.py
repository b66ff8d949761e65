"""A real local runtime (control loop, gateway, metering) on a free port, in this process."""

import socket
import threading
import time
from dataclasses import dataclass

import uvicorn
from django.db import connections

from opsportal.inventory.models import Endpoint, ProvisioningState, Workspace
from opsportal.inventory.services import local_workspace_ensure
from opsportal.providers import for_workspace
from opsportal.providers.local import LocalProvider
from opsportal.runtime.control import Runtime
from opsportal.runtime.gateway import Gateway
from opsportal.runtime.metering import Meter

SMOL = "smollm2-135m-instruct"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunningRuntime:
    url: str
    runtime: Runtime
    meter: Meter
    workspace: Workspace
    server: uvicorn.Server
    thread: threading.Thread

    def stop_gateway(self) -> None:
        """Take the data plane down (the control loop keeps running)."""
        self.server.should_exit = True
        self.thread.join(timeout=10)

    @property
    def provider(self) -> LocalProvider:
        return for_workspace(self.workspace)

    def deploy(
        self, name: str, *, offering: str = SMOL, kind: str = "serverless", timeout: float = 60
    ) -> tuple[str, str]:
        """Create a serverless endpoint and wait for Succeeded; return (scoring URI, key)."""
        provider = self.provider
        provider.subscription_create(offering_slug=offering)
        info = provider.endpoint_create(name=name, kind=kind, offering_slug=offering)
        self.wait_state(name, ProvisioningState.SUCCEEDED, timeout=timeout)
        return info.scoring_uri, provider.keys_get(name=name).primary

    def wait_state(self, name: str, state: str, timeout: float = 60) -> Endpoint:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ep = Endpoint.objects.filter(name=name).order_by("-pk").first()
            if ep is not None and ep.provisioning_state == state and name in self.runtime.routes:
                return ep
            if ep is not None and state == "deleted" and ep.deleted_at is not None:
                return ep
            time.sleep(0.1)
        raise AssertionError(f"{name} did not reach {state} in {timeout}s")

    def wait_route(self, name: str, holds, timeout: float = 60):  # type: ignore[no-untyped-def]
        """The runtime's route of an endpoint once `holds(route)` is true (it is rebuilt on
        every reconcile pass)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            route = self.runtime.routes.get(name)
            if route is not None and holds(route):
                return route
            time.sleep(0.1)
        raise AssertionError(f"the route of {name} never held: {self.runtime.routes.get(name)}")


def start_runtime(settings, port: int | None = None) -> tuple[RunningRuntime, callable]:
    port = port or free_port()
    settings.OPSPORTAL_RUNTIME_URL = f"http://127.0.0.1:{port}"
    runtime, meter = Runtime(), Meter(interval=0.1)
    meter.start()
    runtime.start(interval=0.2)
    gateway = Gateway(runtime, meter)
    server = uvicorn.Server(
        uvicorn.Config(
            gateway.app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "gateway did not start"

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=10)
        runtime.stop()
        meter.stop()
        connections.close_all()

    running = RunningRuntime(
        f"http://127.0.0.1:{port}", runtime, meter, local_workspace_ensure(), server, thread
    )
    return running, stop
