from django.apps import AppConfig


class RuntimeConfig(AppConfig):
    name = "opsportal.runtime"
    label = "runtime"
