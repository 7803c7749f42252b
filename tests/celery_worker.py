"""The command line of a real Celery worker for tests and benchmarks, and a queue of a test's own."""

import contextlib
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

# The tests' Redis database: a test worker listens on a queue of its own there.
BROKER = "redis://127.0.0.1:6379/15"


@contextlib.contextmanager
def own_queue() -> Iterator[str]:
    """A unique queue name (``larry-test-<8 hex>``); afterwards every Redis key naming it is deleted
    (the queue and kombu's bindings), so test runs leave nothing behind in ``BROKER``."""
    import redis

    queue = f"larry-test-{uuid.uuid4().hex[:8]}"
    try:
        yield queue
    finally:
        client = redis.Redis.from_url(BROKER)
        keys = list(client.scan_iter(match=f"*{queue}*"))
        if keys:
            client.delete(*keys)
        client.close()


def worker_command(queue: str, *options: str) -> list[str]:
    """``celery -A larry_web worker`` on ``queue`` only, without the cluster chatter a lone test worker needs not.

    ``options`` go before the queue option, e.g. ``("--pool", "solo", "-l", "info")``.
    """
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "larry_web",
        "worker",
        *options,
        "-Q",
        queue,
        "--without-heartbeat",
        "--without-gossip",
        "--without-mingle",
    ]


def start_worker(env: dict, *options: str) -> subprocess.Popen:
    """A Celery worker process on ``env["LARRY_CELERY_QUEUE"]`` (``worker_command``), run from the project's
    root with ``env``; its output (stdout and stderr together, text) is read with ``communicate()``."""
    return subprocess.Popen(
        worker_command(env["LARRY_CELERY_QUEUE"], *options),
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
