#!/usr/bin/env python
"""Server time and SQL queries of the cost pages at fleet size, against the same figures
summed from the raw daily rows.

Seeds its own database the first time: 20 subscriptions, 500 workspaces, 10,000 endpoints
(seed_demo_inventory), then 90 days x 2 token meters of cost rows per endpoint (1.8 million
CostDaily rows, written in SQL), then the daily rollups the overview reads. On SQLite under
var/bench/ and, when reachable, on PostgreSQL (database opsportal_bench_costs). Pages are
requested in-process through Django's full request stack as a superuser (who sees every row).

The alternative, in the same run: the overview's figures (total, last month, by model, meter,
workspace and team, the daily chart) summed straight from the raw rows, as without rollups.

Prints a table, then one JSON line.

    python bench/costs.py [--runs 40] [--no-postgres]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import _venv

ROOT = _venv.ROOT
from bench.inventory import percentile, pg_database, pg_reachable  # noqa: E402

DAYS = 90

SEED_SQL = {
    "postgres": """
        INSERT INTO costs_costdaily (source, day, account_id, resource_id, meter, quantity,
            unit, cost, currency, workspace_id, endpoint_id, offering_id, team_id, updated_at)
        SELECT 'azure', CURRENT_DATE - d.n, w.account_id, '/bench/' || e.id, m.meter,
            (e.id %% 97 + d.n) * m.k, '1K tokens', (e.id %% 97 + d.n) * m.k * m.price, 'USD',
            e.workspace_id, e.id, e.offering_id, w.team_id, now()
        FROM inventory_endpoint e
        JOIN inventory_workspace w ON w.id = e.workspace_id
        CROSS JOIN generate_series(0, %(days)s - 1) AS d(n)
        CROSS JOIN (VALUES ('paygo-inference-input-tokens', 3, 0.0003),
                           ('paygo-inference-output-tokens', 1, 0.0006)) AS m(meter, k, price)
    """,
    "sqlite": """
        WITH RECURSIVE d(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM d WHERE n < %(last)s)
        INSERT INTO costs_costdaily (source, day, account_id, resource_id, meter, quantity,
            unit, cost, currency, workspace_id, endpoint_id, offering_id, team_id, updated_at)
        SELECT 'azure', date('now', '-' || d.n || ' days'), w.account_id, '/bench/' || e.id,
            m.meter, (e.id %% 97 + d.n) * m.k, '1K tokens', (e.id %% 97 + d.n) * m.k * m.price,
            'USD', e.workspace_id, e.id, e.offering_id, w.team_id, datetime('now')
        FROM inventory_endpoint e
        JOIN inventory_workspace w ON w.id = e.workspace_id
        CROSS JOIN d
        CROSS JOIN (SELECT 'paygo-inference-input-tokens' AS meter, 3 AS k, 0.0003 AS price
                    UNION ALL SELECT 'paygo-inference-output-tokens', 1, 0.0006) AS m
    """,
}


def seed(backend: str) -> None:
    from datetime import timedelta

    from django.core.management import call_command
    from django.db import connection
    from django.utils import timezone

    from opsportal.costs.models import CostDaily
    from opsportal.costs.services import rollups_rebuild
    from opsportal.inventory.models import CloudAccount

    call_command("migrate", verbosity=0)
    if not CloudAccount.objects.filter(is_demo=True).exists():
        started = time.perf_counter()
        call_command(
            "seed_demo_inventory", subscriptions=20, workspaces=500, endpoints=10_000, verbosity=0
        )
        print(
            f"  {backend}: inventory seeded in {time.perf_counter() - started:.0f}s",
            file=sys.stderr,
        )
    from opsportal.costs.models import CostMonth

    today = timezone.localdate()
    if CostDaily.objects.filter(day=today).exists() and not CostMonth.objects.exists():
        rollups_rebuild(days=[today - timedelta(days=n) for n in range(DAYS)])
        if backend == "postgres":
            with connection.cursor() as cursor:
                cursor.execute("ANALYZE")
    if not CostDaily.objects.filter(day=today).exists():
        started = time.perf_counter()
        CostDaily.objects.all().delete()
        with connection.cursor() as cursor:
            cursor.execute(SEED_SQL[backend] % {"days": DAYS, "last": DAYS - 1})
            if backend == "postgres":
                cursor.execute("ANALYZE costs_costdaily")
        rollups_rebuild(days=[today - timedelta(days=n) for n in range(DAYS)])
        if backend == "postgres":
            with connection.cursor() as cursor:
                cursor.execute("ANALYZE")
        print(
            f"  {backend}: {CostDaily.objects.count():,} cost rows and rollups in "
            f"{time.perf_counter() - started:.0f}s",
            file=sys.stderr,
        )


def raw_overview(month_first, month_last, prev_first, prev_last) -> None:  # type: ignore[no-untyped-def]
    """The overview's figures from the raw daily rows (what the rollups save)."""
    from django.db.models import Sum

    from opsportal.costs.models import CostDaily

    rows = CostDaily.objects.filter(day__gte=month_first, day__lte=month_last, currency="USD")
    rows.aggregate(c=Sum("cost"))
    CostDaily.objects.filter(day__gte=prev_first, day__lte=prev_last).aggregate(c=Sum("cost"))
    list(rows.values("offering__model_name").annotate(c=Sum("cost")).order_by("-c"))
    list(rows.values("meter", "unit").annotate(c=Sum("cost"), q=Sum("quantity")).order_by("-c"))
    list(rows.values("workspace_id", "workspace__name").annotate(c=Sum("cost")).order_by("-c"))
    list(rows.values("team__name").annotate(c=Sum("cost")).order_by("-c"))
    list(rows.values("day", "offering__model_name").annotate(c=Sum("cost")).order_by())


