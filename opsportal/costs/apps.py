from django.apps import AppConfig


class CostsConfig(AppConfig):
    name = "opsportal.costs"
    label = "costs"
