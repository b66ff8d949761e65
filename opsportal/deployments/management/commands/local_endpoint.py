"""Manage local endpoints from the shell, through the local provider (the same calls the
console's jobs make)."""

import time

from django.core.management.base import BaseCommand, CommandError, CommandParser

from opsportal.inventory.models import Offering
from opsportal.inventory.services import local_workspace_ensure
from opsportal.providers import ProviderError, for_workspace
from opsportal.providers.local import LocalProvider

BUNDLED = "smollm2-135m-instruct"


class Command(BaseCommand):
    help = "Create, list, show keys of, re-key or delete endpoints in the local workspace."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help="Deploy a local offering as an endpoint.")
        create.add_argument("name")
        create.add_argument("--offering", default=BUNDLED)
        create.add_argument(
            "--accept-licence",
            action="store_true",
            help="Accept the model's licence for this workspace if needed.",
        )
        create.add_argument(
            "--wait",
            type=float,
            default=60,
            help="Seconds to wait for Succeeded (the runtime must be running).",
        )
        sub.add_parser("list")
        keys = sub.add_parser("keys", help="Print both keys (they are secrets).")
        keys.add_argument("name")
        regen = sub.add_parser("regenerate", help="Regenerate one key.")
        regen.add_argument("name")
        regen.add_argument("slot", choices=["primary", "secondary"])
        delete = sub.add_parser("delete")
        delete.add_argument("name")

    def handle(self, *args: object, action: str, **o: object) -> None:
        provider = for_workspace(local_workspace_ensure())
        try:
            getattr(self, f"_{action}")(provider, **o)
        except ProviderError as exc:
            raise CommandError(exc.message) from exc

    def _create(
        self,
        provider: LocalProvider,
        *,
        name: str,
        offering: str,
        accept_licence: bool,
        wait: float,
        **_: object,
    ) -> None:
        if provider.subscription_status(offering_slug=offering) is None:
            if not accept_licence:
                terms = (
                    Offering.objects.filter(slug=offering).values_list("terms_url", flat=True)
                ).first() or "see the catalog"
                raise CommandError(
                    f"First accept the model's licence ({terms}): run again with --accept-licence."
                )
            provider.subscription_create(offering_slug=offering)
        info = provider.endpoint_create(name=name, kind="serverless", offering_slug=offering)
        self.stdout.write(f"Creating {info.name} ...")
        deadline = time.monotonic() + wait
        while (
            info.provisioning_state not in ("Succeeded", "Failed") and time.monotonic() < deadline
        ):
            time.sleep(0.5)
            info = provider.endpoint_get(name)
        self.stdout.write(f"{info.name}: {info.provisioning_state} {info.status_message}".rstrip())
        self.stdout.write(f"Scoring URI: {info.scoring_uri}")
        if info.provisioning_state != "Succeeded":
            self.stdout.write("Is the runtime running? (`make run`, or `manage.py runtime`)")

    def _list(self, provider: LocalProvider, **_: object) -> None:
        for info in provider.endpoints_list():
            self.stdout.write(
                f"{info.name:32} {info.kind:10} {info.provisioning_state:10} {info.scoring_uri}"
            )

    def _keys(self, provider: LocalProvider, *, name: str, **_: object) -> None:
        keys = provider.keys_get(name=name)
        self.stdout.write(f"primary:   {keys.primary}\nsecondary: {keys.secondary}")

    def _regenerate(self, provider: LocalProvider, *, name: str, slot: str, **_: object) -> None:
        provider.key_regenerate(name=name, slot=slot)
        self.stdout.write(f"{slot} key of {name} regenerated; the old one is refused from now on.")

    def _delete(self, provider: LocalProvider, *, name: str, **_: object) -> None:
        provider.endpoint_delete(name=name)
        self.stdout.write(f"{name} is being deleted; its keys no longer work.")
