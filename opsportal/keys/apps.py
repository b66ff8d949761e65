from django.apps import AppConfig


class KeysConfig(AppConfig):
    name = "opsportal.keys"
    label = "keys"
    verbose_name = "Endpoint keys"
