from django.conf import settings
from django.http import HttpRequest


def portal(request: HttpRequest) -> dict[str, object]:
    return {"DEBUG": settings.DEBUG, "PRODUCTION": settings.PRODUCTION}
