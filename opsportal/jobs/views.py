from django import forms
from django.conf import settings
from django.core.paginator import Paginator
from django.db import transaction
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import get_object_or_404, render

from opsportal.accounts.models import Role
from opsportal.accounts.permissions import has_role, mutation, require_role
from opsportal.deployments.views import redirect
from opsportal.jobs.models import AuditEvent, Job
from opsportal.jobs.selectors import visible_audit_events, visible_jobs
from opsportal.jobs.services import job_cancel, job_retry


def _query(request: HttpRequest) -> str:
    """The filters that are set, for pagination links."""
    query = QueryDict(mutable=True)
    for key, value in request.GET.items():
        if value and key != "page":
            query[key] = value
    return query.urlencode()


class JobFilterForm(forms.Form):
    kind = forms.ChoiceField(required=False)
    status = forms.ChoiceField(required=False, choices=[("", "Any status"), *Job.Status.choices])
    target = forms.CharField(required=False, max_length=100, label="Target")
    user = forms.CharField(required=False, max_length=150, label="Requested by")

    def __init__(self, *args, kinds: list[str], **kwargs) -> None:
        super().__init__(*args, label_suffix="", **kwargs)
        self.fields["kind"].choices = [("", "Any kind"), *[(k, k) for k in kinds]]


def jobs_list(request: HttpRequest) -> HttpResponse:
    jobs = visible_jobs(request.user)
    kinds = sorted(set(Job.objects.values_list("kind", flat=True).distinct()))
    form = JobFilterForm(request.GET or None, kinds=kinds)
    if form.is_bound and form.is_valid():
        data = form.cleaned_data
        if data["kind"]:
            jobs = jobs.filter(kind=data["kind"])
        if data["status"]:
            jobs = jobs.filter(status=data["status"])
        if data["target"]:
            jobs = jobs.filter(target_label__icontains=data["target"])
        if data["user"]:
            jobs = jobs.filter(requested_by__username__icontains=data["user"])
    page = Paginator(jobs, settings.OPSPORTAL_PAGE_SIZE).get_page(request.GET.get("page"))
    template = "jobs/jobs.html#results" if request.htmx else "jobs/jobs.html"
    return render(request, template, {"page": page, "form": form, "query": _query(request)})


def job_detail(request: HttpRequest, pk: int) -> HttpResponse:
    job = get_object_or_404(visible_jobs(request.user), pk=pk)
    # htmx polls the live part every 2 s; it stops asking once the job has ended.
    template = "jobs/job_detail.html#live" if request.htmx else "jobs/job_detail.html"
    can_act = has_role(
        request.user, job.workspace.team_id if job.workspace else None, Role.OPERATOR
    )
    return render(request, template, {"job": job, "can_act": can_act})


def _job_for_action(request: HttpRequest, pk: int) -> Job:
    job = get_object_or_404(visible_jobs(request.user), pk=pk)
    # Jobs without a workspace (the Azure sync) span every team: superusers only.
    require_role(request.user, job.workspace.team_id if job.workspace else None, Role.OPERATOR)
    return job


@mutation(Role.OPERATOR)
def job_cancel_view(request: HttpRequest, pk: int) -> HttpResponse:
    job = _job_for_action(request, pk)
    if job.can_cancel:
        job_cancel(job=job, user=request.user)
    return redirect(request, job.get_absolute_url())


@mutation(Role.OPERATOR)
def job_retry_view(request: HttpRequest, pk: int) -> HttpResponse:
    job = _job_for_action(request, pk)
    if not job.can_retry:
        return redirect(request, job.get_absolute_url())
    with transaction.atomic():
        new = job_retry(job=job, user=request.user)
    return redirect(request, new.get_absolute_url())


class AuditFilterForm(forms.Form):
    q = forms.CharField(required=False, max_length=100, label="Object")
    action = forms.CharField(required=False, max_length=60)
    actor = forms.CharField(required=False, max_length=150, label="Who")
    result = forms.ChoiceField(
        required=False, choices=[("", "Any result"), *AuditEvent.Result.choices]
    )
    correlation_id = forms.UUIDField(required=False, label="Correlation id")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, label_suffix="", **kwargs)


def audit_list(request: HttpRequest) -> HttpResponse:
    events = visible_audit_events(request.user)
    form = AuditFilterForm(request.GET or None)
    if form.is_bound and form.is_valid():
        data = form.cleaned_data
        if data["q"]:
            events = events.filter(object_label__icontains=data["q"])
        if data["action"]:
            events = events.filter(action__startswith=data["action"])
        if data["actor"]:
            events = events.filter(actor_label__icontains=data["actor"])
        if data["result"]:
            events = events.filter(result=data["result"])
        if data["correlation_id"]:
            events = events.filter(correlation_id=data["correlation_id"])
    page = Paginator(events, settings.OPSPORTAL_PAGE_SIZE).get_page(request.GET.get("page"))
    template = "jobs/audit.html#results" if request.htmx else "jobs/audit.html"
    return render(request, template, {"page": page, "form": form, "query": _query(request)})
