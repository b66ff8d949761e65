"""The Azure emulator in this process: uvicorn on a thread, TLS on free loopback ports, the
environment and settings that point the console at it, and a small client for its control API.

A test module starts one with `running_emulator()` in a session fixture (the model loads once
per process, on the first data-plane call) and gives each test `emulator_fresh(...)`."""

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from opsportal.emulator.server import prepare, serve_in_thread
from opsportal.emulator.world import world_merge

# Test durations: long enough to be seen Creating, short enough at the test clock's speed.
FAST = {
    "marketplace_create": 5,
    "marketplace_delete": 5,
    "serverless_create": 30,
    "serverless_update": 10,
    "serverless_delete": 20,
    "online_endpoint_create": 30,
    "online_endpoint_update": 20,
    "online_endpoint_delete": 30,
    "deployment_create": 60,
    "deployment_update": 30,
    "deployment_delete": 30,
    "online_keys": 5,
}
SPEED = 120.0  # emulated seconds per real second: an operation of 60 s takes half a second


class Control:
    """The emulator's control API (/_emulator/...) over HTTPS with its CA."""

    def __init__(self, base_url: str, ca: str) -> None:
        self.base = f"{base_url}/_emulator"
        self.ca = ca
        self.session = requests.Session()

    def _call(self, verb: str, path: str, body: Any = None, params: Any = None) -> Any:
        response = self.session.request(
            verb, f"{self.base}/{path}", json=body, params=params, timeout=30, verify=self.ca
        )
        response.raise_for_status()
        return response.json()

    def reset(self, world: dict[str, Any] | None = None) -> None:
        self._call("POST", "reset", world or {})

    def config(self, **changes: Any) -> dict[str, Any]:
        return self._call("POST", "config", changes)

    def state(self) -> dict[str, Any]:
        return self._call("GET", "state")

    def requests(self, **filters: str) -> list[dict[str, Any]]:
        return self._call("GET", "requests", params=filters)["value"]

    def fault(self, **spec: Any) -> dict[str, Any]:
        return self._call("POST", "faults", spec)

    def advance(self, seconds: float) -> dict[str, Any]:
        return self._call("POST", "clock", {"advance": seconds})

    def clock(self, **body: Any) -> dict[str, Any]:
        return self._call("POST", "clock", body)

    def marketplace(self, **body: Any) -> dict[str, Any]:
        return self._call("POST", "marketplace", body)

    def token(self, **body: Any) -> str:
        return self._call("POST", "tokens", body)["access_token"]


@dataclass
class RunningEmulator:
    base_url: str
    ca: str
    env: dict[str, str]
    control: Control
    emulator: Any

    @property
    def settings(self) -> dict[str, str]:
        """Django settings that mirror the environment (settings.py reads these at import)."""
        return {
            "AZURE_RESOURCE_MANAGER_URL": self.env["AZURE_RESOURCE_MANAGER_URL"],
            "AZURE_AUTHORITY_HOST": self.env["AZURE_AUTHORITY_HOST"],
            "OPSPORTAL_CA_BUNDLE": self.env["OPSPORTAL_CA_BUNDLE"],
            "OPSPORTAL_KEYVAULT_URL": self.env.get("OPSPORTAL_KEYVAULT_URL", ""),
        }

    def apply(self, monkeypatch: pytest.MonkeyPatch, settings: Any) -> None:
        for name, value in self.env.items():
            monkeypatch.setenv(name, value)
        for name, value in self.settings.items():
            setattr(settings, name, value)


def emulator_world(**overrides: Any) -> dict[str, Any]:
    return world_merge({"durations": FAST, **overrides})


@contextmanager
def running_emulator(
    *, world: dict[str, Any] | None = None, speed: float = SPEED, directory: Path | None = None
) -> Iterator[RunningEmulator]:
    """An emulator on a free loopback port; its clock starts at 00:05 UTC today, so a session's
    emulated hours stay on today's date (the console asks Cost Management up to today)."""
    start = datetime.now(UTC).replace(hour=0, minute=5, second=0, microsecond=0)
    with tempfile.TemporaryDirectory(prefix="azure-emulator-") as tmp:
        prepared = prepare(
            world=world or emulator_world(),
            directory=directory or Path(tmp),
            speed=speed,
            start=start,
        )
        server, thread = serve_in_thread(prepared)
        try:
            yield RunningEmulator(
                base_url=prepared.base_url,
                ca=str(prepared.tls.ca_pem),
                env=prepared.env,
                control=Control(prepared.base_url, str(prepared.tls.ca_pem)),
                emulator=prepared.emulator,
            )
        finally:
            server.should_exit = True
            thread.join(timeout=10)


def emulator_fresh(
    emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> RunningEmulator:
    """The default world again, the clock back at today's 00:05 at test speed, and the
    console's settings and AZURE_* variables pointing at the emulator (a test module's `azure`
    fixture)."""
    emulator.control.reset({"durations": FAST})
    emulator.emulator.clock.set(
        speed=SPEED, start=datetime.now(UTC).replace(hour=0, minute=5, second=0, microsecond=0)
    )
    emulator.apply(monkeypatch, settings)
    # MLClient remembers the last cloud in this variable; leave it as the test found it.
    monkeypatch.delenv("AZUREML_CURRENT_CLOUD", raising=False)
    return emulator
