import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "opsportal.settings")

django_application = get_asgi_application()

from opsportal.chat import stream  # noqa: E402  (needs the apps loaded above)


async def application(scope, receive, send):  # type: ignore[no-untyped-def]
    """Django, except the test-chat stream, which is served without the middleware chain."""
    if scope["type"] == "http" and scope["method"] == "GET":
        match = stream.PATH.match(scope["path"])
        if match:
            return await stream.serve(scope, receive, send, int(match["turn_id"]))
    return await django_application(scope, receive, send)
