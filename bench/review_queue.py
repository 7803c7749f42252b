"""Benchmark: the SME queue's next-item latency with 200,000 items and 20 concurrent reviewers, on PostgreSQL.

Usage (from the project folder; PostgreSQL on 127.0.0.1:5432 with trust auth, as on our machines):

    .venv/bin/python bench/review_queue.py [--items 200000] [--reviewers 20] [--seconds 30] [--think-ms 1000]

It (re)creates the database ``<DATABASE_URL's name>_bench_queue`` (see common.py), migrates it, imports
``--items`` items into one project and queues them all (one review wanted per
item). Then ``--reviewers`` threads, each with its own database connection,
act as SMEs for ``--seconds``: ask for the next item, wait about
``--think-ms`` (uniformly 0.5x to 1.5x, so SMEs do not act in lock-step; an
SME reads, and real ones take several seconds), accept it, and get the next
one.
Latencies are the time of the service calls the views make
(``queue.next_item``, ``review_submit`` + ``queue.next_item``), measured in
the client threads, so they include Python, the ORM and PostgreSQL but not
HTTP. As in a web process without a broker (``larry_web.wsgi``), the re-gating each decision asks for runs
after the call returns, on the process's background thread (``larry_web.background``); with a broker it
would be a publish to Redis. At the end every item handed out is checked: ``double_assignments``
counts items handed to more than one SME or reviewed more than once.
The last line of output is one JSON object with the figures.
"""

import argparse
import json
import os
import random
import threading
import time

from common import database_name, database_url, percentile, recreate_database

DB_NAME = database_name("queue")
os.environ["DATABASE_URL"] = database_url(DB_NAME)
os.environ.pop("CELERY_BROKER_URL", None)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "larry_web.settings")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--reviewers", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--think-ms", type=float, default=1000)
    args = parser.parse_args()

    recreate_database(DB_NAME)
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection

    from annotations import queue
    from annotations.models import Item, Project, Review
    from annotations.services import review_submit
    from larry_web import background

    call_command("migrate", verbosity=0)
    started = time.perf_counter()
    project = Project.objects.create(slug="bench", name="Queue benchmark")
    Item.objects.bulk_create(
        (
            Item(project=project, external_id=f"item-{i}", prompt=f"Question {i}?", response=f"Answer {i}.")
            for i in range(args.items)
        ),
        batch_size=5000,
    )
    queue.queue_add(project=project, item_ids=list(project.items.values_list("id", flat=True)))
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    print(f"{args.items} items queued in {time.perf_counter() - started:.1f} s", flush=True)

    background.enable()  # what larry_web.wsgi does: re-gating after the response, as in the app
    users = [get_user_model().objects.create_user(f"sme{i}") for i in range(args.reviewers)]
    next_ms: list[float] = []
    submit_next_ms: list[float] = []
    handed: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(args.reviewers)
    deadline_holder = {}

    def reviewer(user) -> None:
        mine_next, mine_submit, mine_handed = [], [], []
        think = random.Random(user.pk)
        try:
            connection.ensure_connection()  # connecting is set-up, not queue latency
            barrier.wait()
            deadline = deadline_holder.setdefault("t", time.perf_counter() + args.seconds)
            time.sleep(think.uniform(0, 1) * args.think_ms / 1000)  # SMEs do not all open the page at once
            t0 = time.perf_counter()
            item = queue.next_item(project=project, reviewer=user)
            mine_next.append((time.perf_counter() - t0) * 1000)
            while item is not None and time.perf_counter() < deadline:
                mine_handed.append(item.pk)
                time.sleep(think.uniform(0.5, 1.5) * args.think_ms / 1000)
                t0 = time.perf_counter()
                review_submit(item=item, reviewer=user, decision="accept")
                t1 = time.perf_counter()
                item = queue.next_item(project=project, reviewer=user)
                t2 = time.perf_counter()
                mine_next.append((t2 - t1) * 1000)
                mine_submit.append((t2 - t0) * 1000)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()
            with lock:
                next_ms.extend(mine_next)
                submit_next_ms.extend(mine_submit)
                handed.extend(mine_handed)

    threads = [threading.Thread(target=reviewer, args=(u,)) for u in users]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    background.wait_idle(timeout=600)

    reviewed_twice = Review.objects.values("item_id").annotate(n=django.db.models.Count("id")).filter(n__gt=1).count()
    double = (len(handed) - len(set(handed))) + reviewed_twice
    result = {
        "benchmark": "review_queue",
        "items": args.items,
        "reviewers": args.reviewers,
        "seconds": args.seconds,
        "think_ms": args.think_ms,
        "decisions": len(submit_next_ms),
        "decisions_per_s": round(len(submit_next_ms) / args.seconds, 1),
        "next_item_p50_ms": round(percentile(next_ms, 50), 2),
        "next_item_p95_ms": round(percentile(next_ms, 95), 2),
        "submit_and_next_p50_ms": round(percentile(submit_next_ms, 50), 2),
        "submit_and_next_p95_ms": round(percentile(submit_next_ms, 95), 2),
        "double_assignments": double,
    }
    print(
        f"{result['decisions']} decisions by {args.reviewers} SMEs in {args.seconds:.0f} s; next item p50 "
        f"{result['next_item_p50_ms']} ms, p95 {result['next_item_p95_ms']} ms; submit + next p95 "
        f"{result['submit_and_next_p95_ms']} ms; double assignments {double}"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
