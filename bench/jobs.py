#!/usr/bin/env python
"""Key rotation of many local endpoints as Celery jobs: throughput and enqueue-to-start latency.

Creates N local endpoints of the bundled model, one per local workspace (a workspace holds one
serverless deployment per model); they share one engine. Starts the local runtime and Celery
workers (solo pool, one process each) on Redis, queues one rotation job per endpoint in a single
transaction (as bulk rotation does), and waits for all to end. Each rotation does the
real work: regenerate secondary, verify it with a chat call, publish, then the same for primary.

Runs three times in the same invocation: N endpoints with 2 workers (the figure asked for), N/5
with 1 worker (for the scaling ratio), and 10 jobs one at a time on idle workers (the dispatch
latency of a single job, without a queue in front of it). The database is PostgreSQL (a
database of its own, opsportal_bench_jobs) when 127.0.0.1:5432 answers, else a SQLite file under
var/bench/jobs; the broker is Redis 127.0.0.1:6379, databases 13 and 12. Prints a table, then
one JSON line.

    python bench/jobs.py [--endpoints 500]
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time

import _venv

ROOT = _venv.ROOT
VAR = ROOT / "var" / "bench" / "jobs"
PG_DB = "opsportal_bench_jobs"
REDIS = "redis://127.0.0.1:6379"


def reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup(runtime_port: int) -> str:
    if not reachable(6379):
        sys.exit("bench/jobs.py needs Redis on 127.0.0.1:6379 (the production broker).")
    env = {
        "CELERY_BROKER_URL": f"{REDIS}/13",
        "CELERY_RESULT_BACKEND": f"{REDIS}/12",
        "OPSPORTAL_RUNTIME_PORT": str(runtime_port),
        "OPSPORTAL_JOB_POLL_SECONDS": "0.5",
    }
    if reachable(5432):
        import psycopg

        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as c:
            c.execute(f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)")
            c.execute(f"CREATE DATABASE {PG_DB}")
        database = "PostgreSQL"
        VAR.mkdir(parents=True, exist_ok=True)
        os.environ.update(
            {
                "OPSPORTAL_VAR_DIR": str(VAR),
                "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{PG_DB}",
                "LOG_LEVEL": "WARNING",
                **env,
            }
        )
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "opsportal.settings")
        os.environ.pop("OPSPORTAL_RUNTIME_URL", None)
        import django

        django.setup()
    else:
        database = "SQLite"
        db = VAR / "jobs.sqlite3"
        db.unlink(missing_ok=True)
        _venv.django_on_own_database(VAR, "jobs.sqlite3", **env)
    import redis

    for n in (13, 12):
        redis.Redis.from_url(f"{REDIS}/{n}").flushdb()
    return database


def endpoints_create(n: int) -> list[int]:
    """One serverless endpoint per local workspace: a workspace holds one per model."""
    from django.core.management import call_command

    from opsportal.inventory.models import Endpoint, Workspace
    from opsportal.inventory.services import local_workspace_ensure
    from opsportal.providers import for_workspace

    call_command("migrate", verbosity=0)
    home = local_workspace_ensure()
    for i in range(n):
        workspace = Workspace.objects.create(
            account=home.account,
            name=f"bench-{i:04d}",
            resource_group="bench",
            region=home.region,
            provider=home.provider,
            team=home.team,
        )
        provider = for_workspace(workspace)
        provider.subscription_create(offering_slug="smollm2-135m-instruct")
        provider.endpoint_create(
            name=f"bench-rot-{i:04d}", kind="serverless", offering_slug="smollm2-135m-instruct"
        )
    return list(
        Endpoint.objects.filter(name__startswith="bench-rot-")
        .order_by("name")
        .values_list("pk", flat=True)
    )


def wait_succeeded(ids: list[int], procs: list[subprocess.Popen]) -> None:
    from opsportal.inventory.models import Endpoint

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                sys.exit(f"The runtime exited with code {proc.returncode}.")
        ready = Endpoint.objects.filter(pk__in=ids, provisioning_state="Succeeded").count()
        if ready == len(ids):
            return
        time.sleep(0.5)
    sys.exit("The endpoints did not reach Succeeded in 300 s.")


def workers_start(count: int, tag: str) -> list[subprocess.Popen]:
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "opsportal",
                "worker",
                "--pool",
                "solo",
                "-l",
                "warning",
                "-n",
                f"bench-{tag}-{i}@%h",
                "--without-mingle",
                "--without-gossip",
            ],
            cwd=ROOT,
            env=os.environ.copy(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(count)
    ]


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def rotate_all(ids: list[int], workers: int, tag: str) -> dict[str, float]:
    from django.db import transaction

    from opsportal.inventory.models import Endpoint
    from opsportal.jobs.models import Job
    from opsportal.keys.services import rotation_request

    procs = workers_start(workers, tag)
    time.sleep(3)  # let the workers connect, so the clock measures the queue, not start-up
    endpoints = list(Endpoint.objects.filter(pk__in=ids).select_related("workspace"))
    enqueue_started = time.perf_counter()
    with transaction.atomic():
        jobs = [rotation_request(endpoint=e, user=None)[0].pk for e in endpoints]
    enqueue_s = time.perf_counter() - enqueue_started
    deadline = time.monotonic() + 3600
    try:
        while time.monotonic() < deadline:
            done = Job.objects.filter(pk__in=jobs, status__in=Job.FINISHED).count()
            if done == len(jobs) or int(time.monotonic()) % 15 == 0:
                print(f"  {tag}: {done}/{len(jobs)} rotations done", flush=True)
            if done == len(jobs):
                break
            time.sleep(1)
    finally:
        stop(procs)
    rows = list(
        Job.objects.filter(pk__in=jobs).values("status", "created_at", "started_at", "finished_at")
    )
    waits = sorted((r["started_at"] - r["created_at"]).total_seconds() * 1000 for r in rows)
    runs = sorted((r["finished_at"] - r["started_at"]).total_seconds() * 1000 for r in rows)
    first = min(r["created_at"] for r in rows)
    last = max(r["finished_at"] for r in rows)

    def pct(values: list[float], p: float) -> float:
        return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]

    return {
        "jobs": len(rows),
        "workers": workers,
        "enqueue_ms": enqueue_s * 1000,
        "per_s": len(rows) / (last - first).total_seconds(),
        "start_p50_ms": pct(waits, 50),
        "start_p95_ms": pct(waits, 95),
        "run_p50_ms": statistics.median(runs),
        "failed": sum(r["status"] != "succeeded" for r in rows),
    }


def idle_starts(ids: list[int], count: int = 10) -> list[float]:
    """Enqueue-to-start of single jobs on idle workers: the broker's dispatch latency."""
    from django.db import transaction

    from opsportal.inventory.models import Endpoint
    from opsportal.jobs.models import Job
    from opsportal.keys.services import rotation_request

    procs = workers_start(2, "idle")
    time.sleep(3)
    waits = []
    try:
        for endpoint in Endpoint.objects.filter(pk__in=ids[:count]):
            with transaction.atomic():
                job = rotation_request(endpoint=endpoint, user=None)[0]
            while not Job.objects.filter(pk=job.pk, status__in=Job.FINISHED).exists():
                time.sleep(0.05)
            job.refresh_from_db()
            waits.append((job.started_at - job.created_at).total_seconds() * 1000)
    finally:
        stop(procs)
    return sorted(waits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--endpoints", type=int, default=500)
    args = parser.parse_args()
    runtime_port = free_port()
    database = setup(runtime_port)
    print(f"Creating {args.endpoints} local endpoints on {database}...", flush=True)
    ids = endpoints_create(args.endpoints)
    runtime = subprocess.Popen(
        [sys.executable, "manage.py", "runtime", "--port", str(runtime_port), "--interval", "0.5"],
        cwd=ROOT,
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_succeeded(ids, [runtime])
        two = rotate_all(ids, 2, "two")
        one = rotate_all(ids[: max(1, len(ids) // 5)], 1, "one")
        idle = idle_starts(ids)
    finally:
        stop([runtime])

    print()
    print(f"Key rotation jobs on Redis, {database}, local runtime (real verification calls)")
    print(
        f"{'run':<22}{'jobs':>6}{'jobs/s':>9}{'start p50':>12}{'start p95':>12}"
        f"{'run p50':>10}{'failed':>8}"
    )
    for name, r in (("2 workers", two), ("1 worker", one)):
        print(
            f"{name:<22}{r['jobs']:>6}{r['per_s']:>9.2f}{r['start_p50_ms']:>10.0f}ms"
            f"{r['start_p95_ms']:>10.0f}ms{r['run_p50_ms']:>8.0f}ms{r['failed']:>8}"
        )
    print(f"Queueing {two['jobs']} jobs in one transaction took {two['enqueue_ms']:.0f} ms.")
    print(
        f"A single job on idle workers: enqueue to start p50 {statistics.median(idle):.0f} ms, "
        f"max {max(idle):.0f} ms ({len(idle)} jobs)."
    )
    print(
        json.dumps(
            {
                "rotations_per_s": round(two["per_s"], 3),
                "enqueue_to_start_p50_ms": round(two["start_p50_ms"], 1),
                "enqueue_to_start_p95_ms": round(two["start_p95_ms"], 1),
                "rotation_run_p50_ms": round(two["run_p50_ms"], 1),
                "bulk_enqueue_ms": round(two["enqueue_ms"], 1),
                "idle_enqueue_to_start_p50_ms": round(statistics.median(idle), 1),
                "one_worker_rotations_per_s": round(one["per_s"], 3),
                "two_vs_one_worker_ratio": round(two["per_s"] / one["per_s"], 3),
                "failed_errors": two["failed"] + one["failed"],
            }
        )
    )


if __name__ == "__main__":
    main()
