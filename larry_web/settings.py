"""Larry's settings: one file, read from the environment, with embedded defaults.

| variable | default (embedded) | production |
| --- | --- | --- |
| DATABASE_URL | SQLite file ``larry.sqlite3`` in the project folder | ``postgres://…`` |
| CELERY_BROKER_URL | none: tasks run in-process | ``redis://…`` |
| LARRY_JUDGE_BASE_URL, LARRY_JUDGE_MODEL, LARRY_JUDGE_API_KEY | none: local classifier judge | a vLLM server |
| SECRET_KEY | a development key | a long random string |
| DEBUG | off | off |
| ALLOWED_HOSTS | ``127.0.0.1,localhost`` | the site's host names |
| CSRF_TRUSTED_ORIGINS | none | ``https://`` + the site's host name |
| LARRY_HTTPS | on when every CSRF trusted origin is https:// | on: Secure cookies, HSTS |
| LARRY_TRUSTED_PROXIES | 0 | 1 behind one reverse proxy |
| LARRY_MEDIA_ROOT | ``media/`` in the project folder | a volume shared by web and worker |
| LARRY_IMPORT_MAX_FIELD_BYTES | 1048576 (1 MiB) | the same |
| LARRY_IMPORT_INLINE_MAX_BYTES | 67108864 (64 MiB): a larger REST import answers 202 with a job | the same |
| LARRY_SAMPLE_INLINE_MAX_ITEMS | 20000 | the same |
| LARRY_LOGIN_FAILURE_LIMIT, LARRY_LOGIN_LOCKOUT_S | 10 failures, 900 s | the same |

Values are parsed strictly: a malformed boolean or integer stops start-up with
an error that names the variable.
"""

import os
import warnings
from datetime import timedelta
from pathlib import Path

import dj_database_url
from csp.constants import NONE, SELF
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str = "") -> str:
    """The variable's value, or ``default`` when it is unset or empty."""
    return os.environ.get(name, "") or default


def env_bool(name: str, default: bool) -> bool:
    """``1/true/yes/on`` or ``0/false/no/off`` (any case); raises ImproperlyConfigured otherwise."""
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean (use 1/0, true/false, yes/no, on/off)")


