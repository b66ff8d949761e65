from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render

from opsportal.accounts.models import Role
from opsportal.accounts.permissions import has_role, mutation, require_role, role_on
from opsportal.deployments.forms import DeployForm, deployable_workspaces
from opsportal.inventory import selectors
from opsportal.inventory.models import Endpoint
from opsportal.jobs.models import Job
from opsportal.jobs.services import job_request


def redirect(request: HttpRequest, url: str) -> HttpResponse:
    """A redirect that htmx follows as a page load."""
    if request.htmx:
        response = HttpResponse(status=204)
        response["HX-Redirect"] = url
        return response
    return HttpResponseRedirect(url)


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
    params = form.params()
    existing = (
        form.cleaned_data.get("existing") if params.get("endpoint_mode") == "existing" else None
    )
    job = job_request(
        action="endpoint.deploy.requested",
        detail=f"{params['kind']} {params['offering']}"
        + (", Marketplace terms accepted" if params.get("terms_accepted") else ""),
        kind="deploy",
        target_label=params["name"],
        requested_by=request.user,
        workspace=form.cleaned_data["workspace"],
        endpoint=existing,
        params=params,
    )
    return redirect(request, job.get_absolute_url())


def _endpoint(request: HttpRequest, pk: int) -> Endpoint:
    return get_object_or_404(
        selectors.visible_endpoints(request.user).select_related("workspace", "offering"), pk=pk
    )


def endpoint_delete_confirm(request: HttpRequest, pk: int) -> HttpResponse:
    endpoint = _endpoint(request, pk)
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
    endpoint = _endpoint(request, pk)
    require_role(request.user, endpoint.workspace.team_id, Role.OPERATOR)
    typed = request.POST.get("confirm", "").strip()
    running = Job.objects.filter(
        endpoint=endpoint, kind="delete", status__in=[Job.Status.PENDING, Job.Status.RUNNING]
    ).first()
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
    job = job_request(
        action="endpoint.delete.requested",
        kind="delete",
        target_label=endpoint.name,
        requested_by=request.user,
        workspace=endpoint.workspace,
        endpoint=endpoint,
        params={
            "workspace_id": endpoint.workspace_id,
            "name": endpoint.name,
            "endpoint_id": endpoint.pk,
        },
    )
    return redirect(request, job.get_absolute_url())
