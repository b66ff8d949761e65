from django.apps import AppConfig


class SyncConfig(AppConfig):
    """The Azure inventory sync: its service, its job, beat's entry and the Subscriptions page."""

    name = "opsportal.sync"
    label = "sync"

    def ready(self) -> None:
        # Registers the sync's job runner (opsportal.jobs.services.runner).
        from opsportal.sync import jobs  # noqa: F401
