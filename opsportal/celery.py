import os

from celery import Celery
from celery.app.backends import BACKEND_ALIASES
from kombu.transport import TRANSPORT_ALIASES

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "opsportal.settings")

# The embedded default's broker and result store (opsportal.core.broker): `sqlite:///PATH`.
# Registered before the app reads its configuration, in every process that imports opsportal.
TRANSPORT_ALIASES["sqlite"] = "opsportal.core.broker:Transport"
BACKEND_ALIASES["sqlite"] = "opsportal.core.broker:ResultBackend"

app = Celery("opsportal")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
