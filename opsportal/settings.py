"""opsportal settings: every knob comes from the environment; defaults give the embedded run.

Embedded default (no services): SQLite under var/, Celery's broker in a SQLite file too.
Production: OPSPORTAL_PRODUCTION=true, DATABASE_URL=postgres://..., CELERY_BROKER_URL=redis://...
"""

import os
import secrets
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from django.utils.csp import CSP

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


VAR_DIR = Path(os.environ.get("OPSPORTAL_VAR_DIR", BASE_DIR / "var")).resolve()
VAR_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env_bool("DEBUG")
# Production turns on HTTPS-only cookies, HSTS and the SSL redirect, and refuses a generated key.
PRODUCTION = env_bool("OPSPORTAL_PRODUCTION")


def _secret_key() -> str:
    key = os.environ.get("SECRET_KEY", "").strip()
    if key:
        return key
    if PRODUCTION and not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY must be set in the environment when OPSPORTAL_PRODUCTION is on."
        )
    # Embedded run: generate once, keep it readable by this user only.
    path = VAR_DIR / "secret_key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(64))
    os.chmod(path, 0o600)
    return path.read_text().strip()


SECRET_KEY = _secret_key()

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django_htmx",
    "opsportal.core",
    "opsportal.accounts",
    "opsportal.inventory",
    "opsportal.jobs",
    "opsportal.runtime",
    "opsportal.chat",
    "opsportal.deployments",
    "opsportal.keys",
    "opsportal.costs",
    "opsportal.sync",
    "opsportal.console",
    # The Azure emulator (manage.py azure_emulator); nothing in the console imports it.
    "opsportal.emulator",
]

MIDDLEWARE = [
    "opsportal.core.middleware.health_probes",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "opsportal.urls"
ASGI_APPLICATION = "opsportal.asgi.application"
WSGI_APPLICATION = "opsportal.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "opsportal.core.context_processors.portal",
            ],
        },
    },
]

DATABASE_URL = (
    os.environ.get("DATABASE_URL", "").strip() or f"sqlite:///{VAR_DIR / 'opsportal.sqlite3'}"
)
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    # Web, worker, beat and runtime share one file: WAL lets readers run beside the writer,
    # IMMEDIATE transactions and a timeout make writers queue instead of failing "locked".
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
    # Tests run the runtime and relay on threads beside the test: a file in WAL mode, like the
    # embedded run, so writers wait for each other instead of failing "table is locked" as an
    # in-memory shared-cache database does.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-opsportal.sqlite3")}
else:
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = os.environ.get("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", VAR_DIR / "staticfiles"))
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
# Embedded run serves straight from static/; production serves the hashed, compressed copy.
WHITENOISE_USE_FINDERS = not PRODUCTION
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if PRODUCTION
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}

if PRODUCTION:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = int(os.environ.get("SECURE_HSTS_SECONDS", "31536000"))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
# Content Security Policy on every page: scripts and styles from this origin's static files only,
# no inline script, style or event handler (a page that shows endpoint answers must not run one).
SECURE_CSP = {
    "default-src": [CSP.SELF],
    "script-src": [CSP.SELF],
    "style-src": [CSP.SELF],
    "img-src": [CSP.SELF, "data:"],
    "connect-src": [CSP.SELF],
    "font-src": [CSP.SELF],
    "object-src": [CSP.NONE],
    "base-uri": [CSP.SELF],
    "form-action": [CSP.SELF],
    "frame-ancestors": [CSP.NONE],
}

# --- Celery -------------------------------------------------------------------------------
# Embedded default: broker and results in one SQLite file (opsportal.core.broker), no server.
_EMBEDDED_BROKER = f"sqlite:///{VAR_DIR / 'celery.sqlite3'}"
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "").strip() or _EMBEDDED_BROKER
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND", "").strip() or (
    CELERY_BROKER_URL if CELERY_BROKER_URL.startswith("sqlite:") else _EMBEDDED_BROKER
)
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {}
# Nothing reads a task's return value except the broker round-trip check (which asks for it).
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = int(os.environ.get("CELERY_TASK_TIME_LIMIT", "3600"))
CELERY_TASK_SOFT_TIME_LIMIT = CELERY_TASK_TIME_LIMIT - 60
CELERY_RESULT_EXPIRES = 3600
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TIMEZONE = TIME_ZONE
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
# Beat's minute ticks (the reaper, due rotations, beat's own heartbeat); tests shorten them.
OPSPORTAL_TICK_SECONDS = float(os.environ.get("OPSPORTAL_TICK_SECONDS", "60"))
CELERY_BEAT_SCHEDULE: dict[str, dict[str, object]] = {
    "heartbeat": {"task": "opsportal.core.tasks.heartbeat", "schedule": OPSPORTAL_TICK_SECONDS},
    # Jobs whose worker died are queued again; key rotations whose schedule is due start.
    "jobs-reap": {
        "task": "opsportal.jobs.tasks.jobs_reap_scheduled",
        "schedule": OPSPORTAL_TICK_SECONDS,
    },
    "rotations-due": {
        "task": "opsportal.keys.tasks.rotations_due",
        "schedule": OPSPORTAL_TICK_SECONDS,
    },
    # Local cost meters from the gateway's usage rows; Azure's from Cost Management, at most
    # every OPSPORTAL_COST_PULL_HOURS per subscription (the task checks each one's last pull).
    "local-costs": {
        "task": "opsportal.costs.tasks.local_costs_scheduled",
        "schedule": float(
            os.environ.get("OPSPORTAL_LOCAL_COST_INTERVAL_SECONDS", str(OPSPORTAL_TICK_SECONDS))
        ),
    },
    "azure-costs": {"task": "opsportal.costs.tasks.azure_costs_scheduled", "schedule": 1800.0},
    # A no-op unless Azure is configured (see opsportal.providers.azure_cloud.configured).
    "azure-sync": {
        "task": "opsportal.sync.tasks.azure_sync_scheduled",
        "schedule": 60.0 * float(os.environ.get("AZURE_SYNC_INTERVAL_MINUTES", "30")),
    },
}

