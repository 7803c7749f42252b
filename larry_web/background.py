"""Follow-up work after the response, when tasks run in-process (no broker: the embedded SQLite default).

With a broker a task's ``delay`` only publishes it and a Celery worker runs it. Without one
(``CELERY_TASK_ALWAYS_EAGER``) ``delay`` runs the task on the spot, so the re-gating an import or an SME
decision asks for ran inside that request: a 50,000-item import answered only once every item was gated,
and each SME decision waited for the gate. ``enqueue(task, *args)`` is what those callers use instead of
``task.delay(*args)``: in a web process (``larry_web.wsgi`` calls ``enable()``) and in eager mode it hands
the task to one background thread of the process, which runs the queued tasks one after another, each on the
thread's own database connection (closed after each task), so the response goes out first. Everywhere
else (a broker; management commands, the benchmarks and the tests, which never call ``enable``) it is
exactly ``task.delay(*args)``.

One thread, so one writer of this process's follow-up work at a time (SQLite has one writer anyway; its
transactions are IMMEDIATE and wait for the lock, see settings). A task's failure is logged (the tasks
record their own outcome on their rows, e.g. ``RegateRequest.last_error``) and does not stop the next.
Queued work lives in the process: a process killed before running it loses it, as an in-process task
always did; a lost re-gating stays visible as a pending request on the project page. At interpreter exit
the queued work is finished first (``concurrent.futures`` joins its threads).
"""

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import kombu.exceptions
import redis.exceptions
from django.conf import settings
from django.db import connections

logger = logging.getLogger(__name__)

# What publishing a task raises when the broker cannot be reached (Redis down, refused, timed out).
BROKER_ERRORS = (kombu.exceptions.OperationalError, redis.exceptions.RedisError)

_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None
_enabled = False
_THREAD_NAME = "larry-after-response"


def enable() -> None:
    """Run eager tasks given to ``enqueue`` on the background thread from now on (a web process)."""
    global _enabled
    _enabled = True


def disable() -> None:
    """Run them in the caller again (what the tests and commands get); queued work still finishes."""
    global _enabled
    _enabled = False


def _run(task, args: tuple) -> None:
    try:
        task.delay(*args)
    except Exception:
        logger.exception("background task %s%r failed", task.name, args)
    finally:
        connections.close_all()  # this thread's own connections; the next task opens fresh ones


def enqueue(task, *args) -> None:
    """``task.delay(*args)``, or in an enabled process in eager mode, the same on the background thread.

    Work that a background task itself enqueues runs at once on that thread (in turn, as before).
    Raises what ``task.delay`` raises when it runs here (a broker that is down).
    """
    global _executor
    eager = settings.CELERY_TASK_ALWAYS_EAGER
    if not (_enabled and eager) or threading.current_thread().name.startswith(_THREAD_NAME):
        task.delay(*args)
        return
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=_THREAD_NAME)
        _executor.submit(_run, task, args)


def wait_idle(timeout: float | None = 60) -> bool:
    """Wait until every task enqueued so far has run; True when done, False after ``timeout`` seconds.

    For tests and benchmarks: the thread runs tasks in order, so a marker queued now runs after them all.
    """
    with _lock:
        if _executor is None:
            return True
        marker: Future = _executor.submit(lambda: None)
    try:
        marker.result(timeout=timeout)
    except TimeoutError:
        return False
    return True
