import json
import os
import subprocess
import sys

import pytest
from django.test import Client

pytestmark = pytest.mark.production_path


def test_it_reports_alive_without_login(db):
    response = Client().get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_it_reports_ready_with_database_migrations_and_broker(db, settings):
    response = Client().get("/readyz")
    body = response.json()
    assert response.status_code == 200, body
    assert set(body["checks"]) == {"database", "migrations", "broker"}
    assert body["checks"]["broker"]["detail"] == settings.CELERY_BROKER_URL.split("://")[0]


def test_it_reports_an_unreachable_broker_as_not_ready(db, settings):
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"
    response = Client().get("/readyz")
    assert response.status_code == 503
    body = json.loads(response.content)
    assert body["status"] == "unavailable"
    assert body["checks"]["broker"]["ok"] is False
    assert body["checks"]["database"]["ok"] is True


def test_it_reports_missing_migrations(tmp_path):
    # A real database with nothing migrated, checked by a separate process.
    code = (
        "from opsportal.core.health import readiness; import json; print(json.dumps(readiness()))"
    )
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'empty.sqlite3'}",
        "OPSPORTAL_VAR_DIR": str(tmp_path),
        "CELERY_BROKER_URL": "",
        "CELERY_RESULT_BACKEND": "",
    }
    out = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    checks = json.loads(out.stdout.strip().splitlines()[-1])
    assert checks["migrations"]["ok"] is False
    assert "not applied" in checks["migrations"]["detail"]
    assert checks["database"]["ok"] is True


def test_probes_answer_whatever_the_host_header_and_scheme(db, settings):
    # A load balancer probes each backend by its address, over plain HTTP.
    settings.ALLOWED_HOSTS = ["opsportal.example.com"]
    settings.SECURE_SSL_REDIRECT = True
    client = Client(HTTP_HOST="10.0.0.5:8000")
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    # Every other page still insists on a known host.
    assert client.get("/login/").status_code == 400
