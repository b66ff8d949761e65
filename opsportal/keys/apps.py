from django.apps import AppConfig


class KeysConfig(AppConfig):
    name = "opsportal.keys"
    label = "keys"
    verbose_name = "Endpoint keys"

    def ready(self) -> None:
        # Registers this app's job runners (opsportal.jobs.services.runner).
        from opsportal.keys import jobs  # noqa: F401
