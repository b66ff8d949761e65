from django.apps import AppConfig


class InventoryConfig(AppConfig):
    name = "opsportal.inventory"
    label = "inventory"
