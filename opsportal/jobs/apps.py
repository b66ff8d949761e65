from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "opsportal.jobs"
    label = "jobs"

    def ready(self) -> None:
        # Registers the job task with Celery in every process, so job_enqueue finds it by name.
        from opsportal.jobs import tasks  # noqa: F401