# --- Logging: one line per event, no secrets (keys never enter log calls) ----------------
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {
        "azure": {"level": "WARNING"},
        "django.db.backends": {"level": "INFO"},
    },
}

# --- opsportal ----------------------------------------------------------------------------
OPSPORTAL_ADMIN_EMAIL = os.environ.get("OPSPORTAL_ADMIN_EMAIL", "").strip()
OPSPORTAL_ADMIN_PASSWORD = os.environ.get("OPSPORTAL_ADMIN_PASSWORD", "")
OPSPORTAL_PAGE_SIZE = int(os.environ.get("OPSPORTAL_PAGE_SIZE", "50"))
# Test chat: how long the relay waits on an endpoint before calling it a timeout.
OPSPORTAL_CHAT_TIMEOUT = float(os.environ.get("OPSPORTAL_CHAT_TIMEOUT", "120"))
# The local runtime's gateway: where it listens, and the base of the scoring URIs it hands out.
OPSPORTAL_RUNTIME_HOST = os.environ.get("OPSPORTAL_RUNTIME_HOST", "127.0.0.1")
OPSPORTAL_RUNTIME_PORT = int(os.environ.get("OPSPORTAL_RUNTIME_PORT", "8001"))
OPSPORTAL_RUNTIME_URL = os.environ.get(
    "OPSPORTAL_RUNTIME_URL", f"http://{OPSPORTAL_RUNTIME_HOST}:{OPSPORTAL_RUNTIME_PORT}"
)
# Requests the shared engine behind an offering's serverless endpoints decodes side by side; each
# slot holds a KV cache of the full context (SmolLM2-135M at 8K tokens: about 180 MiB a slot).
OPSPORTAL_RUNTIME_SERVERLESS_SLOTS = int(os.environ.get("OPSPORTAL_RUNTIME_SERVERLESS_SLOTS", "8"))

# Jobs: transient provider errors are retried this many times with exponential back-off; a
# running job whose heartbeat is older than the stale limit is presumed lost and queued again.
OPSPORTAL_JOB_RETRIES = int(os.environ.get("OPSPORTAL_JOB_RETRIES", "4"))
OPSPORTAL_JOB_BACKOFF_SECONDS = float(os.environ.get("OPSPORTAL_JOB_BACKOFF_SECONDS", "2"))
OPSPORTAL_JOB_HEARTBEAT_SECONDS = float(os.environ.get("OPSPORTAL_JOB_HEARTBEAT_SECONDS", "15"))
OPSPORTAL_JOB_STALE_SECONDS = float(os.environ.get("OPSPORTAL_JOB_STALE_SECONDS", "120"))
OPSPORTAL_JOB_MAX_ATTEMPTS = int(os.environ.get("OPSPORTAL_JOB_MAX_ATTEMPTS", "3"))
# A pending job whose message no worker took by then is queued again (a message a worker took
# and then died with is gone on the embedded broker; running it twice is harmless: jobs claim).
OPSPORTAL_JOB_LOST_SECONDS = float(os.environ.get("OPSPORTAL_JOB_LOST_SECONDS", "300"))
OPSPORTAL_JOB_POLL_SECONDS = float(os.environ.get("OPSPORTAL_JOB_POLL_SECONDS", "2"))
OPSPORTAL_DEPLOY_TIMEOUT = float(os.environ.get("OPSPORTAL_DEPLOY_TIMEOUT", "3600"))
# The smoke test and rotation's key check: one short chat call each.
OPSPORTAL_PROBE_TIMEOUT = float(os.environ.get("OPSPORTAL_PROBE_TIMEOUT", "60"))
# The back end of each kind of workspace (Workspace.provider): a class taking (workspace, *,
# correlation_id, note), imported on first use (opsportal.providers.base.for_workspace).
OPSPORTAL_PROVIDERS = {
    "azure": "opsportal.providers.azure.AzureProvider",
    "local": "opsportal.providers.local.LocalProvider",
}
# Optional Azure Key Vault for published endpoint keys (https://<vault>.vault.azure.net).
OPSPORTAL_KEYVAULT_URL = os.environ.get("OPSPORTAL_KEYVAULT_URL", "").strip()
# Cost Management is throttled per tenant: pull each subscription at most this often.
OPSPORTAL_COST_PULL_HOURS = float(os.environ.get("OPSPORTAL_COST_PULL_HOURS", "6"))
# Synced Azure workspaces are given the team this Azure tag names (on the workspace), by slug or
# name, unless a superuser assigned one in the console.
OPSPORTAL_TEAM_TAG = os.environ.get("OPSPORTAL_TEAM_TAG", "opsportal-team").strip()

# --- Azure cloud ----------------------------------------------------------------------------
# Public Azure unless set; see opsportal/providers/azure_cloud.py for what each one changes.
AZURE_RESOURCE_MANAGER_URL = os.environ.get("AZURE_RESOURCE_MANAGER_URL", "").strip()
AZURE_AUTHORITY_HOST = os.environ.get("AZURE_AUTHORITY_HOST", "").strip()
OPSPORTAL_CA_BUNDLE = os.environ.get("OPSPORTAL_CA_BUNDLE", "").strip()
