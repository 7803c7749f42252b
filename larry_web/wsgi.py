"""WSGI entry point (gunicorn larry_web.wsgi)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "larry_web.settings")
application = get_wsgi_application()

from larry_web import background  # noqa: E402  (after set-up: it reads the settings)

# Without a broker, re-gating after an import or an SME decision runs after the response, not in it.
background.enable()
