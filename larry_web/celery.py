"""The Celery app. Configuration comes from Django settings (``CELERY_*``).

With no ``CELERY_BROKER_URL`` the settings make tasks run in-process
(``task_always_eager``), so the embedded default needs no broker.
"""

import os
import threading

from celery import Celery
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    worker_init,
    worker_process_init,
    worker_ready,
)

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


@worker_init.connect
def import_the_statistics_libraries(**_kwargs) -> None:
    """Import scipy and scikit-learn as a worker starts: web processes import them only when a page needs them
    (idle memory), but the worker calibrates every run as it finishes and trains the local classifier, and
    a first import there (~1 s) would delay a finished run's calibration. Inherited by prefork children."""
    import scipy.special
    import scipy.stats  # noqa: F401
    import sklearn.feature_extraction.text
    import sklearn.isotonic
    import sklearn.linear_model
    import sklearn.metrics
    import sklearn.model_selection
    import sklearn.pipeline  # noqa: F401


@worker_process_init.connect
def one_blas_thread_per_pool_process(**_kwargs) -> None:
    """Each pool process does its numerical work (the local classifier, calibration) on one BLAS/OpenMP
    thread (``threadpoolctl``): the pool already has a process per core, and a thread per core in each of them
    spin-wait for each other on small vector operations (lbfgs over tf-idf features ran 24x slower on a busy
    2-core machine, ``bench/judge_quality.py``)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


@after_setup_logger.connect
@after_setup_task_logger.connect
def redact_secrets_in_logs(**_kwargs) -> None:
    """The worker's log handlers blank credentials too (``larry_web.logs``): Celery logs the repr of a
    task's exception, which an HTTP client may fill with the request's headers."""
    from larry_web.logs import add_to_all_handlers

    add_to_all_handlers()


@worker_ready.connect
def watch_for_stalled_runs(**_kwargs) -> None:
    """Every worker watches for judge and teacher runs whose workers died (``services.judge_runs_revive_stalled``,
    ``teacher_runs.teacher_runs_revive_stalled``): at once
    as it starts (a worker restarted after a crash takes its runs up again) and then every third of
    ``LARRY_JUDGE_LEASE_S``, from a daemon thread of the worker's main process, which runs no task itself.
    No beat service is needed; several workers watching at once revive a run once (a conditional UPDATE)."""
    from django.conf import settings

    period = max(settings.LARRY_JUDGE_LEASE_S / 3, 1.0)
    threading.Thread(target=_watch, args=(period,), name="larry-stall-watch", daemon=True).start()


def _watch(period: float) -> None:
    import logging
    import time

    from django.db import connection

    from distillation.teacher_runs import teacher_runs_revive_stalled
    from judging.services import judge_runs_revive_stalled

    log = logging.getLogger("judging")
    while True:
        try:
            revived = judge_runs_revive_stalled()
            if revived:
                log.warning("revived %d stalled judge run(s): their workers stopped", revived)
            revived = teacher_runs_revive_stalled()
            if revived:
                log.warning("revived %d stalled teacher run(s): their workers stopped", revived)
        except Exception:  # a database restart, say: try again next time
            log.exception("could not check for stalled judge runs")
        finally:
            connection.close()
        time.sleep(period)
