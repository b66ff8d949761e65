"""`make test`: lint, the whole suite on the embedded default, then the production-path tests
on PostgreSQL and Redis. Ends with one line "N passed, N failed" over both phases.

Where PostgreSQL or Redis cannot be reached, the second phase is not run and this says so
loudly; under CI (CI=true) that is a failure, because CI machines have both.
"""

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
PG_URL = os.environ.get(
    "OPSPORTAL_TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/opsportal"
)
REDIS_URL = os.environ.get("OPSPORTAL_TEST_REDIS_URL", "redis://127.0.0.1:6379")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
SERVICE_VARS = {
    "DATABASE_URL",
    "CELERY_BROKER_URL",
    "CELERY_RESULT_BACKEND",
    "OPSPORTAL_PRODUCTION",
    "DEBUG",
    "SECRET_KEY",
}


def banner(text: str) -> None:
    line = "=" * 78
    print(f"\n{line}\n{text}\n{line}", flush=True)


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


# Debian packages the suite drives: chromium (browser tests), nginx (the production smoke test
# runs deploy/nginx.conf), systemd-analyze (checks deploy/systemd).
DEBIAN_PACKAGES = {"chromium": "chromium", "nginx": "nginx", "systemd-analyze": "systemd"}


def ensure_debian_packages() -> None:
    """Install what this machine lacks, once (as root, with apt-get)."""
    missing = [pkg for cmd, pkg in DEBIAN_PACKAGES.items() if not shutil.which(cmd)]
    missing = [pkg for pkg in missing if not Path(f"/usr/sbin/{pkg}").exists()]
    if not missing:
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        banner(f"Installing Debian's {', '.join(missing)} for the suite (first run only)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env)
        return
    sys.exit(f"The suite needs {', '.join(missing)}: `sudo apt-get install {' '.join(missing)}`.")


def pytest(args: list[str], env: dict[str, str]) -> tuple[int, int, int]:
    """Run pytest; return (exit code, passed, failed+errors) parsed from its summary."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    summary = ""
    assert proc.stdout is not None
    for line in proc.stdout:
        print(line, end="", flush=True)
        if re.search(r"\d+ (passed|failed|error)", line):
            summary = line
    code = proc.wait()
    count = lambda word: sum(int(n) for n in re.findall(rf"(\d+) {word}", summary))  # noqa: E731
    return code, count("passed"), count("failed") + count("error")


def main() -> int:
    banner("Lint: ruff check and ruff format --check")
    lint = subprocess.run([VENV_BIN / "ruff", "check", "."], cwd=ROOT).returncode
    lint |= subprocess.run([VENV_BIN / "ruff", "format", "--check", "."], cwd=ROOT).returncode

    ensure_debian_packages()
    base_env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARS}
    total_passed = total_failed = 0
    codes: list[int] = [lint]

    with tempfile.TemporaryDirectory(prefix="opsportal-test-") as var:
        banner("Phase 1: whole suite on the embedded default (SQLite, SQLite broker)")
        env = {**base_env, "OPSPORTAL_VAR_DIR": var}
        code, passed, failed = pytest(["-p", "no:cacheprovider", "-m", "not production_smoke"], env)
        codes.append(code)
        total_passed += passed
        total_failed += failed

    pg_ok, redis_ok = reachable("127.0.0.1", 5432), reachable("127.0.0.1", 6379)
    if pg_ok and redis_ok:
        with tempfile.TemporaryDirectory(prefix="opsportal-test-") as var:
            banner(
                f"Phase 2: production-path tests on PostgreSQL ({PG_URL}) and Redis ({REDIS_URL})"
            )
            env = {
                **base_env,
                "OPSPORTAL_VAR_DIR": var,
                "DATABASE_URL": PG_URL,
                "CELERY_BROKER_URL": f"{REDIS_URL}/15",
                "CELERY_RESULT_BACKEND": f"{REDIS_URL}/14",
            }
            code, passed, failed = pytest(
                ["-p", "no:cacheprovider", "-m", "production_path or production_smoke"], env
            )
            codes.append(code)
            total_passed += passed
            total_failed += failed
    else:
        missing = [
            name for name, ok in [("PostgreSQL :5432", pg_ok), ("Redis :6379", redis_ok)] if not ok
        ]
        banner(
            "!!! PRODUCTION-PATH TESTS NOT RUN: cannot reach " + " and ".join(missing) + " !!!\n"
            "Start them (see README, 'Production') and run `make test` again."
        )
        if IN_CI:
            codes.append(1)

    banner("Summary")
    if lint:
        print("ruff reported problems (see the top of this log).")
    print(f"{total_passed} passed, {total_failed} failed")
    return 0 if not any(codes) else 1


if __name__ == "__main__":
    sys.exit(main())
