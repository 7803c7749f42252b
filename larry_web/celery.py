"""The Celery app. Configuration comes from Django settings (``CELERY_*``).

With no ``CELERY_BROKER_URL`` the settings make tasks run in-process
(``task_always_eager``), so the embedded default needs no broker.
"""

import os

from celery import Celery
from celery.signals import worker_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "larry_web.settings")

app = Celery("larry")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_init.connect
def import_the_judge_client(**_kwargs) -> None:
    """Import the judge's HTTP client (openai, aiohttp: ~1 s) as a worker starts, not in its first chunk.

    Sent before the pool starts, so prefork children inherit the modules.
    """
    from openai import AsyncOpenAI, DefaultAioHttpClient  # noqa: F401
