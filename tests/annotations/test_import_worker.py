"""An uploaded import run by a real Celery worker process over Redis, on PostgreSQL, with live progress.

As in production: the job row and its file are written by this process (web),
the task is sent over Redis by another process, and the worker reads the file
from the same media folder and writes progress to the job's row.
"""

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from django.core.files.base import ContentFile
from django.db import connection

from annotations.importers import BATCH_SIZE
from annotations.models import ImportJob, Item, Review
from judging.models import GateDecision
from tests.celery_worker import BROKER, own_queue, start_worker
from tests.services import require

ROOT = Path(__file__).resolve().parent.parent.parent
pytestmark = [pytest.mark.worker, pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def queue():
    require("postgres", "redis")
    with own_queue() as name:
        yield name


def test_a_real_worker_imports_an_upload_and_reports_progress_every_batch(project, lead, settings, tmp_path, queue):
    settings.MEDIA_ROOT = tmp_path
    db = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "CELERY_BROKER_URL": BROKER,
        "LARRY_CELERY_QUEUE": queue,
        "LARRY_MEDIA_ROOT": str(tmp_path),
    }
    n = BATCH_SIZE * 12 + 7
    lines = [
        json.dumps(
            {
                "id": f"w{i}",
                "prompt": f"Question {i}?",
                "response": f"Answer {i}.",
                "human_label": "accept" if i % 2 else "",
            }
        )
        for i in range(n)
    ]
    lines.insert(5, "{not json")
    data = ("\n".join(lines) + "\n").encode()
    job = ImportJob(project=project, filename="items.jsonl", format="jsonl", created_by=lead, bytes_total=len(data))
    job.file.save("items.jsonl", ContentFile(data), save=False)
    job.save()

    worker = start_worker(env, "--pool", "solo", "-l", "info")
    seen: list[tuple[str, int, int]] = []
    try:
        enqueue = f"from annotations.tasks import run_import_job; run_import_job.delay({job.pk})"
        subprocess.run([sys.executable, "manage.py", "shell", "-c", enqueue], cwd=ROOT, env=env, check=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            job.refresh_from_db()
            if not seen or seen[-1] != (job.status, job.rows_read, job.bytes_read):
                seen.append((job.status, job.rows_read, job.bytes_read))
            if job.finished:
                break
            time.sleep(0.01)
        # Then the same worker re-gates the project: the imported labels decide their items.
        while time.monotonic() < deadline and GateDecision.objects.filter(item__project=project).count() < n:
            time.sleep(0.1)
    finally:
        worker.terminate()
        log = worker.communicate(timeout=30)[0]
    assert job.status == "done", (job.error, log[-3000:])
    assert (job.report["created"], job.report["labels"], job.rows_read) == (n, n // 2, n + 1)
    assert job.report["errors"] == [{"line": 6, "reason": job.report["errors"][0]["reason"]}]
    assert job.bytes_read == job.bytes_total and job.started_at and job.finished_at
    assert Item.objects.filter(project=project).count() == n and Review.objects.count() == n // 2
    # Progress was visible while it ran: rows and bytes read grew, batch by batch, before the end.
    running = [(rows, read) for status, rows, read in seen if status == "running" and 0 < rows < n + 1]
    assert running, seen
    # Rows read = the bad line (parsed ahead) + whole batches stored: full ones, and the short last one,
    # which may finish before another (batches are stored by two connections at once).
    assert all((rows - 1) % BATCH_SIZE in (0, n % BATCH_SIZE) for rows, _ in running), running
    # Bytes are those parsed, which runs one batch ahead of storing: they may reach the end first.
    assert all(0 < read <= job.bytes_total for _, read in running)
    assert running == sorted(running)
    assert "annotations.tasks.run_import_job[" in log and "succeeded" in log
    outcomes = GateDecision.objects.filter(item__project=project).values_list("outcome", flat=True)
    assert sorted(Counter(outcomes).items()) == [("accept", n // 2), ("pending", n - n // 2)], log[-3000:]
