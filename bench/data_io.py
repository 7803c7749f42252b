"""Benchmark: import 100,000 JSONL items, then export the accepted set over HTTP, on PostgreSQL.

Usage (from the project folder; PostgreSQL on 127.0.0.1:5432 with trust auth, as on our machines):

    .venv/bin/python bench/data_io.py [--items 100000] [--port 8765]

It (re)creates its database (``larry_bench_data_io``, see bench/common.py) and migrates it. It
writes a JSONL file of ``--items`` items sampled (seeded) from the real data
in ``../shared/data`` (synthetic items of similar sizes when that is
absent), each with a unique id and the file's ``human_label``, and a file of
its first half. Each file is imported into a project of its own by a fresh
process (``import_items``, as ``manage.py import_items`` does): items/s is
the larger import's rows over the time of ``import_items`` alone (every row
has a prior label, so each item also stores an SME review), and the peak
RSS of each importing process is its ``ru_maxrss``. The large file is then
imported once more into a third project with labels ignored, for
``import_items_per_s_no_labels``.

Every item is then marked accepted (one ``GateDecision`` row each, written
in SQL), and 1 % of them get an SME correction, so the export reads them.
For each project a fresh gunicorn (one sync worker) serves the app on
127.0.0.1, and a client reads ``GET /api/projects/<slug>/export/chat.jsonl``
with a staff API token in 64 KiB reads: time to first byte (request sent to
first body byte), MB/s (10^6 bytes over the whole response), the line count
(checked against the accepted set), and the worker process's peak RSS
(``VmHWM`` in ``/proc``). Flat memory means the 50,000 and 100,000 figures
are about the same. The last line of output is one JSON object.
"""

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, database_name, database_url, recreate_database, write_items

DB_NAME = database_name("data_io")


def child_import(slug: str, path: str, labels: bool = True) -> None:
    """In a fresh process: import ``path`` into a new project ``slug``; print one JSON line."""
    import django

    django.setup()
    from annotations.importers import import_items
    from annotations.models import Project

    project = Project.objects.create(slug=slug, name=slug)
    started = time.perf_counter()
    with open(path, "rb") as stream:
        report = import_items(project=project, stream=stream, fmt="jsonl", import_labels=labels)
    seconds = time.perf_counter() - started
    print(
        json.dumps(
            {"seconds": seconds, "created": report.created, "labels": report.labels, "errors": len(report.errors)}
        )
    )


def run_child(*args: str) -> tuple[dict, float]:
    """Run this file with ``args`` in a fresh process; its last JSON line and its peak RSS in MB."""
    process = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    out = process.stdout.read()
    _pid, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"child {args} failed with {process.returncode}")
    return json.loads(out.strip().splitlines()[-1]), usage.ru_maxrss / 1024


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for {pid}")


