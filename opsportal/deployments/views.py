from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from opsportal.accounts.models import Role
from opsportal.accounts.permissions import has_role, mutation, require_role, role_on
from opsportal.core.htmx import redirect
from opsportal.deployments.changes import (
    MAX_INSTANCES,
    ChangeRefused,
    change_request,
    change_running,
    live_deployments,
)
from opsportal.deployments.forms import DeployForm, deployable_workspaces
from opsportal.deployments.services import delete_request, delete_running, deploy_request
from opsportal.inventory import selectors
from opsportal.inventory.models import Endpoint
from opsportal.jobs.models import Job


def deploy_new(request: HttpRequest) -> HttpResponse:
    initial = {k: request.GET[k] for k in ("workspace", "offering", "kind") if request.GET.get(k)}
    form = DeployForm(initial=initial, user=request.user)
    checks = DeployForm(initial, user=request.user).run_checks() if initial else []
    return render(
        request,
        "deployments/deploy.html",
        {
            "form": form,
            "checks": checks,
            "can_deploy": deployable_workspaces(request.user).exists(),
        },
    )


def deploy_preflight(request: HttpRequest) -> HttpResponse:
    """The live checklist: htmx sends the form's fields as they change."""
    form = DeployForm(request.GET, user=request.user)
    checks = form.run_checks()
    return render(
        request, "deployments/deploy.html#checklist", {"checks": checks, "form": form, "oob": True}
    )


@mutation(Role.OPERATOR)
def deploy_create(request: HttpRequest) -> HttpResponse:
    if not deployable_workspaces(request.user).exists():
        raise PermissionDenied("Deploying needs the operator role on a workspace's team.")
    chosen = selectors.visible_workspaces(request.user).filter(
        pk=request.POST.get("workspace") if request.POST.get("workspace", "").isdigit() else None
    )
    workspace = chosen.first()
    if workspace is not None:
        require_role(request.user, workspace.team_id, Role.OPERATOR)
    form = DeployForm(request.POST, user=request.user)
    if not form.is_valid():
        return render(
            request,
            "deployments/deploy.html",
            {"form": form, "checks": form.run_checks(), "can_deploy": True},
            status=422,
        )
    job = deploy_request(form=form, user=request.user)
    return redirect(request, job.get_absolute_url())


def endpoint_delete_confirm(request: HttpRequest, pk: int) -> HttpResponse:
    endpoint = selectors.endpoint_for(request, pk)
    return render(
        request,
        "deployments/delete.html",
        {
            "endpoint": endpoint,
            "role": role_on(request.user, endpoint.workspace.team_id),
            "can_delete": has_role(request.user, endpoint.workspace.team_id, Role.OPERATOR),
        },
    )


@mutation(Role.OPERATOR)
def endpoint_delete(request: HttpRequest, pk: int) -> HttpResponse:
    endpoint = selectors.endpoint_for(request, pk, Role.OPERATOR)
    typed = request.POST.get("confirm", "").strip()
    running = delete_running(endpoint=endpoint)
    if running is not None:
        return redirect(request, running.get_absolute_url())
    if typed != endpoint.name:
        return render(
            request,
            "deployments/delete.html",
            {
                "endpoint": endpoint,
                "can_delete": True,
                "typed": typed,
                "error": f"Type the endpoint's name, {endpoint.name}, exactly to confirm.",
            },
            status=422,
        )
    job, _ = delete_request(endpoint=endpoint, user=request.user)
    return redirect(request, job.get_absolute_url())


# --- a managed endpoint's deployments ----------------------------------------------------------


def deployments_manage(
    request: HttpRequest, pk: int, *, refused: ChangeRefused | None = None, status: int = 200
) -> HttpResponse:
    """Scale a deployment, split the traffic, remove one: each a job with its pre-flight."""
    endpoint = selectors.endpoint_for(request, pk, kind=Endpoint.Kind.MANAGED)
    deployments = sorted(live_deployments(endpoint).values(), key=lambda d: d.name)
    typed = request.POST if refused else {}
    rows = [
        {"d": d, "traffic": typed.get(f"traffic-{d.name}", d.traffic_percent)} for d in deployments
    ]
    return render(
        request,
        "deployments/manage.html",
        {
            "endpoint": endpoint,
            "rows": rows,
            "traffic_total": sum(d.traffic_percent for d in deployments),
            "running": change_running(endpoint=endpoint),
            "can_change": has_role(request.user, endpoint.workspace.team_id, Role.OPERATOR),
            "refused": refused,
            "max_instances": MAX_INSTANCES,
        },
        status=status,
    )


def _change(request: HttpRequest, endpoint: Endpoint, kind: str, **params: object) -> HttpResponse:
    try:
        requested = change_request(endpoint=endpoint, user=request.user, kind=kind, **params)
    except ChangeRefused as refused:
        return deployments_manage(request, endpoint.pk, refused=refused, status=422)
    return redirect(request, requested.job.get_absolute_url())


def _whole_number(value: str | None) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


@mutation(Role.OPERATOR)
def deployment_scale(request: HttpRequest, pk: int, name: str) -> HttpResponse:
    endpoint = selectors.endpoint_for(request, pk, Role.OPERATOR, kind=Endpoint.Kind.MANAGED)
    count = _whole_number(request.POST.get("instance_count"))
    if count is None:
        refused = ChangeRefused("Enter a whole number of instances.", field="instance_count")
        return deployments_manage(request, pk, refused=refused, status=422)
    return _change(request, endpoint, Job.Kind.SCALE, name=name, instance_count=count)


@mutation(Role.OPERATOR)
def endpoint_traffic(request: HttpRequest, pk: int) -> HttpResponse:
    endpoint = selectors.endpoint_for(request, pk, Role.OPERATOR, kind=Endpoint.Kind.MANAGED)
    traffic = {
        key.removeprefix("traffic-"): _whole_number(value)
        for key, value in request.POST.items()
        if key.startswith("traffic-")
    }
    if not traffic or None in traffic.values():
        refused = ChangeRefused("Enter each share as a whole number of percent.", field="traffic")
        return deployments_manage(request, pk, refused=refused, status=422)
    return _change(request, endpoint, Job.Kind.TRAFFIC, traffic=traffic)


@mutation(Role.OPERATOR)
def deployment_remove(request: HttpRequest, pk: int, name: str) -> HttpResponse:
    endpoint = selectors.endpoint_for(request, pk, Role.OPERATOR, kind=Endpoint.Kind.MANAGED)
    return _change(request, endpoint, Job.Kind.DEPLOYMENT_DELETE, name=name)
