from django.conf import settings
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from opsportal.jobs.selectors import visible_jobs


def jobs_list(request: HttpRequest) -> HttpResponse:
    page = Paginator(visible_jobs(request.user), settings.OPSPORTAL_PAGE_SIZE).get_page(
        request.GET.get("page")
    )
    return render(request, "jobs/jobs.html", {"page": page})


def job_detail(request: HttpRequest, pk: int) -> HttpResponse:
    job = get_object_or_404(visible_jobs(request.user), pk=pk)
    # htmx polls the live part every 2 s; it stops asking once the job has ended.
    template = "jobs/job_detail.html#live" if request.htmx else "jobs/job_detail.html"
    return render(request, template, {"job": job})