def env_int(name: str, default: int) -> int:
    """An integer; raises ImproperlyConfigured when the value is not one."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not an integer") from None


def env_int_at_least(name: str, default: int, least: int, why: str = "") -> int:
    """An integer of at least ``least``; raises ImproperlyConfigured naming the variable otherwise."""
    value = env_int(name, default)
    if value < least:
        raise ImproperlyConfigured(f"{name}={value} is below {least}{f': {why}' if why else ''}")
    return value


def env_list(name: str, default: str) -> list[str]:
    """A comma-separated list, blanks dropped."""
    return [part.strip() for part in env_str(name, default).split(",") if part.strip()]


SECRET_KEY = env_str("SECRET_KEY", "larry-development-key-set-SECRET_KEY-in-production")
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")

# HTTPS. "Served over HTTPS" is LARRY_HTTPS, or, when that is unset, every CSRF trusted origin being
# https:// (docs/DEPLOY.md has a proxy that terminates TLS set them); `make demo` on http://127.0.0.1 sets neither.
# It turns on Secure session and CSRF cookies and HSTS; each has its own switch too.
LARRY_HTTPS = env_bool(
    "LARRY_HTTPS", bool(CSRF_TRUSTED_ORIGINS) and all(o.startswith("https://") for o in CSRF_TRUSTED_ORIGINS)
)
# Reverse proxies in front of Larry, each appending to X-Forwarded-For. With one or more, the client's address
# (for log-in lock-outs) is the one the outermost of them saw, and X-Forwarded-Proto says whether the request
# came over HTTPS: the proxy must set that header, overwriting what the client sent.
LARRY_TRUSTED_PROXIES = env_int("LARRY_TRUSTED_PROXIES", 0)
if LARRY_TRUSTED_PROXIES < 0:
    raise ImproperlyConfigured(f"LARRY_TRUSTED_PROXIES={LARRY_TRUSTED_PROXIES} is below 0")
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if LARRY_TRUSTED_PROXIES else None
SESSION_ENGINE = "larry_web.sessions"
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", LARRY_HTTPS)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", LARRY_HTTPS)
# On by default only behind a proxy: without one Larry cannot tell an https request from an http one
# (unless gunicorn itself serves TLS, when there is no http to redirect from), and would redirect forever.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", LARRY_HTTPS and LARRY_TRUSTED_PROXIES > 0)
# A year, the usual value (and hstspreload.org's minimum); sent on https responses only.
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31_536_000 if LARRY_HTTPS else 0)
if SECURE_HSTS_SECONDS < 0:
    raise ImproperlyConfigured(f"SECURE_HSTS_SECONDS={SECURE_HSTS_SECONDS} is below 0")
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_htmx",
    "template_partials",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "axes",
    "csp",
    "annotations",
    "judging",
    "distillation",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last: turns a log-in that django-axes refused into the lock-out page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "larry_web.urls"
WSGI_APPLICATION = "larry_web.wsgi.application"

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
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{BASE_DIR / 'larry.sqlite3'}"),
        # Persistent connections (checked before each request reuses one): a new PostgreSQL connection per
        # request cost more than the rest of an SME's decision. 0 opens one per request, as Django's default.
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 300),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # One writer at a time: take the write lock when a transaction starts and
    # wait for it, instead of failing mid-transaction with "database is locked".
    DATABASES["default"].setdefault("OPTIONS", {}).update({"transaction_mode": "IMMEDIATE", "timeout": 20})
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Log-in lock-outs (django-axes) on /login/, /admin/login/ and POST /api/token/: after LARRY_LOGIN_FAILURE_LIMIT
# wrong passwords for one username, or from one address, log-ins for that username, and from that address, are
# refused (429) for LARRY_LOGIN_LOCKOUT_S after the last failure, whatever the password. Both, separately: the
# username stops a spray on one account from many addresses, the address one client trying many accounts. The
# price: anyone can lock an account they know the name of (staff lift it in the admin, Axes -> Access attempts).
# The address is REMOTE_ADDR, or X-Forwarded-For behind LARRY_TRUSTED_PROXIES (larry_web.login.client_ip).
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = env_int("LARRY_LOGIN_FAILURE_LIMIT", 10)
if AXES_FAILURE_LIMIT < 1:
    raise ImproperlyConfigured(f"LARRY_LOGIN_FAILURE_LIMIT={AXES_FAILURE_LIMIT} is below 1")
_LOCKOUT_S = env_int("LARRY_LOGIN_LOCKOUT_S", 900)
if _LOCKOUT_S < 1:
    raise ImproperlyConfigured(f"LARRY_LOGIN_LOCKOUT_S={_LOCKOUT_S} is below 1")
AXES_COOLOFF_TIME = timedelta(seconds=_LOCKOUT_S)
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
# Tries during a lock-out are refused without counting, so the lock ends LARRY_LOGIN_LOCKOUT_S after the failure
# that set it, as the page says, even for the owner trying the right password meanwhile.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_LOCKOUT_CALLABLE = "larry_web.login.lock_out_response"
AXES_CLIENT_IP_CALLABLE = "larry_web.login.client_ip"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "annotations:project_list"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"
# Serve straight from the finders too, so `make demo` needs no collectstatic;
# the production image runs collectstatic, which also writes gzip copies.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True
# Uploaded import files (annotations.ImportJob). Web and worker must both see this
# folder (one volume in docker-compose.yml). Never served as static files: uploads are data.
MEDIA_ROOT = Path(env_str("LARRY_MEDIA_ROOT", str(BASE_DIR / "media")))
MEDIA_URL = "media/"
# An upload over FILE_UPLOAD_MAX_MEMORY_SIZE (Django's 2.5 MB) is streamed to a temporary file while it
# arrives, in MEDIA_ROOT/uploading/ (larry_web.uploads): saving it as an import job's file is then a rename
# on the same file system (FileSystemStorage moves a temporary file), never a copy of hundreds of MB, as it
# would be from /tmp to the media volume (docker-compose.yml). The rest of the request body stays under
# DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB; file contents do not count).
FILE_UPLOAD_HANDLERS = [
    "django.core.files.uploadhandler.MemoryFileUploadHandler",
    "larry_web.uploads.TemporaryFileUploadHandler",
]
# ...and so STATIC_ROOT may not exist yet: that is expected, not worth a warning.
warnings.filterwarnings("ignore", message="No directory at: ")

# Content-Security-Policy on every response (django-csp): a second line of defence behind escaping. Scripts,
# styles and everything else only from our own origin; no inline script or style (static/ holds them all; htmx's
# inline indicator style is off, see templates/base.html), no eval, no plugins, no framing, forms post only here.
# The API docs add data: images (Swagger UI's icons), on that page only (larry_web/urls.py).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF],
        "object-src": [NONE],
        "base-uri": [SELF],
        "frame-ancestors": [NONE],
        "form-action": [SELF],
    }
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "larry_web.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # JSON only: people try the API in the docs (/api/docs/). DRF's browsable HTML API would be a second web UI
    # for untrusted text (jQuery, Bootstrap 3) whose templates need inline styles the CSP refuses.
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PARSER_CLASSES": [
        "larry_web.parsers.JSONParser",  # DRF's, but a body nested too deeply is a 400, not a 500
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}

# The OpenAPI 3 schema at /api/schema/, browsable at /api/docs/ (Swagger UI served from our own static files).
SPECTACULAR_SETTINGS = {
    "TITLE": "Larry API",
    "DESCRIPTION": (
        "Projects, items, SME reviews, judge runs and verdicts, label functions, and training-set snapshots. "
        "Authenticate with `Authorization: Token <key>` (your key: /account/api-token/ or POST /api/token/)."
    ),
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "DecisionEnum": "annotations.models.Decision",
        "RunStatusEnum": "larry_web.work.Run.Status",
        "ImportJobStatusEnum": "annotations.models.ImportJob.Status",
    },
}

# Celery: no broker means in-process tasks (the embedded default).
CELERY_TASK_ALWAYS_EAGER = not env_str("CELERY_BROKER_URL")
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "memory://localhost/")
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_DEFAULT_QUEUE = env_str("LARRY_CELERY_QUEUE", "celery")
# Tasks are acked late, so a task whose worker died is delivered again once its
# visibility timeout passes. Every task must end before that, or Redis hands it to
# a second worker while the first still runs: soft limit < hard limit < visibility
# timeout. At the soft limit a task gets SoftTimeLimitExceeded (and records the
# failure on its row); at the hard limit its process is killed and the task is
# marked failed, never delivered again. A judge chunk stops itself well before
# (LARRY_JUDGE_CHUNK_DEADLINE_S) and leaves the rest of its items to a new chunk.
_VISIBILITY_TIMEOUT = env_int("LARRY_CELERY_VISIBILITY_TIMEOUT", 3600)
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": _VISIBILITY_TIMEOUT,
    "unacked_restore_interval": max(1, min(10, _VISIBILITY_TIMEOUT // 4)),
    "unacked_restore_throttle": 1,
}
CELERY_TASK_SOFT_TIME_LIMIT = env_int("LARRY_TASK_SOFT_TIME_LIMIT_S", 1500)
CELERY_TASK_TIME_LIMIT = env_int("LARRY_TASK_TIME_LIMIT_S", 1800)
if not 0 < CELERY_TASK_SOFT_TIME_LIMIT < CELERY_TASK_TIME_LIMIT < _VISIBILITY_TIMEOUT:
    raise ImproperlyConfigured(
        f"need 0 < LARRY_TASK_SOFT_TIME_LIMIT_S ({CELERY_TASK_SOFT_TIME_LIMIT}) < LARRY_TASK_TIME_LIMIT_S "
        f"({CELERY_TASK_TIME_LIMIT}) < LARRY_CELERY_VISIBILITY_TIMEOUT ({_VISIBILITY_TIMEOUT}): a task must end "
        "before the broker hands it to another worker"
    )

# The judge: an OpenAI-compatible server (vLLM); none means the local classifier.
LARRY_JUDGE_BASE_URL = env_str("LARRY_JUDGE_BASE_URL")
LARRY_JUDGE_MODEL = env_str("LARRY_JUDGE_MODEL")
LARRY_JUDGE_API_KEY = env_str("LARRY_JUDGE_API_KEY")
# Requests one worker keeps open to the environment's judge (a project's JudgeEndpoint sets its own).
LARRY_JUDGE_MAX_IN_FLIGHT = env_int_at_least("LARRY_JUDGE_MAX_IN_FLIGHT", 32, 1, "at least one request in flight")
LARRY_JUDGE_TIMEOUT_S = env_int_at_least("LARRY_JUDGE_TIMEOUT_S", 120, 1, "a request needs some time to answer")
LARRY_JUDGE_MAX_RETRIES = env_int_at_least("LARRY_JUDGE_MAX_RETRIES", 3, 0)

# The teacher (Sensei Larry): an OpenAI-compatible server that writes responses; none means no teacher runs.
# A project's teacher settings (distillation.TeacherSettings) override these.
LARRY_TEACHER_BASE_URL = env_str("LARRY_TEACHER_BASE_URL")
LARRY_TEACHER_MODEL = env_str("LARRY_TEACHER_MODEL")
LARRY_TEACHER_API_KEY = env_str("LARRY_TEACHER_API_KEY")
# A teacher writes whole answers (up to its max tokens): each try may take longer than a verdict.
LARRY_TEACHER_TIMEOUT_S = env_int_at_least("LARRY_TEACHER_TIMEOUT_S", 300, 1, "a request needs some time to answer")
# Ask the judge server for each reply token's log-probability and this many alternatives (the OpenAI API
# allows 0 to 20), from which a verdict's confidence is read; 0 asks for none (verdicts then have no confidence).
LARRY_JUDGE_TOP_LOGPROBS = env_int_at_least("LARRY_JUDGE_TOP_LOGPROBS", 5, 0)
if LARRY_JUDGE_TOP_LOGPROBS > 20:
    raise ImproperlyConfigured(
        f"LARRY_JUDGE_TOP_LOGPROBS={LARRY_JUDGE_TOP_LOGPROBS} is over 20, the most the OpenAI chat API allows"
    )
LARRY_JUDGE_CHUNK_SIZE = env_int_at_least("LARRY_JUDGE_CHUNK_SIZE", 256, 1, "a chunk holds at least one item")
# A chunk starts requests for at most this long, then stores what it has and queues the rest as a new chunk;
# at most the soft time limit less a minute (a fifth of it, for limits under 5 minutes), so that storing
# always finishes in time.
_STORE_MARGIN_S = max(1, min(60, CELERY_TASK_SOFT_TIME_LIMIT // 5))
_DEADLINE_CAP_S = CELERY_TASK_SOFT_TIME_LIMIT - _STORE_MARGIN_S
if env_str("LARRY_JUDGE_CHUNK_DEADLINE_S") and env_int("LARRY_JUDGE_CHUNK_DEADLINE_S", 0) > _DEADLINE_CAP_S:
    raise ImproperlyConfigured(
        f"LARRY_JUDGE_CHUNK_DEADLINE_S={env_int('LARRY_JUDGE_CHUNK_DEADLINE_S', 0)} is over {_DEADLINE_CAP_S} s, "
        f"the soft time limit ({CELERY_TASK_SOFT_TIME_LIMIT} s) less {_STORE_MARGIN_S} s to store what the chunk "
        "judged: lower it, or raise LARRY_TASK_SOFT_TIME_LIMIT_S"
    )
LARRY_JUDGE_CHUNK_DEADLINE_S = min(env_int("LARRY_JUDGE_CHUNK_DEADLINE_S", 600), _DEADLINE_CAP_S)
# Requests still open at the deadline (already paid for) get this long to finish before they are cancelled.
LARRY_JUDGE_CHUNK_GRACE_S = _STORE_MARGIN_S / 2
if LARRY_JUDGE_CHUNK_DEADLINE_S < 1:
    raise ImproperlyConfigured(
        f"LARRY_JUDGE_CHUNK_DEADLINE_S is {LARRY_JUDGE_CHUNK_DEADLINE_S} s: give at least 1 s, with a soft time "
        "limit of at least 2 s"
    )

# A training-set build renews its claim on the set every 1,000 items (and between phases); a build whose
# worker died is taken over by a redelivered task once this many seconds have passed since its last renewal.
LARRY_TRAINING_SET_LEASE_S = env_int_at_least("LARRY_TRAINING_SET_LEASE_S", 300, 1)
if LARRY_TRAINING_SET_LEASE_S >= _VISIBILITY_TIMEOUT:
    # A build that waits for a lease retries after it runs out; longer than the visibility timeout, and Redis
    # hands the waiting task out again and again meanwhile.
    raise ImproperlyConfigured(
        f"LARRY_TRAINING_SET_LEASE_S={LARRY_TRAINING_SET_LEASE_S} must be below "
        f"LARRY_CELERY_VISIBILITY_TIMEOUT ({_VISIBILITY_TIMEOUT})"
    )

# A judge run's work is one row per (run, item) (judging.models.JudgeWork). A worker leases rows for this many
# seconds and renews the lease every third of it while it judges them; the rows of a worker that died are
# taken by another once the lease has run out, and a run with rows left, no live lease and no progress for
# this long is "stalled" and re-queued (services.judge_run_revive_if_stalled).
LARRY_JUDGE_LEASE_S = env_int_at_least("LARRY_JUDGE_LEASE_S", 30, 1)
if LARRY_JUDGE_LEASE_S >= _VISIBILITY_TIMEOUT:
    raise ImproperlyConfigured(
        f"LARRY_JUDGE_LEASE_S={LARRY_JUDGE_LEASE_S} must be below LARRY_CELERY_VISIBILITY_TIMEOUT "
        f"({_VISIBILITY_TIMEOUT}): a dead worker's judge items must come back before its task is redelivered"
    )

# Import: the largest field accepted, in bytes of UTF-8; a line may be 8 times that (annotations/importers.py).
LARRY_IMPORT_MAX_FIELD_BYTES = env_int("LARRY_IMPORT_MAX_FIELD_BYTES", 1_048_576)
if LARRY_IMPORT_MAX_FIELD_BYTES < 1024:
    raise ImproperlyConfigured(f"LARRY_IMPORT_MAX_FIELD_BYTES={LARRY_IMPORT_MAX_FIELD_BYTES} is below 1024")
# A REST import (POST /api/projects/<slug>/import/) of a file larger than this, in bytes, answers 202 with an
# import job run by a Celery worker (or, without a broker, a background thread) instead of importing inside the
# request; a smaller one does too when the client sends "Prefer: respond-async". 0: every REST import is a job.
LARRY_IMPORT_INLINE_MAX_BYTES = env_int_at_least("LARRY_IMPORT_INLINE_MAX_BYTES", 64 * 1024 * 1024, 0)

# Sample draws (POST .../samples/): a draw of more items than this is made in the background (202 Accepted, a
# Celery task or the web process's background thread), as is any whose client sends ``Prefer: respond-async``.
LARRY_SAMPLE_INLINE_MAX_ITEMS = env_int_at_least("LARRY_SAMPLE_INLINE_MAX_ITEMS", 20_000, 1)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    # Credentials a library might log (an Authorization header in an exception's repr) are blanked.
    "filters": {"redact_secrets": {"()": "larry_web.logs.RedactSecrets"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "filters": ["redact_secrets"]}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "WARNING")},
    # The judge client's HTTP library logs every request at INFO: hundreds of lines a second, and their
    # CPU, from a worker at `-l info`. Failures still show: openai logs retries and errors.
    "loggers": {"httpx2": {"level": "WARNING"}},
}
