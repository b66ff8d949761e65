from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "opsportal.core"
    label = "core"