def export_over_http(slug: str, token: str, port: int) -> dict:
    """A fresh gunicorn on 127.0.0.1:``port``; read the project's chat JSONL through it."""
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "larry_web.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", "1",
         "--timeout", "300", "--log-level", "warning"],
        cwd=ROOT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
                conn.request("GET", "/login/")
                conn.getresponse().read()
                conn.close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
        worker = int(children[0])
        rss_before = vm_hwm_mb(worker)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        path = f"/api/projects/{slug}/export/chat.jsonl"
        started = time.perf_counter()
        conn.request("GET", path, headers={"Authorization": f"Token {token}"})
        response = conn.getresponse()
        if response.status != 200:
            raise SystemExit(f"GET {path}: {response.status} {response.read()[:500]!r}")
        first = response.read1(65536)
        first_byte = time.perf_counter() - started
        size, lines, tail = len(first), first.count(b"\n"), first
        while block := response.read1(65536):
            size += len(block)
            lines += block.count(b"\n")
            tail = block
        seconds = time.perf_counter() - started
        conn.close()
        assert tail.endswith(b"\n")
        return {
            "bytes": size,
            "lines": lines,
            "seconds": seconds,
            "first_byte_ms": first_byte * 1000,
            "mb_per_s": size / 1e6 / seconds,
            "worker_rss_mb_idle": rss_before,
            "worker_peak_rss_mb": vm_hwm_mb(worker),
        }
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()

    recreate_database(DB_NAME)
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection
    from rest_framework.authtoken.models import Token

    from annotations.models import Item, Project, Review

    call_command("migrate", verbosity=0)
    half = args.items // 2
    with tempfile.TemporaryDirectory() as folder:
        big, small = Path(folder) / "items.jsonl", Path(folder) / "half.jsonl"
        origin = write_items(big, args.items)
        with big.open("rb") as source, small.open("wb") as out:
            for _ in range(half):
                out.write(source.readline())
        file_mb = big.stat().st_size / 1e6
        print(f"{args.items} items ({file_mb:.1f} MB) sampled from {origin}", flush=True)
        imported = {}
        for slug, path, n in (("half", small, half), ("full", big, args.items), ("nolabels", big, args.items)):
            result, rss = run_child("--child-import", slug, str(path), *(["--no-labels"] if slug == "nolabels" else []))
            if slug == "nolabels":
                no_labels_per_s = n / result["seconds"]
                print(
                    f"import {n} without labels: {result['seconds']:.2f} s, {no_labels_per_s:,.0f} items/s", flush=True
                )
                continue
            assert result["created"] == n and result["errors"] == 0, result
            imported[n] = {**result, "peak_rss_mb": rss, "items_per_s": n / result["seconds"]}
            print(
                f"import {n}: {result['seconds']:.2f} s, {n / result['seconds']:,.0f} items/s, "
                f"{result['labels']} labels, peak RSS {rss:.0f} MB",
                flush=True,
            )

    staff = get_user_model().objects.create_user("bench-staff", is_staff=True)
    token = Token.objects.create(user=staff).key
    exported = {}
    for slug, n in (("half", half), ("full", args.items)):
        project = Project.objects.get(slug=slug)
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO judging_gatedecision (item_id, outcome, basis, basis_decision, vetoed, reasons, "
                "decided_at) SELECT id, 'accept', 'sme', 'accept', false, '[]', now() FROM annotations_item "
                "WHERE project_id = %s",
                [project.pk],
            )
            cursor.execute("ANALYZE")
        corrected = Item.objects.filter(project=project).order_by("id")[::100]
        Review.objects.filter(item__in=[i.pk for i in corrected], reviewer=None).update(
            corrected_response="A better answer, written by an SME."
        )
        result = export_over_http(slug, token, args.port)
        assert result["lines"] == n, result
        exported[n] = result
        print(
            f"export {n}: {result['bytes'] / 1e6:.1f} MB in {result['seconds']:.2f} s = {result['mb_per_s']:.1f} MB/s, "
            f"first byte {result['first_byte_ms']:.0f} ms, worker peak RSS {result['worker_peak_rss_mb']:.0f} MB "
            f"(idle {result['worker_rss_mb_idle']:.0f} MB)",
            flush=True,
        )

    full, halfway = exported[args.items], exported[half]
    summary = {
        "benchmark": "data_io",
        "items": args.items,
        "source": origin,
        "file_mb": round(file_mb, 1),
        "import_items_per_s": round(imported[args.items]["items_per_s"]),
        "import_items_per_s_50k": round(imported[half]["items_per_s"]),
        "import_items_per_s_no_labels": round(no_labels_per_s),
        "import_peak_rss_mb_50k": round(imported[half]["peak_rss_mb"], 1),
        "import_peak_rss_mb_100k": round(imported[args.items]["peak_rss_mb"], 1),
        "export_mb": round(full["bytes"] / 1e6, 1),
        "export_mb_per_s": round(full["mb_per_s"], 1),
        "export_mb_per_s_50k": round(halfway["mb_per_s"], 1),
        "export_first_byte_ms": round(full["first_byte_ms"], 1),
        "export_first_byte_ms_50k": round(halfway["first_byte_ms"], 1),
        "peak_rss_mb_50k": round(halfway["worker_peak_rss_mb"], 1),
        "peak_rss_mb_100k": round(full["worker_peak_rss_mb"], 1),
    }
    print(json.dumps(summary))


os.environ["DATABASE_URL"] = database_url(DB_NAME)
os.environ.pop("CELERY_BROKER_URL", None)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "larry_web.settings")

if __name__ == "__main__":
    if sys.argv[1:2] == ["--child-import"]:
        child_import(sys.argv[2], sys.argv[3], labels="--no-labels" not in sys.argv[4:])
    else:
        main()
