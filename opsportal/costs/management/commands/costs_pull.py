from django.core.management.base import BaseCommand, CommandError, CommandParser

from opsportal.costs.services import azure_costs_pull_all, local_costs_compute
from opsportal.providers import azure_cloud


class Command(BaseCommand):
    help = (
        "Pull cost now: the local runtime's meters, and each Azure subscription's from Cost "
        "Management (beat does this every OPSPORTAL_COST_PULL_HOURS; --force ignores that)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--force", action="store_true", help="Pull even if pulled recently.")

    def handle(self, *args: object, force: bool, **options: object) -> None:
        self.stdout.write(f"Local runtime: {local_costs_compute()} meter rows.")
        configured, how = azure_cloud.configured()
        if not configured:
            self.stdout.write(how)
            return
        failed = False
        for pull in azure_costs_pull_all(credential=azure_cloud.credential(), force=force):
            line = pull.error or f"{pull.rows} rows, data as of {pull.data_as_of or '-'}"
            self.stdout.write(f"{pull.account.display_name}: {line}")
            failed = failed or bool(pull.error)
        if failed:
            raise CommandError("Some subscriptions could not be pulled (see above).")
