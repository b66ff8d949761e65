"""The emulator's own certificate authority and server certificate (azure-core sends bearer
tokens only over https). The CA is kept in the emulator's directory and reused, so a console
pointed at it once keeps trusting it across restarts."""

from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class TlsFiles:
    ca_pem: Path
    cert_pem: Path
    key_pem: Path


def tls_files(directory: Path, hosts: list[str]) -> TlsFiles:
    """The CA (made once) and a fresh server certificate for `hosts`, written to `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = directory / "ca.pem", directory / "ca-key.pem"
    if ca_cert.is_file() and ca_key.is_file():
        ca = trustme.CA.from_pem(ca_cert.read_bytes(), ca_key.read_bytes())
    else:
        ca = trustme.CA(organization_name="opsportal Azure emulator")
        ca.cert_pem.write_to_path(str(ca_cert))
        ca.private_key_pem.write_to_path(str(ca_key))
        ca_key.chmod(0o600)
    leaf = ca.issue_cert(*dict.fromkeys([*hosts, "127.0.0.1", "localhost"]))
    cert, key = directory / "server.pem", directory / "server-key.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    key.chmod(0o600)
    return TlsFiles(ca_pem=ca_cert, cert_pem=cert, key_pem=key)
