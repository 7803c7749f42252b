"""The command line of a real Celery worker for tests and benchmarks."""

import sys


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
