"""The Celery app. Configuration comes from Django settings (``CELERY_*``).

With no ``CELERY_BROKER_URL`` the settings make tasks run in-process
(``task_always_eager``), so the embedded default needs no broker.
"""

import os

from celery import Celery
from celery.signals import after_setup_logger, after_setup_task_logger, worker_init

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


@after_setup_logger.connect
@after_setup_task_logger.connect
def redact_secrets_in_logs(**_kwargs) -> None:
    """The worker's log handlers blank credentials too (``larry_web.logs``): Celery logs the repr of a
    task's exception, which an HTTP client may fill with the request's headers."""
    from larry_web.logs import add_to_all_handlers

    add_to_all_handlers()
