"""Benchmark: calibrating a 100,000-verdict judge run against SME labels, and the run page that shows it.

Usage (from the project folder; PostgreSQL on 127.0.0.1:5432 with trust auth, as on our machines):

    .venv/bin/python bench/calibration.py [--items 100000] [--labels 1500]

It (re)creates the database ``<DATABASE_URL's name>_bench_calibration`` (see common.py), migrates it, and
stores one finished run over ``--items`` items, each verdict with a raw
P(accept), of which ``--labels`` carry SME ground truth (imported reviews).
Then it times ``judge_run_calibrate`` (isotonic at 1,000 labels or more,
Platt below; fit, cross-fit and the UPDATE of every verdict), the run page's
confidence report (``selectors.run_confidence_report``) and the whole run
page as a lead gets it (Django's test client: the view, every query and the
template, not HTTP). Each is the median of three. The last line of output is
one JSON object with the figures.
"""

import argparse
import json
import os
import statistics
import time

from common import database_name, database_url, recreate_database

DB_NAME = database_name("calibration")
os.environ["DATABASE_URL"] = database_url(DB_NAME)
os.environ.pop("CELERY_BROKER_URL", None)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "larry_web.settings")


def timed(call, repeat: int = 3) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--labels", type=int, default=1500)
    args = parser.parse_args()

    recreate_database(DB_NAME)
    import django

    django.setup()
    import numpy as np
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client

    from annotations.models import Item, Project, Review
    from judging.models import JudgeRun, Verdict
    from judging.selectors import run_confidence_report
    from judging.services import judge_run_calibrate

    call_command("migrate", verbosity=0)
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
    rng = np.random.default_rng(0)
    p = rng.random(args.items)
    y = rng.random(args.items) < 0.2 + 0.6 * p  # an overconfident judge
    project = Project.objects.create(slug="bench", name="Calibration benchmark")
    items = Item.objects.bulk_create(
        (Item(project=project, external_id=f"item-{i}", prompt="q", response=f"a{i}") for i in range(args.items)),
        batch_size=5000,
    )
    Review.objects.bulk_create(
        (Review(item=items[i], decision="accept" if y[i] else "reject", origin="import") for i in range(args.labels)),
        batch_size=5000,
    )
    run = JudgeRun.objects.create(
        project=project, backend="local", model="m", status="finished", items_total=args.items
    )
    Verdict.objects.bulk_create(
        (
            Verdict(run=run, item=item, verdict="accept" if p[i] >= 0.5 else "reject", confidence=float(p[i]))
            for i, item in enumerate(items)
        ),
        batch_size=5000,
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    calibrate_s, summary = timed(lambda: judge_run_calibrate(run=run))
    run.refresh_from_db()
    report_s, report = timed(lambda: run_confidence_report(run))
    lead = get_user_model().objects.create_user("bench-lead", is_staff=True)
    client = Client()
    client.force_login(lead)
    url = run.get_absolute_url()
    page_s, response = timed(lambda: client.get(url))
    assert response.status_code == 200 and b"Reliability diagram" in response.content
    figures = {
        "items": args.items,
        "labels": args.labels,
        "method": summary["method"],
        "calibrate_s": round(calibrate_s, 3),
        "report_s": round(report_s, 3),
        "run_page_s": round(page_s, 3),
        "ece_raw": round(report["raw"]["ece"], 4),
        "ece_calibrated": round(report["calibrated"]["ece"], 4),
        "auroc_raw": round(report["raw"]["auroc"]["auc"], 4),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
