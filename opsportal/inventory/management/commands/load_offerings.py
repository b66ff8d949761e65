from django.core.management.base import BaseCommand

from opsportal.inventory.models import Offering
from opsportal.inventory.services import offerings_load


class Command(BaseCommand):
    help = "Create or update the model catalog from opsportal/inventory/data/offerings.json."

    def handle(self, *args: object, **options: object) -> None:
        created, updated = offerings_load(offering_model=Offering)
        self.stdout.write(f"Catalog loaded: {created} created, {updated} updated.")
