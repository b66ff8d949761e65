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
