from django.apps import AppConfig


class RuntimeConfig(AppConfig):
    name = "opsportal.runtime"
    label = "runtime"

    def ready(self) -> None:
        # Registers the local back end with opsportal.providers.
        from opsportal.providers import local  # noqa: F401
