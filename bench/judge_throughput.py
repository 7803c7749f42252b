"""Benchmark: judge-run throughput through a real Celery worker over Redis, against a server of fixed latency.

Usage (from the project folder; PostgreSQL and Redis on 127.0.0.1 as on our machines):

    .venv/bin/python bench/judge_throughput.py [--items 2000] [--in-flight 64] [--latency-ms 200]

A lean local OpenAI-compatible server (bench/fake_judge.py, an asyncio
server in a process of its own) answers every chat completion after
``--latency-ms``, as a GPU server that is never the bottleneck would;
``--test-server`` uses the tests' threaded server (tests/judge_server.py)
in this process instead, which costs far more CPU. The database
``<DATABASE_URL's name>_bench_judge`` (see common.py) is (re)created; one
project with ``--items`` items and a judge endpoint with ``max_in_flight = --in-flight`` is
judged by one Celery worker process (``--pool solo``, so its CPU time is the
app's) fed over Redis, then again by a prefork pool of 2 processes
(``--processes 1,2``, the default), each keeping ``--in-flight`` requests
open (a sliding window over leased work rows), so up to 2 x C are open:
``efficiency`` is still reckoned against C, ``efficiency_of_all_processes``
against 2 x C.

Reported: items/s from run start to finish; efficiency = items/s / (C / L),
the share of the ideal rate with C requests always in flight;
``efficiency_steady``, the same from the first stored verdict to the last
(without the run's start and end: the start task's delivery, the first
requests' latency, the gate); the worker's
CPU time per judged item (from /proc/<pid>/stat, user + system, of the
worker and its pool processes, measured from just before the run starts);
and the server's. Goal (one process): efficiency at least 0.95 and at most
1.5 ms of worker CPU per item. The last line of output is one JSON object:
the first (one-process) run's figures, and ``runs`` with every run's.
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from common import ROOT, database_name, database_url, recreate_database

DB_NAME = database_name("judge")
QUEUE = f"larry-bench-{uuid.uuid4().hex[:8]}"
ENV = {
    "DATABASE_URL": database_url(DB_NAME),
    "CELERY_BROKER_URL": "redis://127.0.0.1:6379/14",
    "LARRY_CELERY_QUEUE": QUEUE,
    "DJANGO_SETTINGS_MODULE": "larry_web.settings",
}
os.environ.update(ENV)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker_cpu_seconds(pid: int) -> dict[int, float]:
    """CPU time of the worker process and of its pool processes (prefork), by pid."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return {p: cpu_seconds(p) for p in [pid, *map(int, children)]}


class LeanServer:
    """bench/fake_judge.py in a process of its own."""

    def __init__(self, latency_ms: float) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "fake_judge.py"), "--latency-ms", str(latency_ms)],
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.process.stdout.readline()
        if not line.startswith("port "):
            self.process.kill()
            raise RuntimeError(f"bench/fake_judge.py did not start: {line!r}")
        self.base_url = f"http://127.0.0.1:{int(line.split()[1])}/v1"

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.process.pid)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


class ThreadedTestServer:
    """tests/judge_server.py in this process (its CPU is this process's, which also polls the run)."""

    def __init__(self, latency_ms: float) -> None:
        from tests.judge_server import JudgeServer

        self.server = JudgeServer(latency=latency_ms / 1000).start()
        self.base_url = self.server.base_url

    def cpu_seconds(self) -> float:
        return cpu_seconds(os.getpid())

    def stop(self) -> None:
        self.server.stop()


