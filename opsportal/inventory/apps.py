from django.apps import AppConfig


class InventoryConfig(AppConfig):
    name = "opsportal.inventory"
    label = "inventory"

    def ready(self) -> None:
        # Registers the sync's job runner (opsportal.jobs.services.runner).
        from opsportal.inventory import jobs  # noqa: F401
