#!/usr/bin/env python
"""Server time and SQL queries of the inventory pages at fleet size.

Seeds its own database (20 subscriptions, 500 workspaces, 10,000 endpoints) the first time,
on SQLite under var/bench/ and, when it is reachable, on PostgreSQL (database
opsportal_bench). Each page is requested in-process through Django's full request stack as a
logged-in superuser (who sees every row), after a warm-up. It also requests each page with a
10-endpoint fleet, so the query count at 10 rows and at 10,000 rows sit side by side.

Prints a table, then one JSON line: metric name -> number.

    python bench/inventory.py [--runs 60] [--no-postgres]
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
PG_ADMIN_URL = os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432")
SIZES = {"large": (20, 500, 10_000), "small": (1, 2, 10)}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def measure(backend: str, size: str, runs: int) -> dict[str, dict[str, float]]:
    """Runs inside a child process whose DATABASE_URL points at the bench database."""
    import django
    from django.core.management import call_command

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "opsportal.settings")
    django.setup()
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from opsportal.inventory.models import CloudAccount, Workspace

    call_command("migrate", verbosity=0)
    subs, wss, eps = SIZES[size]
    if not CloudAccount.objects.filter(is_demo=True).exists():
        started = time.perf_counter()
        call_command(
            "seed_demo_inventory", subscriptions=subs, workspaces=wss, endpoints=eps, verbosity=0
        )
        print(f"  seeded {backend}/{size} in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    user, _ = get_user_model().objects.get_or_create(
        username="bench@example.com", defaults={"is_superuser": True, "is_staff": True}
    )
    client = Client(SERVER_NAME="localhost")
    client.force_login(user)
    workspace = Workspace.objects.filter(account__is_demo=True).order_by("name").first()
    pages = {
        "dashboard": "/",
        "endpoints_page1": "/endpoints/",
        "endpoints_filtered": "/endpoints/?kind=managed&region=eastus2&state=Succeeded&page=2",
        "endpoints_search": "/endpoints/?q=llama&sort=newest",
        "workspace_detail": f"/workspaces/{workspace.pk}/",
    }
    results: dict[str, dict[str, float]] = {}
    for name, url in pages.items():
        for _ in range(5):
            assert client.get(url).status_code == 200, url
        times, queries = [], 0
        for _ in range(runs):
            with CaptureQueriesContext(connection) as ctx:
                started = time.perf_counter()
                response = client.get(url)
                times.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, url
            queries = len(ctx.captured_queries)
        results[name] = {
            "p50_ms": statistics.median(times),
            "p95_ms": percentile(times, 0.95),
            "queries": queries,
        }
    return results


def pg_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=2):
            return True
    except OSError:
        return False


def pg_database(name: str) -> str:
    import psycopg

    with psycopg.connect(f"{PG_ADMIN_URL}/postgres", autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')
    return f"{PG_ADMIN_URL}/{name}"


def run_child(backend: str, size: str, runs: int) -> dict[str, dict[str, float]]:
    var = ROOT / "var" / "bench"
    var.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "OPSPORTAL_PRODUCTION"}}
    env["OPSPORTAL_VAR_DIR"] = str(var)
    env["DATABASE_URL"] = (
        f"sqlite:///{var / f'inventory-{size}.sqlite3'}"
        if backend == "sqlite"
        else pg_database(f"opsportal_bench_{size}")
    )
    env["LOG_LEVEL"] = "WARNING"
    out = subprocess.run(
        [sys.executable, __file__, "--child", backend, size, "--runs", str(runs)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    sys.stderr.write(out.stderr)
    if out.returncode:
        sys.exit(f"The {backend} measurement failed (exit {out.returncode}).")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("BACKEND", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(*args.child, args.runs)))
        return

    backends = ["sqlite"]
    if not args.no_postgres:
        if pg_reachable():
            backends.append("postgres")
        else:
            print(
                "PostgreSQL not reachable on 127.0.0.1:5432: measuring SQLite only.",
                file=sys.stderr,
            )

    metrics: dict[str, float] = {}
    rows = []
    for backend in backends:
        large = run_child(backend, "large", args.runs)
        small = run_child(backend, "small", max(10, args.runs // 3))
        for page, figures in large.items():
            rows.append(
                (
                    backend,
                    page,
                    figures["p50_ms"],
                    figures["p95_ms"],
                    figures["queries"],
                    small[page]["queries"],
                )
            )
            for key, value in figures.items():
                metrics[f"{backend}_{page}_{key}"] = round(value, 2)
            metrics[f"{backend}_{page}_small_fleet_queries"] = small[page]["queries"]

    header = f"{'backend':9} {'page':20} {'p50 ms':>8} {'p95 ms':>8} {'queries':>8} {'q@10 eps':>9}"
    print(
        f"Inventory pages, 20 subscriptions / 500 workspaces / 10,000 endpoints, {args.runs} runs"
    )
    print(header)
    print("-" * len(header))
    for backend, page, p50, p95, queries, small_queries in rows:
        print(f"{backend:9} {page:20} {p50:8.1f} {p95:8.1f} {queries:8d} {small_queries:9d}")
    metrics["worst_p95_ms"] = round(max(r[3] for r in rows), 2)
    metrics["query_growth_ratio"] = round(max(r[4] / r[5] for r in rows), 2)
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
