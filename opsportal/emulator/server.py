"""Running the emulator over real sockets with TLS: in the foreground (`manage.py
azure_emulator`) or on a thread (tests), and the environment that points the console at it."""

import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import uvicorn

from opsportal.emulator.app import Emulator
from opsportal.emulator.tls import TlsFiles, tls_files


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def public_host(host: str) -> str:
    """The address clients use: a wildcard bind is reached on loopback."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host  # noqa: S104


def console_env(emulator: Emulator, ca_pem: Path) -> dict[str, str]:
    """The environment variables that point the console (and the Azure SDKs) at the emulator."""
    base = emulator.state.base_url
    world = emulator.state.world
    client = world["clients"][0]
    env = {
        "AZURE_TENANT_ID": world["tenant"]["id"],
        "AZURE_CLIENT_ID": client["client_id"],
        "AZURE_CLIENT_SECRET": client["secret"],
        "AZURE_AUTHORITY_HOST": base,
        "AZURE_RESOURCE_MANAGER_URL": base,
        "OPSPORTAL_CA_BUNDLE": str(ca_pem),
        # azure-ai-ml's own variable: where registry discovery goes for this cloud.
        "REGISTRY_DISCOVERY_ENDPOINT_URL": f"{base}/",
    }
    if emulator.state.vault_urls:
        env["OPSPORTAL_KEYVAULT_URL"] = next(iter(emulator.state.vault_urls.values())) + "/"
    return env


def env_file_text(env: dict[str, str]) -> str:
    return "".join(f"{name}={value}\n" for name, value in env.items())


@dataclass
class Prepared:
    emulator: Emulator
    tls: TlsFiles
    host: str
    port: int
    vault_ports: dict[str, int]
    env: dict[str, str]

    @property
    def base_url(self) -> str:
        return self.emulator.state.base_url


def prepare(
    *,
    world: dict[str, Any],
    directory: Path,
    host: str = "127.0.0.1",
    port: int | None = None,
    speed: float = 1.0,
    start: datetime | None = None,
) -> Prepared:
    """TLS files, the emulator (knowing its own address) and console.env, in `directory`. With
    a port given, the world's vaults take the ports after it; otherwise every port is free."""
    address = public_host(host)
    vaults = list(world.get("keyvaults", []))
    if port:
        vault_ports = {name: port + 1 + i for i, name in enumerate(vaults)}
    else:
        port = free_port(address)
        vault_ports = {name: free_port(address) for name in vaults}
    emulator = Emulator(
        world,
        base_url=f"https://{address}:{port}",
        vault_ports=vault_ports,
        speed=speed,
        start=start,
    )
    tls = tls_files(directory, [address])
    env = console_env(emulator, tls.ca_pem)
    (directory / "console.env").write_text(env_file_text(env))
    return Prepared(emulator, tls, host, port, vault_ports, env)


def uvicorn_config(prepared: Prepared, *, log_level: str = "warning") -> uvicorn.Config:
    return uvicorn.Config(
        prepared.emulator,
        host=prepared.host,
        port=prepared.port,
        ssl_certfile=str(prepared.tls.cert_pem),
        ssl_keyfile=str(prepared.tls.key_pem),
        log_level=log_level,
        lifespan="off",
        access_log=False,
        # A client holding a connection open must not keep the emulator from stopping.
        timeout_graceful_shutdown=3,
    )


def listening_sockets(prepared: Prepared) -> list[socket.socket]:
    """ARM's port and one per vault, bound before the server starts."""
    family = socket.AF_INET6 if ":" in prepared.host else socket.AF_INET
    sockets = []
    for port in [prepared.port, *prepared.vault_ports.values()]:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((prepared.host, port))
        sock.listen(2048)
        sock.set_inheritable(True)
        sockets.append(sock)
    return sockets


def serve(prepared: Prepared, sockets: list[socket.socket], *, log_level: str = "info") -> None:
    """In the foreground, until interrupted. The sockets are bound already, so a client that
    connects as soon as the address is printed waits in the backlog instead of being refused."""
    uvicorn.Server(uvicorn_config(prepared, log_level=log_level)).run(sockets=sockets)


def serve_in_thread(prepared: Prepared) -> tuple[uvicorn.Server, threading.Thread]:
    server = uvicorn.Server(uvicorn_config(prepared))
    sockets = listening_sockets(prepared)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": sockets}, name="azure-emulator", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"The Azure emulator did not start on port {prepared.port}.")
        time.sleep(0.02)
    return server, thread
