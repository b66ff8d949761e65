"""Encryption at rest for secrets kept in the database (endpoint keys).

The key comes from OPSPORTAL_SECRET_STORE_KEY (a Fernet key) or is generated once into
var/secret_store_key with owner-only permissions.
"""

import hashlib
import hmac
import os
from functools import cache

from cryptography.fernet import Fernet
from django.conf import settings


@cache
def _fernet() -> Fernet:
    key = os.environ.get("OPSPORTAL_SECRET_STORE_KEY", "").strip()
    if not key:
        path = settings.VAR_DIR / "secret_store_key"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(Fernet.generate_key())
        key = path.read_text().strip()
    return Fernet(key.encode())


def encrypt(value: str) -> str:
    return _fernet().encrypt(value.encode()).decode()


def decrypt(token: str) -> str:
    return _fernet().decrypt(token.encode()).decode()


def digest(value: str) -> str:
    """A one-way fingerprint for checking a presented key without decrypting anything."""
    return hashlib.sha256(value.encode()).hexdigest()


def same_digest(a: str, b: str) -> bool:
    return hmac.compare_digest(a, b)