def start_server(latency_ms: float, *, test_server: bool):
    return ThreadedTestServer(latency_ms) if test_server else LeanServer(latency_ms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--latency-ms", type=float, default=200)
    parser.add_argument("--test-server", action="store_true", help="use tests/judge_server.py (threads, costly)")
    parser.add_argument(
        "--processes",
        default="1,2",
        help="worker pool processes, one run each (comma-separated): 1 is --pool solo; more is prefork, "
        "each process with --in-flight requests open",
    )
    args = parser.parse_args()

    recreate_database(DB_NAME)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    results = [run_once(args, int(n)) for n in args.processes.split(",")]
    # The goal is reckoned for the first (one process); the others are reported beside it.
    print(json.dumps({**results[0], "runs": results}))


def run_once(args, processes: int) -> dict:
    """Judge ``--items`` items with a fresh project through a worker of ``processes`` pool processes."""
    from django.db.models import Max, Min

    from annotations.models import Item, Project
    from judging.models import JudgeEndpoint, JudgeRun, Verdict
    from judging.services import judge_run_create
    from tests.celery_worker import worker_command

    server = start_server(args.latency_ms, test_server=args.test_server)
    Project.objects.filter(slug="bench").delete()
    project = Project.objects.create(slug="bench", name="Judge benchmark")
    JudgeEndpoint.objects.create(
        project=project,
        name="bench judge",
        base_url=server.base_url,
        model="bench-judge",
        max_in_flight=args.in_flight,
        is_default=True,
    )
    Item.objects.bulk_create(
        Item(project=project, external_id=f"item-{i}", prompt=f"What is {i} + {i}?", response=f"It is {2 * i}.")
        for i in range(args.items)
    )
    pool = ("--pool", "solo") if processes == 1 else ("--pool", "prefork", "-c", str(processes))
    worker = subprocess.Popen(
        worker_command(QUEUE, *pool, "-l", "info"),
        cwd=ROOT,
        env={**os.environ, **ENV},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        for line in worker.stdout:
            if "ready." in line:
                break
        # Keep reading the worker's log, or it blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in worker.stdout], daemon=True).start()
        cpu_before = worker_cpu_seconds(worker.pid)
        server_cpu_before = server.cpu_seconds()
        started = time.perf_counter()
        run = judge_run_create(project=project)
        while True:
            run.refresh_from_db()
            if run.status in (JudgeRun.Status.FINISHED, JudgeRun.Status.FAILED):
                break
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        cpu_after = worker_cpu_seconds(worker.pid)
        cpu = sum(cpu_after[p] - cpu_before.get(p, 0) for p in cpu_after)
        server_cpu = server.cpu_seconds() - server_cpu_before
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        server.stop()
    items_per_s = run.items_done / elapsed
    ideal = args.in_flight / (args.latency_ms / 1000)
    # The window's own rate: from the first stored verdict to the last, without the run's start (the start
    # task's delivery, the first leases and requests) and end (the last batch's latency, the gate).
    span = Verdict.objects.filter(run=run).aggregate(first=Min("created_at"), last=Max("created_at"))
    steady_s = (span["last"] - span["first"]).total_seconds()
    first_batch = Verdict.objects.filter(run=run, created_at=span["first"]).count()
    steady_per_s = (run.items_done - first_batch) / steady_s if steady_s > 0 else 0.0
    result = {
        "benchmark": "judge_throughput",
        "items": args.items,
        "in_flight": args.in_flight,
        "processes": processes,
        "latency_ms": args.latency_ms,
        "judged": run.items_done,
        "errors": run.items_error,
        "seconds": round(elapsed, 2),
        "items_per_s": round(items_per_s, 1),
        "ideal_items_per_s": round(ideal, 1),
        "efficiency": round(items_per_s / ideal, 3),
        "efficiency_steady": round(steady_per_s / ideal, 3),
        "seconds_to_first_verdict": round((span["first"] - run.created_at).total_seconds(), 2),
        "efficiency_of_all_processes": round(items_per_s / (ideal * processes), 3),
        "cpu_ms_per_item": round(cpu * 1000 / max(run.items_done, 1), 3),
        "server": "tests" if args.test_server else "lean",
        "server_cpu_ms_per_item": round(server_cpu * 1000 / max(run.items_done, 1), 3),
    }
    print(
        f"{processes} process(es): {run.items_done} judged ({run.items_error} errors) in {elapsed:.1f} s: "
        f"{items_per_s:.0f} items/s of an ideal {ideal:.0f} per process (efficiency {result['efficiency']}, "
        f"{result['efficiency_of_all_processes']} of {processes} x C / L; from the first verdict to the last "
        f"{result['efficiency_steady']}); worker CPU "
        f"{result['cpu_ms_per_item']} ms per item",
        flush=True,
    )
    return result


if __name__ == "__main__":
    main()
