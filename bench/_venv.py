"""Imported first by every bench: run in the project's .venv, whatever `python` started us,
and put the project on sys.path."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_PY = ROOT / ".venv" / "bin" / "python"

try:
    import django  # noqa: F401
except ImportError:
    if VENV_PY.exists() and Path(sys.executable).resolve() != VENV_PY.resolve():
        os.execv(str(VENV_PY), [str(VENV_PY), *sys.argv])  # noqa: S606
    sys.exit("Run `make install` first (the benchmarks use the project's .venv).")

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def django_on_own_database(var: Path, db_name: str, **env: str) -> Path:
    """Start Django on a SQLite file of this bench's own under var/bench/, never the user's
    database or a production service named in the environment."""
    import django

    var.mkdir(parents=True, exist_ok=True)
    db = var / db_name
    for name in ("OPSPORTAL_RUNTIME_URL", "OPSPORTAL_PRODUCTION", "CELERY_BROKER_URL"):
        os.environ.pop(name, None)
    os.environ.update(
        {
            "OPSPORTAL_VAR_DIR": str(var),
            "DATABASE_URL": f"sqlite:///{db}",
            "LOG_LEVEL": "WARNING",
            **env,
        }
    )
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "opsportal.settings")
    django.setup()
    return db
