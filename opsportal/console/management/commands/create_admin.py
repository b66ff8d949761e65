import getpass
import secrets
import sys

from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from opsportal.accounts.services import admin_user_ensure
from opsportal.inventory.services import local_workspace_ensure


class Command(BaseCommand):
    help = "Create a superuser who logs in with an email; asks for a password or makes one."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--email", required=True)
        parser.add_argument(
            "--password", help="Omit to be asked (or, without a terminal, to get a generated one)."
        )

    def handle(self, *args: object, email: str, password: str | None, **options: object) -> None:
        generated = False
        if password is None and sys.stdin.isatty():
            password = getpass.getpass("Password: ")
            if password != getpass.getpass("Password (again): "):
                raise CommandError("The passwords differ.")
        if not password:
            password, generated = secrets.token_urlsafe(12), True
        try:
            validate_password(password)
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from exc
        team = local_workspace_ensure().team
        user, created = admin_user_ensure(email=email, password=password, team=team)
        if not created:
            user.set_password(password)
            user.is_superuser = user.is_staff = True
            user.save()
        self.stdout.write(
            self.style.SUCCESS(f"Admin {email} {'created' if created else 'updated'}.")
        )
        if generated:
            self.stdout.write(f"Generated password (shown once): {password}")
