from django.apps import AppConfig


class ChatConfig(AppConfig):
    name = "opsportal.chat"
    label = "chat"
