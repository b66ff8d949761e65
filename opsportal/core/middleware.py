"""Middleware of the console's own."""

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from opsportal.core import views

PROBES: dict[str, Callable[[HttpRequest], HttpResponse]] = {
    "/healthz": views.healthz,
    "/readyz": views.readyz,
}


def health_probes(get_response: Callable[[HttpRequest], HttpResponse]) -> Callable:
    """Answer /healthz and /readyz before host validation and the HTTPS redirect: a load
    balancer probes a backend by its address (Host: 10.0.0.5:8000) over plain HTTP, which
    ALLOWED_HOSTS and SECURE_SSL_REDIRECT would otherwise refuse."""

    def middleware(request: HttpRequest) -> HttpResponse:
        probe = PROBES.get(request.path_info)
        if probe is not None:
            return probe(request)
        return get_response(request)

    return middleware
