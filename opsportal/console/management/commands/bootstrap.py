from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from opsportal.accounts.services import admin_user_ensure
from opsportal.inventory.services import local_workspace_ensure


class Command(BaseCommand):
    help = (
        "Make sure the local account, team and workspace exist, and the first admin if configured."
    )

    def handle(self, *args: object, **options: object) -> None:
        workspace = local_workspace_ensure()
        self.stdout.write(f"Local workspace ready: {workspace.name} (team {workspace.team}).")
        email = settings.OPSPORTAL_ADMIN_EMAIL
        if email:
            _, created = admin_user_ensure(
                email=email, password=settings.OPSPORTAL_ADMIN_PASSWORD or None, team=workspace.team
            )
            if created:
                self.stdout.write(
                    self.style.SUCCESS(f"Admin {email} created from the environment.")
                )
        if not get_user_model().objects.filter(is_superuser=True).exists():
            self.stdout.write(
                self.style.WARNING(
                    "No admin yet. Create one (in another terminal):\n"
                    "    .venv/bin/python manage.py create_admin --email you@example.com\n"
                    "or set OPSPORTAL_ADMIN_EMAIL and OPSPORTAL_ADMIN_PASSWORD before `make run`."
                )
            )
