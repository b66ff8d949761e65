"""Fill the console with a realistic fleet for demos and benchmarks.

Everything it makes is marked demo (accounts and teams with is_demo, names starting "demo-"),
lives under its own accounts, and `--delete` removes exactly that and nothing else.
"""

import random
import uuid

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection, transaction
from django.utils import timezone

from opsportal.accounts.models import Team
from opsportal.inventory.models import (
    CloudAccount,
    Endpoint,
    ManagedDeployment,
    MarketplaceSubscription,
    Offering,
    Provider,
    ProvisioningState,
    Workspace,
)

REGIONS = [
    "eastus",
    "eastus2",
    "northcentralus",
    "southcentralus",
    "westus",
    "westus3",
    "swedencentral",
    "westeurope",
]
VM_SKUS = [
    "Standard_NC24ads_A100_v4",
    "Standard_NC48ads_A100_v4",
    "Standard_ND96asr_v4",
    "Standard_NC6s_v3",
]
STATES = [ProvisioningState.SUCCEEDED] * 46 + [
    ProvisioningState.CREATING,
    ProvisioningState.FAILED,
    ProvisioningState.UPDATING,
    ProvisioningState.DELETING,
]


class Command(BaseCommand):
    help = (
        "Create (or with --delete remove) clearly marked demo accounts, workspaces and endpoints."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--subscriptions", type=int, default=20)
        parser.add_argument("--workspaces", type=int, default=500)
        parser.add_argument("--endpoints", type=int, default=10_000)
        parser.add_argument("--teams", type=int, default=25)
        parser.add_argument(
            "--seed", type=int, default=7, help="Random seed: same input, same data."
        )
        parser.add_argument("--delete", action="store_true", help="Remove all demo data and stop.")

    def handle(self, *args: object, **opts: int | bool) -> None:
        if opts["delete"]:
            self._delete()
            return
        subs, wss, eps, teams = (
            int(opts[k]) for k in ("subscriptions", "workspaces", "endpoints", "teams")
        )
        if min(subs, wss, teams) < 1 or eps < 0 or wss < subs:
            raise CommandError(
                "Need at least one subscription, team and workspace, and no fewer "
                "workspaces than subscriptions."
            )
        if CloudAccount.objects.filter(is_demo=True).exists():
            raise CommandError("Demo data exists already; run with --delete first.")
        offerings = list(Offering.objects.all())
        if not offerings:
            raise CommandError("The catalog is empty: run `manage.py migrate` first.")
        with transaction.atomic():
            created = self._seed(random.Random(opts["seed"]), subs, wss, eps, teams, offerings)
        # Fresh bulk rows have no planner statistics yet; without them PostgreSQL picks
        # plans fit for empty tables until autovacuum catches up. (SQLite keeps no
        # statistics unless asked, and plans these pages better without them.)
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("ANALYZE")
        summary = ", ".join(f"{count} {what}" for what, count in created.items())
        self.stdout.write(self.style.SUCCESS(f"Demo data created: {summary}."))

    def _delete(self) -> None:
        with transaction.atomic():
            accounts = CloudAccount.objects.filter(is_demo=True)
            workspaces = Workspace.objects.filter(account__in=accounts)
            endpoints = Endpoint.objects.filter(workspace__in=workspaces)
            ManagedDeployment.objects.filter(endpoint__in=endpoints).delete()
            n_endpoints = endpoints.delete()[0]
            MarketplaceSubscription.objects.filter(workspace__in=workspaces).delete()
            workspaces.delete()
            n_accounts = accounts.delete()[0]
            Team.objects.filter(is_demo=True).delete()
        self.stdout.write(
            f"Demo data removed ({n_accounts} subscriptions, {n_endpoints} rows under them)."
        )

    def _seed(
        self,
        rnd: random.Random,
        n_subs: int,
        n_ws: int,
        n_eps: int,
        n_teams: int,
        offerings: list[Offering],
    ) -> dict[str, int]:
        now = timezone.now()
        teams = Team.objects.bulk_create(
            [
                Team(name=f"demo-team-{i:03d}", slug=f"demo-team-{i:03d}", is_demo=True)
                for i in range(n_teams)
            ]
        )
        accounts = CloudAccount.objects.bulk_create(
            [
                CloudAccount(
                    provider=Provider.AZURE,
                    subscription_id=str(uuid.UUID(int=rnd.getrandbits(128))),
                    tenant_id="demo-tenant",
                    display_name=f"demo-subscription-{i:02d}",
                    is_demo=True,
                    status=CloudAccount.Status.OK,
                    last_sync_at=now,
                )
                for i in range(n_subs)
            ]
        )
        workspaces = Workspace.objects.bulk_create(
            [
                Workspace(
                    account=accounts[i % n_subs],
                    name=f"demo-ws-{i:04d}",
                    resource_group=f"demo-rg-{i // 10:03d}",
                    region=REGIONS[i % len(REGIONS)],
                    provider=Provider.AZURE,
                    team=teams[i % n_teams],
                )
                for i in range(n_ws)
            ]
        )
        serverless = [o for o in offerings if o.serverless]
        managed = [o for o in offerings if o.managed_compute]
        endpoints: list[Endpoint] = []
        subscriptions: list[MarketplaceSubscription] = []
        per_ws = [n_eps // n_ws + (1 if i < n_eps % n_ws else 0) for i in range(n_ws)]
        for wi, (ws, count) in enumerate(zip(workspaces, per_ws, strict=True)):
            allowed = [o for o in serverless if ws.region in o.serverless_regions]
            rnd.shuffle(allowed)
            # One serverless endpoint per offering per workspace: the rest are managed.
            n_serverless = min(len(allowed), count // 2)
            for k in range(count):
                state = rnd.choice(STATES)
                if k < n_serverless:
                    offering = allowed[k]
                    name = f"demo-{offering.slug[:30]}-{wi:04d}"
                    endpoints.append(
                        Endpoint(
                            workspace=ws,
                            kind=Endpoint.Kind.SERVERLESS,
                            name=name,
                            offering=offering,
                            region=ws.region,
                            provisioning_state=state,
                            content_safety=True,
                            scoring_uri=f"https://{name}.{ws.region}.models.ai.azure.com",
                        )
                    )
                    subscriptions.append(
                        MarketplaceSubscription(
                            workspace=ws,
                            offering=offering,
                            name=f"{offering.slug}-{wi:04d}",
                            state=MarketplaceSubscription.State.SUCCEEDED,
                        )
                    )
                else:
                    offering = rnd.choice(managed)
                    name = f"demo-managed-{wi:04d}-{k:03d}"
                    endpoints.append(
                        Endpoint(
                            workspace=ws,
                            kind=Endpoint.Kind.MANAGED,
                            name=name,
                            offering=offering,
                            region=ws.region,
                            provisioning_state=state,
                            content_safety=rnd.random() < 0.7,
                            scoring_uri=f"https://{name}.{ws.region}.inference.ml.azure.com/score",
                        )
                    )
        Endpoint.objects.bulk_create(endpoints, batch_size=2000)
        MarketplaceSubscription.objects.bulk_create(subscriptions, batch_size=2000)
        deployments = [
            ManagedDeployment(
                endpoint=e,
                name="blue",
                vm_sku=rnd.choice(VM_SKUS),
                instance_count=rnd.randint(1, 3),
                traffic_percent=100,
                state=e.provisioning_state,
            )
            for e in endpoints
            if e.kind == Endpoint.Kind.MANAGED
        ]
        ManagedDeployment.objects.bulk_create(deployments, batch_size=2000)
        return {
            "subscriptions": len(accounts),
            "workspaces": len(workspaces),
            "endpoints": len(endpoints),
            "managed deployments": len(deployments),
            "Marketplace subscriptions": len(subscriptions),
        }
