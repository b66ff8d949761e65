"""Run the whole embedded stack in the foreground: web, worker, beat. Ctrl-C stops them all."""

import os
import signal
import subprocess
import sys
import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = "Start the ASGI web server, one Celery worker and beat; stop them all on Ctrl-C."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=os.environ.get("OPSPORTAL_HOST", "127.0.0.1"))
        parser.add_argument(
            "--port", type=int, default=int(os.environ.get("OPSPORTAL_PORT", "8000"))
        )
        parser.add_argument("--concurrency", type=int, default=2, help="Worker processes.")

    def handle(
        self, *args: object, host: str, port: int, concurrency: int, **options: object
    ) -> None:
        py = sys.executable
        commands = {
            "web": [
                py,
                "-m",
                "uvicorn",
                "opsportal.asgi:application",
                "--host",
                host,
                "--port",
                str(port),
                "--no-access-log",
            ],
            "worker": [
                py,
                "-m",
                "celery",
                "-A",
                "opsportal",
                "worker",
                "-l",
                "info",
                "--concurrency",
                str(concurrency),
                "-n",
                "worker@%h",
            ],
            "beat": [
                py,
                "-m",
                "celery",
                "-A",
                "opsportal",
                "beat",
                "-l",
                "info",
                "-s",
                settings.CELERY_BEAT_SCHEDULE_FILENAME,
            ],
        }
        children: dict[str, subprocess.Popen[bytes]] = {}
        stopping = False

        def stop(signum: int, frame: object) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        for name, command in commands.items():
            children[name] = subprocess.Popen(command, start_new_session=True)
        self.stdout.write(
            self.style.SUCCESS(
                f"opsportal is running at http://{host}:{port}/ (web, worker, beat). "
                "Ctrl-C stops it."
            )
        )
        exit_code = 0
        while not stopping:
            for name, child in children.items():
                if child.poll() is not None:
                    self.stderr.write(
                        f"{name} exited with code {child.returncode}; stopping the rest."
                    )
                    exit_code = child.returncode or 1
                    stopping = True
                    break
            time.sleep(0.5)
        self._stop_all(children)
        if exit_code:
            sys.exit(exit_code)

    def _stop_all(self, children: dict[str, "subprocess.Popen[bytes]"]) -> None:
        for child in children.values():
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for name, child in children.items():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.stderr.write(f"{name} did not stop in time; killing it.")
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
        self.stdout.write("Stopped.")
