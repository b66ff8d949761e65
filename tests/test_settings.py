"""Settings come from the environment; each case runs in a fresh process."""

import os
import stat
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE_ENV = {
    k: v
    for k, v in os.environ.items()
    if k
    not in {
        "SECRET_KEY",
        "DEBUG",
        "DATABASE_URL",
        "OPSPORTAL_PRODUCTION",
        "CELERY_BROKER_URL",
        "CELERY_RESULT_BACKEND",
        "DJANGO_ALLOW_ASYNC_UNSAFE",
    }
}


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**BASE_ENV, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_it_generates_a_private_secret_key_once(tmp_path):
    env = {"OPSPORTAL_VAR_DIR": str(tmp_path)}
    assert manage("check", env=env).returncode == 0
    key_file = tmp_path / "secret_key"
    first = key_file.read_text()
    assert len(first) > 50
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert manage("check", env=env).returncode == 0
    assert key_file.read_text() == first


def test_it_requires_a_secret_key_in_production(tmp_path):
    result = manage("check", env={"OPSPORTAL_VAR_DIR": str(tmp_path), "OPSPORTAL_PRODUCTION": "1"})
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr
    assert not (tmp_path / "secret_key").exists()


def test_it_passes_the_deploy_check_in_a_production_environment(tmp_path):
    env = {
        "OPSPORTAL_VAR_DIR": str(tmp_path),
        "OPSPORTAL_PRODUCTION": "true",
        "SECRET_KEY": "k" * 20 + "-production-grade-secret-key-with-enough-entropy-1234567890",
        "ALLOWED_HOSTS": "opsportal.example.com",
        "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/opsportal",
        "CELERY_BROKER_URL": "redis://127.0.0.1:6379/0",
    }
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=env)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "no issues" in result.stdout


def test_it_flags_debug_in_the_deploy_check(tmp_path):
    env = {"OPSPORTAL_VAR_DIR": str(tmp_path), "DEBUG": "true"}
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=env)
    assert result.returncode != 0
