"""Benchmark: the rule editor's live dry run on a project of 1,000,000 items on PostgreSQL.

Usage (from the project folder; PostgreSQL on 127.0.0.1:5432 with trust auth, as on our machines):

    .venv/bin/python bench/rule_dry_run.py [--items 1000000] [--repeat 5] [--reuse]

It shares the items list benchmark's database, ``<DATABASE_URL's name>_bench_items`` (``items_list.prepare``:
``--items`` items, a judge run in the gating policy, SME reviews on 2 % of items and imported labels on 1 %,
..., then ``VACUUM ANALYZE``); ``--reuse`` times the database the last run of either built. Then, as the
project's lead (not staff), it posts the rule editor's form to the dry-run endpoint (``judging:rule_dry_run``,
in process through Django's test client: the view, its queries and the JSON, not HTTP) for each rule of
``RULES`` ``--repeat`` times after one warm-up, timing each request. The dry run reads at most
``DRY_RUN_MAX_ITEMS`` items in ``DRY_RUN_SECONDS`` (judging/selectors.py); the figures say how many it read.
The last line of output is one JSON object: ``items``, ``dry_run_p95_ms`` (over every request) and, per rule,
``p50_ms``, ``p95_ms``, ``scanned``, ``would_reject`` and ``sme_n``.
"""

import argparse
import json
import os
import statistics
import time

import items_list  # sets DATABASE_URL to the items list benchmark's database, which this one shares
from common import percentile

# The editor's inputs per rule (``<kind>-<param>``), as the page posts them.
RULES = {
    "keywords": {"kind": "keywords", "keywords-keywords": "competitor\ndiscount"},
    "regex": {"kind": "regex", "regex-pattern": r"refund\w* .*(error|timeout)"},
    "pii": {"kind": "pii", "pii-types": ["email", "phone", "card"]},
    "length_words": {"kind": "length", "length-min": "12", "length-max": "", "length-unit": "words"},
    "must_contain": {"kind": "must_contain", "must_contain-phrases": "support\nticket", "must_contain-mode": "all"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--reuse", action="store_true", help="time the database the last run built, if any")
    args = parser.parse_args()
    ids, _ = items_list.prepare(args.items, args.reuse)

    from django.contrib.auth import get_user_model
    from django.test import Client
    from django.urls import reverse

    from judging.selectors import DRY_RUN_MAX_ITEMS, DRY_RUN_SECONDS

    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(get_user_model().objects.get(username=items_list.LEAD))
    url = reverse("judging:rule_dry_run", args=(ids["project"].slug,))
    figures, every = {}, []
    for name, inputs in RULES.items():
        form = {"name": "", "reason": "", "field": "response", "task_types": "", **inputs}
        timings, data = [], None
        for attempt in range(args.repeat + 1):
            t = time.perf_counter()
            answer = client.post(url, form)
            ms = (time.perf_counter() - t) * 1000
            if answer.status_code != 200:
                raise SystemExit(f"{name}: HTTP {answer.status_code} {answer.content[:300]!r}")
            data = json.loads(answer.content)
            if attempt:
                timings.append(ms)
        every += timings
        figures[name] = {
            "p50_ms": round(statistics.median(timings), 1),
            "p95_ms": round(percentile(timings, 95), 1),
            "scanned": data["scanned"],
            "would_reject": data["would_reject"],
            "sme_n": data["sme"]["n"],
        }
        print(name, figures[name], flush=True)
    print(
        json.dumps(
            {
                "items": args.items,
                "max_items": DRY_RUN_MAX_ITEMS,
                "seconds": DRY_RUN_SECONDS,
                "repeat": args.repeat,
                "dry_run_p95_ms": round(percentile(every, 95), 1),
                "rules": figures,
                "load_avg_1m": os.getloadavg()[0],
            }
        )
    )


if __name__ == "__main__":
    main()
