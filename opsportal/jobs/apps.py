from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "opsportal.jobs"
    label = "jobs"
