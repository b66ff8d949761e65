from django.apps import AppConfig


class ConsoleConfig(AppConfig):
    """The pages that bring several apps together (dashboard, endpoint, workspace, team) and
    the commands that run the whole console."""

    name = "opsportal.console"
    label = "console"
