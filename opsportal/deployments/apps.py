from django.apps import AppConfig


class DeploymentsConfig(AppConfig):
    name = "opsportal.deployments"
    label = "deployments"

    def ready(self) -> None:
        # Registers this app's job runners (opsportal.jobs.services.runner).
        from opsportal.deployments.jobs import change, delete, deploy  # noqa: F401
