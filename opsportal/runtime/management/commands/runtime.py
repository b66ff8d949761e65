"""Run the local runtime alone: control loop, gateway and metering in one process."""

import logging

import uvicorn
from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from opsportal.runtime.control import Runtime
from opsportal.runtime.gateway import Gateway
from opsportal.runtime.metering import Meter

log = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Serve local endpoints: load models for the desired deployments and run the gateway."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=settings.OPSPORTAL_RUNTIME_HOST)
        parser.add_argument("--port", type=int, default=settings.OPSPORTAL_RUNTIME_PORT)
        parser.add_argument("--interval", type=float, default=1.0, help="Reconcile every N s.")

    def handle(self, *args: object, host: str, port: int, interval: float, **opts: object) -> None:
        runtime, meter = Runtime(), Meter()
        meter.start()
        runtime.start(interval=interval)
        gateway = Gateway(runtime, meter)
        self.stdout.write(f"Local runtime gateway on http://{host}:{port}/")
        try:
            uvicorn.run(
                gateway.app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5
            )
        finally:
            runtime.stop()
            meter.stop()
