# Larry's production image. One image, three jobs (see docker-compose.yml):
#   web      the default CMD: gunicorn serving larry_web.wsgi on 0.0.0.0:8000
#   worker   celery -A larry_web worker ...
#   migrate  python manage.py migrate --noinput (one-shot, before web and worker)
# Configuration comes from the environment only (larry_web/settings.py).
FROM python:3.11-slim

# WEB_CONCURRENCY is gunicorn's worker count; override it at run time.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    WEB_CONCURRENCY=3

# The unprivileged user the processes run as. It owns nothing under /app: the
# code and the collected static files stay read-only to it.
RUN useradd --create-home --uid 10001 --user-group larry

WORKDIR /app

# Runtime pins only (requirements-dev.txt is for tests and lint). Every pin
# installs from a wheel (psycopg-binary, google-re2, scikit-learn, ...), so the
# slim image needs no compiler or libpq headers.
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

COPY . .

# Collect static files into STATIC_ROOT (/app/staticfiles), which WhiteNoise
# serves. No database and no environment needed: the settings' defaults do.
RUN python manage.py collectstatic --noinput

# Uploaded import files (LARRY_MEDIA_ROOT, a volume in docker-compose.yml): the one
# folder the app writes to. A new named volume takes this folder's owner.
RUN mkdir -p /app/media && chown larry:larry /app/media

USER larry

EXPOSE 8000

# Workers: WEB_CONCURRENCY (above). --timeout 120 leaves room for streamed
# exports of a large accepted set; /dev/shm keeps worker heartbeats off disk.
CMD ["gunicorn", "larry_web.wsgi", "--bind", "0.0.0.0:8000", "--timeout", "120", "--worker-tmp-dir", "/dev/shm", "--access-logfile", "-"]
