from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "opsportal.accounts"
    label = "accounts"
