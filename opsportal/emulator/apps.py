from django.apps import AppConfig


class EmulatorConfig(AppConfig):
    name = "opsportal.emulator"
    label = "emulator"
    verbose_name = "Azure emulator"
