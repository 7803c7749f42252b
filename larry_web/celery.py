"""The Celery app. Configuration comes from Django settings (``CELERY_*``).

With no ``CELERY_BROKER_URL`` the settings make tasks run in-process
(``task_always_eager``), so the embedded default needs no broker.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "larry_web.settings")

app = Celery("larry")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
