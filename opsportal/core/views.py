from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from opsportal.core import health
from opsportal.costs.selectors import budget_statuses
from opsportal.inventory import selectors as inventory
from opsportal.jobs.selectors import recent_jobs


def dashboard(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "core/dashboard.html",
        {
            "counts": inventory.dashboard_counts(request.user),
            "attention": inventory.endpoints_needing_attention(request.user),
            "jobs": recent_jobs(request.user, limit=10),
            "budgets": budget_statuses(user=request.user),
        },
    )


@login_not_required
@require_GET
@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@login_not_required
@require_GET
@never_cache
def readyz(request: HttpRequest) -> JsonResponse:
    checks = health.readiness()
    ready = all(check["ok"] for check in checks.values())
    return JsonResponse(
        {"status": "ok" if ready else "unavailable", "checks": checks}, status=200 if ready else 503
    )
