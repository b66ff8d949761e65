"""The operator's files in deploy/ are valid as they stand."""

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UNITS = sorted((ROOT / "deploy" / "systemd").glob("*.service"))


def test_the_systemd_units_pass_systemd_analyze_verify(tmp_path):
    assert {u.stem for u in UNITS} == {
        "opsportal-web",
        "opsportal-worker",
        "opsportal-beat",
        "opsportal-runtime",
    }
    # As installed: the checkout where /opt/opsportal stands, the example environment file.
    for unit in UNITS:
        text = (
            unit.read_text()
            .replace("/opt/opsportal", str(ROOT))
            .replace("/etc/opsportal/opsportal.env", str(ROOT / "deploy" / "opsportal.env.example"))
            .replace("/var/lib/opsportal", str(tmp_path))
        )
        (tmp_path / unit.name).write_text(text)
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze comes with Debian's systemd"
    out = subprocess.run(
        [analyze, "verify", *[str(tmp_path / u.name) for u in UNITS]],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and out.stderr.strip() == "", out.stderr


def test_every_unit_runs_a_command_of_the_readme_production_block():
    readme = (ROOT / "README.md").read_text()
    for unit in UNITS:
        exec_start = next(
            line.split("=", 1)[1]
            for line in unit.read_text().splitlines()
            if line.startswith("ExecStart=")
        )
        program = exec_start.split()[0].replace("/opt/opsportal/", "")
        first_arg = exec_start.split()[1]
        assert f"{program} {first_arg}" in readme, unit.name
