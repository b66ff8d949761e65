"""Run the whole embedded stack in the foreground: web, worker, beat and the local runtime.

A process that exits is started again, after a pause that grows while it keeps exiting (1, 2,
4 ... 30 s; back to 1 s once it has stayed up for a minute), with a line saying so. Only Ctrl-C
(or SIGTERM) stops them all.
"""

import os
import signal
import subprocess
import sys
import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

MAX_PAUSE_S = 30.0
# A process that stayed up this long was healthy: its next exit starts the back-off afresh.
HEALTHY_AFTER_S = 60.0


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
        if settings.CELERY_BROKER_URL.startswith("sqlite:"):
            # The embedded broker has no broadcast: nothing to exchange with other workers.
            commands["worker"] += ["--without-mingle", "--without-gossip"]
        children: dict[str, subprocess.Popen[bytes]] = {}
        started_at: dict[str, float] = {}
        crashes: dict[str, int] = {}
        restart_at: dict[str, float] = {}
        stopping = False

        def stop(signum: int, frame: object) -> None:
            nonlocal stopping
            stopping = True

        def start(name: str) -> None:
            children[name] = subprocess.Popen(commands[name], start_new_session=True)
            started_at[name] = time.monotonic()

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        for name in commands:
            start(name)
        self.stdout.write(
            self.style.SUCCESS(
                f"opsportal is running at http://{host}:{port}/ (web, worker, beat; local runtime "
                f"gateway on port {runtime_port}). Ctrl-C stops it."
            )
        )
        while not stopping:
            now = time.monotonic()
            for name, child in list(children.items()):
                if child.poll() is None:
                    continue
                if name in restart_at:
                    if now >= restart_at[name]:
                        del restart_at[name]
                        self._say(f"starting {name} again")
                        start(name)
                    continue
                if now - started_at[name] >= HEALTHY_AFTER_S:
                    crashes[name] = 0
                pause = min(MAX_PAUSE_S, 2.0 ** crashes.get(name, 0))
                crashes[name] = crashes.get(name, 0) + 1
                restart_at[name] = now + pause
                self._say(
                    f"{name} exited with code {child.returncode}; starting it again in "
                    f"{pause:.0f} s (exit {crashes[name]} in a row)."
                )
            time.sleep(0.5)
        self._stop_all(children)

    def _say(self, message: str) -> None:
        self.stderr.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} runstack: {message}")

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
