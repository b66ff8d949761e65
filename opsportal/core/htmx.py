"""htmx in one place: partial or whole page, and redirects htmx follows as page loads."""

from typing import Any

from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.utils.cache import patch_vary_headers


def partial_or_page(
    request: HttpRequest, template: str, partial: str, context: dict[str, Any], status: int = 200
) -> HttpResponse:
    """htmx swaps get the named partial; plain loads and history restores get the page. The
    answer varies on both headers, so no cache hands one where the other was asked for."""
    htmx = getattr(request, "htmx", None)
    wants_partial = bool(htmx) and not htmx.history_restore_request
    response = render(
        request, f"{template}#{partial}" if wants_partial else template, context, status=status
    )
    patch_vary_headers(response, ["HX-Request", "HX-History-Restore-Request"])
    return response


def redirect(request: HttpRequest, url: str) -> HttpResponse:
    """A redirect that htmx follows as a page load."""
    if getattr(request, "htmx", None):
        response = HttpResponse(status=204)
        response["HX-Redirect"] = url
        return response
    return HttpResponseRedirect(url)
