"""Run the Azure emulator over TLS and print the environment that points the console at it."""

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from opsportal.emulator.server import listening_sockets, prepare, serve
from opsportal.emulator.world import world_load


class Command(BaseCommand):
    help = (
        "Run a stateful Azure emulator (Entra tokens, ARM, Cost Management, Key Vault, endpoint "
        "data planes) over TLS; writes its CA and console.env into --dir."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8443)
        parser.add_argument(
            "--world", default="", help="a world JSON file (see opsportal/emulator/world.py)"
        )
        parser.add_argument(
            "--speed", type=float, default=1.0, help="emulated seconds per real second"
        )
        parser.add_argument("--dir", default=str(Path(settings.VAR_DIR) / "azure-emulator"))

    def handle(self, *args: Any, **options: Any) -> None:
        directory = Path(options["dir"]).resolve()
        prepared = prepare(
            world=world_load(options["world"] or None),
            directory=directory,
            host=options["host"],
            port=options["port"],
            speed=options["speed"],
        )
        sockets = listening_sockets(prepared)
        self.stdout.write(f"Azure emulator on {prepared.base_url} (clock x{options['speed']:g})")
        self.stdout.write(f"CA certificate: {prepared.tls.ca_pem}")
        self.stdout.write(
            f"Point the console at it with these variables ({directory / 'console.env'}):"
        )
        for name, value in prepared.env.items():
            self.stdout.write(f"export {name}={value}")
        for name, port in prepared.vault_ports.items():
            self.stdout.write(f"Key Vault {name}: port {port}")
        self.stdout.write(f"Control API: {prepared.base_url}/_emulator/state (see BEHAVIOUR.md)")
        self.stdout.flush()
        serve(prepared, sockets)
