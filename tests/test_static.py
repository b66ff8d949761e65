"""Static files survive the production pipeline: hashed, compressed, every reference resolved."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "static"
SOURCE_MAP = re.compile(r"[#@]\s*sourceMappingURL=(\S+?)(?:\s*\*/)?\s*$", re.MULTILINE)


def test_every_source_map_a_static_file_names_is_there():
    missing = []
    for path in [*STATIC.rglob("*.js"), *STATIC.rglob("*.css")]:
        for ref in SOURCE_MAP.findall(path.read_text(errors="replace")):
            if not ref.startswith("data:") and not (path.parent / ref).is_file():
                missing.append(f"{path.relative_to(ROOT)} -> {ref}")
    assert missing == []


def test_collectstatic_with_the_production_storage_writes_a_manifest(tmp_path):
    env = {
        **{k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "DEBUG"}},
        "OPSPORTAL_PRODUCTION": "true",
        "SECRET_KEY": "collectstatic-check-" + "k" * 40,
        "OPSPORTAL_VAR_DIR": str(tmp_path),
        "STATIC_ROOT": str(tmp_path / "staticfiles"),
    }
    out = subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    manifest = json.loads((tmp_path / "staticfiles" / "staticfiles.json").read_text())["paths"]
    for name in ("favicon.svg", "css/portal.css", "vendor/htmx-2.0.11.min.js"):
        assert name in manifest
        hashed = tmp_path / "staticfiles" / manifest[name]
        assert hashed.is_file() and hashed.name != Path(name).name
    assert (tmp_path / "staticfiles" / (manifest["css/portal.css"] + ".gz")).is_file()
