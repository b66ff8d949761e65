"""The README's Production section, run as written: its command block is read from README.md,
its placeholders filled in, and every command run against this machine's PostgreSQL (a scratch
database) and Redis, with uvicorn behind nginx configured from deploy/nginx.conf. Then, over
HTTPS as a browser would: log in, every top-level page, a hashed static file, a deploy job run by
the worker to its end, a test-chat stream through the proxy, /healthz and /readyz. Nothing may
log an error. Everything started is stopped, and the scratch database dropped.

Runs in `make test`'s production phase (marker production_smoke)."""

import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
import redis
import requests
import trustme
from cryptography.fernet import Fernet
from django.urls import URLPattern, URLResolver, get_resolver

from tests.runtime_support import free_port

pytestmark = pytest.mark.production_smoke
ROOT = Path(__file__).resolve().parent.parent
HOST = "opsportal.example.com"
ADMIN = "admin@example.com"
PG = os.environ.get("OPSPORTAL_TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("OPSPORTAL_TEST_REDIS_URL", "redis://127.0.0.1:6379")
# Which commands keep running (servers) rather than run to their end.
SERVERS = ("uvicorn", "celery", "manage.py runtime")
LOG_ERRORS = re.compile(r"Traceback|\bERROR\b|\bCRITICAL\b|\[(error|crit|alert|emerg)\]")


def readme_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Production\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```sh\n", 1)[1].split("\n```", 1)[0]


def commands(block: str) -> list[list[str]]:
    """Shell lines as argument lists: continuations joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [words for line in joined.splitlines() if (words := shlex.split(line, comments=True))]


@dataclass
class Deployment:
    tmp: Path
    env: dict[str, str] = field(default_factory=dict)
    servers: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)

    def run(self, words: list[str]) -> None:
        env, words = self._split(words)
        if any(s in " ".join(words) for s in SERVERS):
            name = Path(words[0]).name + "-" + str(len(self.servers))
            log = (self.tmp / f"{name}.log").open("wb")
            proc = subprocess.Popen(
                words,
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            self.servers.append((name, proc))
            return
        if words[0] == "export":
            self.env.update(dict(w.split("=", 1) for w in words[1:]))
            return
        out = subprocess.run(words, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, f"{' '.join(words)}:\n{out.stdout}\n{out.stderr}"
        self.outputs[" ".join(words[:3])] = out.stdout + out.stderr

    def _split(self, words: list[str]) -> tuple[dict[str, str], list[str]]:
        env = {**base_env(), **self.env}
        while words and re.match(r"^[A-Z_]+=", words[0]) and words[0] != "export":
            key, value = words.pop(0).split("=", 1)
            env[key] = value
        return env, words

    def stop(self) -> None:
        for _, proc in self.servers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for _, proc in self.servers:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    def logs(self) -> dict[str, str]:
        return {p.name: p.read_text(errors="replace") for p in self.tmp.glob("*.log")}


def base_env() -> dict[str, str]:
    drop = {"DATABASE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "DJANGO_SETTINGS_MODULE"}
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("PYTEST")}


def top_level_pages() -> list[str]:
    """Every GET page without parameters, from the URL resolver (new pages are included)."""
    paths = []
    for entry in get_resolver().url_patterns:
        if isinstance(entry, URLResolver):
            continue  # /admin/ is loaded on its own below
        assert isinstance(entry, URLPattern)
        route = str(entry.pattern)
        if "<" in route or getattr(entry.callback, "mutation_role", None):
            continue
        if entry.name in {"logout", "login", "healthz", "readyz", "chat_compare_create"}:
            continue
        paths.append("/" + route)
    return [*paths, "/admin/"]


@pytest.fixture
def scratch_database() -> Iterator[str]:
    name = f"opsportal_smoke_{secrets.token_hex(4)}"
    server = urlsplit(PG)
    admin = f"{server.scheme}://{server.netloc}/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{server.scheme}://{server.netloc}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def nginx_config(tmp: Path, *, https_port: int, http_port: int, web_port: int, ca: trustme.CA):
    cert = ca.issue_cert(HOST, "127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp / "server.pem"))
    site = (ROOT / "deploy" / "nginx.conf").read_text()
    for old, new in [
        ("server 127.0.0.1:8000;", f"server 127.0.0.1:{web_port};"),
        ("listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;"),
        ("listen 80;", f"listen 127.0.0.1:{http_port};"),
        ("/etc/ssl/opsportal/fullchain.pem", str(tmp / "server.pem")),
        ("/etc/ssl/opsportal/privkey.pem", str(tmp / "server.pem")),
    ]:
        assert old in site, f"deploy/nginx.conf no longer has {old!r}"
        site = site.replace(old, new)
    temp = "\n".join(
        f"    {kind}_temp_path {tmp / kind};" for kind in ("client_body", "proxy", "fastcgi")
    )
    conf = tmp / "nginx.conf"
    conf.write_text(
        f"daemon off;\nuser root;\nworker_processes 1;\npid {tmp / 'nginx.pid'};\n"
        f"error_log {tmp / 'nginx-error.log'} warn;\nevents {{ worker_connections 256; }}\n"
        f"http {{\n    access_log {tmp / 'nginx-access.log'};\n{temp}\n"
        f"    uwsgi_temp_path {tmp / 'uwsgi'};\n    scgi_temp_path {tmp / 'scgi'};\n"
        f"{site}\n}}\n"
    )
    return conf


def wait_until(check, timeout: float = 120, what: str = "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (requests.RequestException, OSError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_readme_production_section_works_as_written(tmp_path, scratch_database):
    web, runtime, https_port, http_port = free_port(), free_port(), free_port(), free_port()
    broker = redis.Redis.from_url(f"{REDIS}/11")
    broker.flushdb()
    redis.Redis.from_url(f"{REDIS}/10").flushdb()
    block = readme_block()
    for placeholder, value in [
        ("SECRET_KEY=...", f"SECRET_KEY={secrets.token_urlsafe(50)}"),
        (
            "OPSPORTAL_SECRET_STORE_KEY=...",
            f"OPSPORTAL_SECRET_STORE_KEY={Fernet.generate_key().decode()}",
        ),
        ("postgres://opsportal:...@db:5432/opsportal", scratch_database),
        ("redis://redis:6379/0", f"{REDIS}/11"),
        ("redis://redis:6379/1", f"{REDIS}/10"),
        ("OPSPORTAL_VAR_DIR=/var/lib/opsportal", f"OPSPORTAL_VAR_DIR={tmp_path / 'var'}"),
        ("--host 0.0.0.0 --port 8000", f"--host 127.0.0.1 --port {web}"),
        ("https://llm-local.example.com", f"http://127.0.0.1:{runtime}"),
        ("runtime --host 0.0.0.0", f"runtime --host 127.0.0.1 --port {runtime}"),
    ]:
        assert placeholder in block, f"the README's Production block lost {placeholder!r}"
        block = block.replace(placeholder, value)

    deployment = Deployment(tmp_path)
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    try:
        for words in commands(block):
            deployment.run(words)
        # The proxy goes in front once the web server answers (so it logs no refused connect).
        wait_until(
            lambda: requests.get(f"http://127.0.0.1:{web}/readyz", timeout=5).ok, what="uvicorn"
        )
        conf = nginx_config(
            tmp_path, https_port=https_port, http_port=http_port, web_port=web, ca=ca
        )
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (tmp_path / kind).mkdir()
        proxy = subprocess.Popen([nginx, "-c", str(conf)], start_new_session=True)
        deployment.servers.append(("nginx", proxy))
        password = re.search(
            r"Generated password \(shown once\): (\S+)",
            deployment.outputs[".venv/bin/python manage.py create_admin"],
        )
        assert password, "create_admin without a terminal prints the password it made"
        walk_the_console(https_port, http_port, password.group(1), tmp_path / "ca.pem")
    finally:
        deployment.stop()
    # The worker served the job and beat ticked; nobody logged an error.
    logs = deployment.logs()
    worker = next(text for name, text in logs.items() if "worker" in text[:2000])
    assert "opsportal.jobs.tasks.job_run" in worker and "succeeded" in worker
    errors = {name: LOG_ERRORS.findall(text) for name, text in logs.items()}
    assert all(not found for found in errors.values()), {
        name: [line for line in logs[name].splitlines() if LOG_ERRORS.search(line)][:5]
        for name, found in errors.items()
        if found
    }


def walk_the_console(port: int, http_port: int, password: str, ca: Path) -> None:
    base = f"https://127.0.0.1:{port}"
    http = requests.Session()
    # The environment's REQUESTS_CA_BUNDLE would override a session's own CA (requests#3829).
    http.trust_env = False
    http.verify = str(ca)
    http.headers["Host"] = HOST

    wait_until(lambda: http.get(f"{base}/readyz", timeout=5).status_code == 200, what="/readyz")
    ready = http.get(f"{base}/readyz", timeout=10).json()
    assert ready["checks"]["database"]["detail"] == "postgresql"
    assert ready["checks"]["broker"]["detail"] == "redis"
    assert http.get(f"{base}/healthz", timeout=10).json() == {"status": "ok"}
    # Plain HTTP is sent to HTTPS by the proxy.
    plain = http.get(f"http://127.0.0.1:{http_port}/login/", allow_redirects=False, timeout=10)
    assert plain.status_code == 301 and plain.headers["Location"] == f"https://{HOST}/login/"
    assert http.get(f"{base}/login/", timeout=10).status_code == 200

    http.post(
        f"{base}/login/",
        data={
            "username": ADMIN,
            "password": password,
            "csrfmiddlewaretoken": http.cookies["csrftoken"],
        },
        headers={"Referer": f"https://{HOST}/login/"},
        allow_redirects=False,
        timeout=30,
    ).raise_for_status()
    assert http.cookies.get("sessionid"), "logged in over HTTPS with the Secure session cookie"

    def post(path: str, data: dict[str, object], **kw: object) -> requests.Response:
        return http.post(
            f"{base}{path}",
            data={"csrfmiddlewaretoken": http.cookies["csrftoken"], **data},
            headers={"Referer": f"https://{HOST}{path}", **kw.pop("headers", {})},  # type: ignore[dict-item]
            timeout=60,
            **kw,  # type: ignore[arg-type]
        )

    for path in top_level_pages():
        response = http.get(f"{base}{path}", timeout=60)
        assert response.status_code == 200, (path, response.status_code, response.text[:300])

    # Hashed static files, with the long cache lifetime the hash allows.
    page = http.get(f"{base}/", timeout=30).text
    css = re.search(r'href="(/static/css/portal\.[0-9a-f]{12}\.css)"', page)
    assert css, "pages link the hashed stylesheet"
    static = http.get(f"{base}{css.group(1)}", timeout=30)
    assert static.status_code == 200 and "max-age=315360000" in static.headers["Cache-Control"]

    # One job through the worker, to its end: deploy the bundled model on the local runtime.
    deploy = http.get(f"{base}/deploy/", timeout=30).text
    workspace = re.search(r'<option value="(\d+)"[^>]*>local<', deploy)
    offering = re.search(r'<option value="(\d+)"[^>]*>SmolLM2', deploy)
    assert workspace and offering, "the wizard offers the local workspace and the bundled model"
    started = post(
        "/deploy/start/",
        {
            "workspace": workspace.group(1),
            "offering": offering.group(1),
            "kind": "serverless",
            "name": "prod-smol",
            "accept_terms": "on",
        },
        allow_redirects=False,
    )
    assert started.status_code == 302, started.text[:500]
    job_url = started.headers["Location"]
    wait_until(
        lambda: 'data-status="succeeded"' in http.get(f"{base}{job_url}", timeout=30).text,
        timeout=240,
        what="the deploy job",
    )

    # Test chat through the proxy: the stream comes back whole.
    endpoint = re.search(r'href="/endpoints/(\d+)/"', http.get(f"{base}{job_url}").text)
    assert endpoint
    turn = post(
        f"/endpoints/{endpoint.group(1)}/chat/",
        {"mode": "chat", "route_style": "native", "message": "Hello", "max_tokens": 8},
        headers={"HX-Request": "true"},
    )
    assert turn.status_code == 200, turn.text[:300]
    stream = re.search(r'data-stream-url="([^"]+)"', turn.text)
    assert stream
    body = http.get(f"{base}{stream.group(1)}", timeout=120).content
    assert b"data: {" in body and b"event: done" in body