def timed(fn, runs: int, warm: int = 3) -> tuple[list[float], int]:  # type: ignore[no-untyped-def]
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    for _ in range(warm):
        fn()
    times, queries = [], 0
    for _ in range(runs):
        with CaptureQueriesContext(connection) as ctx:
            started = time.perf_counter()
            fn()
            times.append((time.perf_counter() - started) * 1000)
        queries = len(ctx.captured_queries)
    return times, queries


def measure(backend: str, runs: int) -> dict[str, dict[str, float]]:
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "opsportal.settings")
    django.setup()
    from django.contrib.auth import get_user_model
    from django.test import Client
    from django.utils import timezone

    from opsportal.costs.selectors import month_bounds, previous_month
    from opsportal.inventory.models import Endpoint, Workspace

    seed(backend)
    user, _ = get_user_model().objects.get_or_create(
        username="bench@example.com", defaults={"is_superuser": True, "is_staff": True}
    )
    client = Client(SERVER_NAME="localhost")
    client.force_login(user)
    workspace = Workspace.objects.filter(account__is_demo=True).order_by("name").first()
    team = workspace.team_id
    endpoint = Endpoint.objects.filter(workspace=workspace, kind="managed").order_by("name").first()
    serverless = Endpoint.objects.filter(kind="serverless", workspace__account__is_demo=True)
    serverless = serverless.order_by("name").first()
    last = previous_month(timezone.localdate())
    pages = {
        "overview": "/costs/",
        "overview_team": f"/costs/?team={team}",
        "overview_workspace": f"/costs/?workspace={workspace.pk}",
        "overview_last_month": f"/costs/?month={last:%Y-%m}",
        "managed_cost_tab": f"/endpoints/{endpoint.pk}/?tab=usage",
        "serverless_cost_tab": f"/endpoints/{serverless.pk}/?tab=usage",
        "quota": "/quota/",
    }
    results: dict[str, dict[str, float]] = {}
    for name, url in pages.items():

        def get(url: str = url) -> None:
            response = client.get(url)
            assert response.status_code == 200, url

        times, queries = timed(get, runs)
        results[name] = {
            "p50_ms": statistics.median(times),
            "p95_ms": percentile(times, 0.95),
            "queries": queries,
        }
    first, month_last = month_bounds(timezone.localdate())
    prev_first, prev_last = month_bounds(last)
    # Seconds per run on SQLite: a few runs say enough.
    times, queries = timed(
        lambda: raw_overview(first, month_last, prev_first, prev_last), max(3, runs // 8), warm=1
    )
    results["raw_rows_overview"] = {
        "p50_ms": statistics.median(times),
        "p95_ms": percentile(times, 0.95),
        "queries": queries,
    }
    return results


def run_child(backend: str, runs: int) -> dict[str, dict[str, float]]:
    var = ROOT / "var" / "bench"
    var.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "OPSPORTAL_PRODUCTION"}}
    env["OPSPORTAL_VAR_DIR"] = str(var)
    env["DATABASE_URL"] = (
        f"sqlite:///{var / 'costs.sqlite3'}"
        if backend == "sqlite"
        else pg_database("opsportal_bench_costs")
    )
    env["LOG_LEVEL"] = "WARNING"
    out = subprocess.run(
        [sys.executable, __file__, "--child", backend, "--runs", str(runs)],
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
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--child", metavar="BACKEND", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.runs)))
        return
    backends = ["sqlite"]
    if not args.no_postgres and pg_reachable():
        backends.append("postgres")
    metrics: dict[str, float] = {}
    print(f"Cost pages, 10,000 endpoints x {DAYS} days x 2 meters, {args.runs} runs each")
    header = f"{'backend':9} {'page':22} {'p50 ms':>8} {'p95 ms':>8} {'queries':>8}"
    print(header)
    print("-" * len(header))
    worst = 0.0
    for backend in backends:
        results = run_child(backend, args.runs)
        for page, f in results.items():
            print(f"{backend:9} {page:22} {f['p50_ms']:8.1f} {f['p95_ms']:8.1f} {f['queries']:8d}")
            for key, value in f.items():
                metrics[f"{backend}_{page}_{key}"] = round(value, 2)
            if page != "raw_rows_overview":
                worst = max(worst, f["p95_ms"])
        metrics[f"{backend}_raw_vs_rollup_overview_ratio"] = round(
            results["raw_rows_overview"]["p50_ms"] / results["overview"]["p50_ms"], 2
        )
    metrics["worst_page_p95_ms"] = round(worst, 2)
    print(
        "raw_rows_overview: the overview's figures summed from the daily rows, without the "
        "page (what the rollups replace)."
    )
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
