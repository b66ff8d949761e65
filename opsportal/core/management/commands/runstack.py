"""Run the whole embedded stack in the foreground: web, worker, beat and the local runtime.

Ctrl-C stops them all. The runtime holds native inference code: if it dies it is started
again (after a pause that grows while it keeps dying); if any other process dies, everything
stops, so a broken install never looks half alive.
"""

import os
import signal
import subprocess
import sys
import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

RESTARTED = {"runtime"}


class Command(BaseCommand):
    help = "Start the web server, a Celery worker, beat and the local runtime; Ctrl-C stops all."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=os.environ.get("OPSPORTAL_HOST", "127.0.0.1"))
        parser.add_argument(
            "--port", type=int, default=int(os.environ.get("OPSPORTAL_PORT", "8000"))
        )
        parser.add_argument("--concurrency", type=int, default=2, help="Worker processes.")
        parser.add_argument("--runtime-port", type=int, default=settings.OPSPORTAL_RUNTIME_PORT)

    def handle(
        self,
        *args: object,
        host: str,
        port: int,
        concurrency: int,
        runtime_port: int,
        **options: object,
    ) -> None:
        py = sys.executable
        celery = [py, "-m", "celery", "-A", "opsportal"]
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
                *celery,
                "worker",
                "-l",
                "info",
                "--concurrency",
                str(concurrency),
                "-n",
                "worker@%h",
            ],
            "beat": [*celery, "beat", "-l", "info", "-s", settings.CELERY_BEAT_SCHEDULE_FILENAME],
            "runtime": [py, "manage.py", "runtime", "--port", str(runtime_port)],
        }
        children: dict[str, subprocess.Popen[bytes]] = {}
        restarts: dict[str, tuple[int, float]] = {}  # name -> (crashes in a row, restart at)
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
                f"opsportal is running at http://{host}:{port}/ (web, worker, beat; local runtime "
                f"gateway on port {runtime_port}). Ctrl-C stops it."
            )
        )
        exit_code = 0
        while not stopping:
            now = time.monotonic()
            for name, child in list(children.items()):
                if child.poll() is None:
                    continue
                if name in RESTARTED:
                    crashes, at = restarts.get(name, (0, 0.0))
                    if at == 0.0:
                        pause = min(30.0, 2.0**crashes)
                        self.stderr.write(
                            f"{name} exited with code {child.returncode}; "
                            f"starting it again in {pause:.0f} s."
                        )
                        restarts[name] = (crashes + 1, now + pause)
                    elif now >= at:
                        children[name] = subprocess.Popen(commands[name], start_new_session=True)
                        restarts[name] = (crashes, 0.0)
                    continue
                self.stderr.write(f"{name} exited with code {child.returncode}; stopping the rest.")
                exit_code = child.returncode or 1
                stopping = True
                break
            time.sleep(0.5)
        self._stop_all(children)
        if exit_code:
            sys.exit(exit_code)

    def _stop_all(self, children: dict[str, "subprocess.Popen[bytes]"]) -> None:
        # The main process of each: Celery then stops its own pool (a warm shutdown).
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for name, child in children.items():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.stderr.write(f"{name} did not stop in time; killing it.")
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
        self.stdout.write("Stopped.")
