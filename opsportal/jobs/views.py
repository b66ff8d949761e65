from django import forms
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from opsportal.accounts.models import Role
from opsportal.accounts.permissions import has_role, mutation, require_role
from opsportal.core.htmx import partial_or_page, redirect
from opsportal.core.lists import listing
from opsportal.core.models import AuditEvent
from opsportal.jobs.models import Job
from opsportal.jobs.selectors import visible_audit_events, visible_jobs
from opsportal.jobs.services import job_cancel, job_retry


class JobFilterForm(forms.Form):
    kind = forms.ChoiceField(required=False)
    status = forms.ChoiceField(required=False, choices=[("", "Any status"), *Job.Status.choices])
    target = forms.CharField(required=False, max_length=100, label="Target")
    user = forms.CharField(required=False, max_length=150, label="Requested by")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, label_suffix="", **kwargs)
        self.fields["kind"].choices = [("", "Any kind"), *Job.Kind.choices]


JOB_LOOKUPS = {
    "kind": "kind",
    "status": "status",
    "target": "target_label__icontains",
    "user": "requested_by__username__icontains",
}


def jobs_list(request: HttpRequest) -> HttpResponse:
    form = JobFilterForm(request.GET or None)
    found = listing(request, visible_jobs(request.user), form, JOB_LOOKUPS)
    return partial_or_page(request, "jobs/jobs.html", "results", found.context())


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


AUDIT_LOOKUPS = {
    "q": "object_label__icontains",
    "action": "action__startswith",
    "actor": "actor_label__icontains",
    "result": "result",
    "correlation_id": "correlation_id",
}


def audit_list(request: HttpRequest) -> HttpResponse:
    form = AuditFilterForm(request.GET or None)
    found = listing(request, visible_audit_events(request.user), form, AUDIT_LOOKUPS)
    return partial_or_page(request, "jobs/audit.html", "results", found.context())
