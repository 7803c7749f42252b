"""Benchmark: the items list's filtered queries at 1,000,000 items on PostgreSQL, over HTTP as a logged-in lead.

Usage (from the project folder; PostgreSQL on 127.0.0.1:5432 with trust auth, as on our machines):

    .venv/bin/python bench/items_list.py [--items 1000000] [--repeat 5] [--port 8765] [--reuse]

It (re)creates the database ``<DATABASE_URL's name>_bench_items`` (see common.py), migrates it and builds, with
``generate_series`` SQL in a few statements: ``--items`` items in one project (5 task types, 4 source models,
prompts and responses drawn from a 62-word vocabulary, so full-text searches hit anywhere from 0.1 % to 10 % of
items), a finished judge run with a verdict and a calibrated P(accept) on 95 % of them (the gating policy's only
tier, threshold 0.8), gate decisions (3 % SME, 36 % a tier, 57 % pending; 4 % vetoed), 3 rules with their hits (0.5
%, 2 %, 4 %), SME reviews by 5 SMEs on 2 % of items and imported labels on 1 %, an open SME queue slot on 5 %, and
two import jobs covering the two halves; then ``VACUUM ANALYZE`` (what autovacuum does to a freshly loaded table).
Then it serves the app with gunicorn (2 workers, as ``make serve``), logs in through the real log-in form as the
project's lead (not staff), and asks for the items list with each filter of ``queries()`` ``--repeat`` times (after
one warm-up each), timing the whole HTTP request. ``filtered_p95_ms`` is the 95th percentile of every filtered
request; ``server_query_p95_ms`` that of the part the view spends filtering, paging and counting (its
``Server-Timing`` header: the queries and the ORM, not the page's rendering or HTTP). The last line of output is one
JSON object with the figures.
"""

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

from common import ROOT, database_name, database_url, percentile, recreate_database

DB_NAME = database_name("items")
os.environ["DATABASE_URL"] = database_url(DB_NAME)
os.environ.pop("CELERY_BROKER_URL", None)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "larry_web.settings")

WORDS = (
    "account billing refund invoice password reset login error timeout upgrade plan price monthly annual "
    "storage backup restore version history share folder file sync mobile desktop browser extension team "
    "admin member invite permission role export import report chart api token limit quota support ticket "
    "email phone chat hours weekend holiday europe america asia paris madrid berlin tokyo competitor "
    "discount coupon trial cancel delete"
).split()
TASK_TYPES = ["billing", "howto", "troubleshooting", "account", "chat"]
SOURCE_MODELS = ["copilot-8b", "copilot-70b", "gpt-small", "legacy"]
LEAD, PASSWORD = "lead", "bench-lead-pass-123"
BASE = datetime(2026, 12, 1, tzinfo=UTC)


def build(n: int) -> dict:
    """Create the project and its million rows; returns the ids the queries need."""
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.utils import timezone

    from annotations.models import ImportJob, Membership, Project
    from judging.models import GatingPolicy, JudgeRun, LabelFunction, PolicyTier

    users = get_user_model().objects
    project = Project.objects.create(slug="bench", name="Items list benchmark")
    lead = users.create_user(LEAD, password=PASSWORD)
    Membership.objects.create(project=project, user=lead, role=Membership.Role.LEAD)
    smes = [users.create_user(f"sme{i}") for i in range(5)]
    for sme in smes:
        Membership.objects.create(project=project, user=sme)
    run = JudgeRun.objects.create(
        project=project, backend="openai", model="judge-405b", status="finished", finished_at=timezone.now()
    )
    policy = GatingPolicy.objects.create(project=project)
    PolicyTier.objects.create(policy=policy, tier=1, run=run, threshold=0.8)
    rules = [
        LabelFunction.objects.create(
            project=project, name=name, kind="keywords", params={"keywords": [name]}, reason=name
        )
        for name in ("competitor", "curt", "pii")
    ]
    words = "ARRAY[" + ",".join(f"'{w}'" for w in WORDS) + "]"
    w = len(WORDS)
    # Pseudo-random but reproducible: h(i, k) is a multiplicative hash of the row number.
    h = "((i::bigint * {k} + 12345) %% 1000003)"
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("DROP INDEX IF EXISTS item_fulltext")
        cursor.execute(
            f"""
            INSERT INTO annotations_item (project_id, external_id, prompt, context, response, reference,
                source_model, task_type, metadata, priority, created_at)
            SELECT %s, 'item-' || i,
                'How do I ' || ({words})[1 + {h.format(k=7919)} %% {w}] || ' my ' || ({words})[1 + {h.format(k=104729)} %% {w}] || '?',
                '',
                'To ' || ({words})[1 + {h.format(k=1299709)} %% {w}] || ' the ' || ({words})[1 + {h.format(k=15485863)} %% {w}]
                    || ', open ' || ({words})[1 + {h.format(k=32452843)} %% {w}] || ' then ' || ({words})[1 + {h.format(k=49979687)} %% {w}]
                    || '. Answer number ' || i || '.',
                '',
                (%s::text[])[1 + i %% 4], (%s::text[])[1 + (i / 7) %% 5], '{{}}'::jsonb, 0,
                %s::timestamptz + i * interval '1 millisecond'
            FROM generate_series(1, %s) AS i
            """,  # noqa: E501
            [project.pk, SOURCE_MODELS, TASK_TYPES, BASE.isoformat(), n],
        )
        print(f"{n} items in {time.perf_counter() - started:.0f} s", flush=True)
        cursor.execute(
            """
            INSERT INTO judging_verdict (run_id, item_id, verdict, rationale, reasoning, confidence,
                confidence_calibrated, tokens_in, tokens_out, latency_ms, error, error_class, raw_reply, attempts,
                answered_by, created_at)
            SELECT %s, id, CASE WHEN p >= 0.5 THEN 'accept' ELSE 'reject' END, 'The judge''s rationale.', '',
                p, p, 200, 20, 100, '', '', '', '[]'::jsonb, 'judge-405b', now()
            FROM (SELECT id, ((id * 2654435761) %% 1000)::float / 1000 AS p FROM annotations_item
                  WHERE project_id = %s AND id %% 20 <> 0) AS v
            """,
            [run.pk, project.pk],
        )
        cursor.execute(
            """
            INSERT INTO judging_rulehit (label_function_id, item_id, version, created_at)
            SELECT lf, id, 0, now() FROM annotations_item,
                LATERAL (VALUES (%s, 200), (%s, 50), (%s, 25)) AS r(lf, every)
            WHERE project_id = %s AND (id * 40503) %% every = 0
            """,
            [rules[0].pk, rules[1].pk, rules[2].pk, project.pk],
        )
        # Reviews: each SME on 0.4 % of items (2 % in all), imported labels on 1 %.
        for k, sme in enumerate(smes):
            cursor.execute(
                """
                INSERT INTO annotations_review (item_id, reviewer_id, decision, reason, comment, corrected_response,
                    origin, seconds_spent, created_at, updated_at)
                SELECT id, %s, CASE WHEN id %% 3 = 0 THEN 'reject' ELSE 'accept' END, '', '', '', 'ui', 12, now(), now()
                FROM annotations_item WHERE project_id = %s AND id %% 250 = %s
                """,
                [sme.pk, project.pk, 50 * k + 1],
            )
        cursor.execute(
            """
            INSERT INTO annotations_review (item_id, reviewer_id, decision, reason, comment, corrected_response,
                origin, seconds_spent, created_at, updated_at)
            SELECT id, NULL, 'accept', '', '', '', 'import', NULL, now(), now()
            FROM annotations_item WHERE project_id = %s AND id %% 100 = 7
            """,
            [project.pk],
        )
        # 5 % of the items in the SME queue: one open slot each (queued means having slots).
        cursor.execute(
            """
            INSERT INTO annotations_slot (item_id, project_id, priority, done)
            SELECT id, project_id, 0, false FROM annotations_item WHERE project_id = %s AND id %% 20 = 3
            """,
            [project.pk],
        )
        # The gate, as judging.gate.decide would have it for these rows (SME first, then the tier at 0.8, vetoes).
        cursor.execute(
            """
            INSERT INTO judging_gatedecision (item_id, outcome, basis, basis_decision, vetoed, reasons, judge_run_id,
                tier, decided_at)
            SELECT i.id,
                CASE WHEN hit THEN 'reject' WHEN sme IS NOT NULL THEN sme
                     WHEN v.verdict IS NOT NULL AND greatest(v.p, 1 - v.p) >= 0.8 THEN v.verdict ELSE 'pending' END,
                CASE WHEN sme IS NOT NULL THEN 'sme'
                     WHEN v.verdict IS NOT NULL AND greatest(v.p, 1 - v.p) >= 0.8 THEN 'tier' ELSE 'none' END,
                CASE WHEN sme IS NOT NULL THEN sme
                     WHEN v.verdict IS NOT NULL AND greatest(v.p, 1 - v.p) >= 0.8 THEN v.verdict ELSE '' END,
                hit, CASE WHEN hit THEN '["a rule"]'::jsonb ELSE '[]'::jsonb END,
                CASE WHEN sme IS NULL AND v.verdict IS NOT NULL AND greatest(v.p, 1 - v.p) >= 0.8 THEN %s END,
                CASE WHEN sme IS NULL AND v.verdict IS NOT NULL AND greatest(v.p, 1 - v.p) >= 0.8 THEN 1 END,
                now()
            FROM annotations_item i
            LEFT JOIN (SELECT item_id, verdict, confidence_calibrated AS p FROM judging_verdict WHERE run_id = %s) v
                ON v.item_id = i.id
            CROSS JOIN LATERAL (SELECT EXISTS (SELECT 1 FROM judging_rulehit h WHERE h.item_id = i.id) AS hit) r
            CROSS JOIN LATERAL (SELECT min(decision) AS sme FROM annotations_review rv WHERE rv.item_id = i.id) s
            WHERE i.project_id = %s
            """,
            [run.pk, run.pk, project.pk],
        )
        print(f"verdicts, hits, reviews, gate in {time.perf_counter() - started:.0f} s", flush=True)
    # Two imports, each the half of the items created while it ran (items are 1 ms apart from BASE).
    jobs = []
    for k, (first, last) in enumerate([(1, n // 2), (n // 2 + 1, n)]):
        jobs.append(
            ImportJob.objects.create(
                project=project, file=f"imports/half{k}.jsonl", filename=f"half{k}.jsonl", format="jsonl",
                status="done", created_by=lead, started_at=BASE + timedelta(milliseconds=first - 0.5),
                finished_at=BASE + timedelta(milliseconds=last + 0.5),
            )
        )  # fmt: skip
    return {"project": project, "run": run, "rules": rules, "smes": smes, "jobs": jobs}


def create_fulltext_index() -> float:
    """The full-text GIN index of migration judging 0016, built after the rows (faster than row by row)."""
    import importlib

    from django.db import connection

    migration = importlib.import_module("judging.migrations.0016_items_list")
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("SET maintenance_work_mem = '256MB'")
        cursor.execute(migration.FULLTEXT_INDEX)
        # What autovacuum does to a freshly loaded table soon after (PostgreSQL 13+ vacuums after inserts too):
        # statistics, and the visibility map that lets index-only scans skip the heap.
        cursor.execute("VACUUM ANALYZE")
    return time.perf_counter() - started


def existing(n: int) -> bool:
    """Whether the benchmark database holds a finished build of ``n`` items (its last step, the full-text
    index, is there)."""
    import psycopg

    try:
        with psycopg.connect(database_url(DB_NAME).replace("postgres://", "postgresql://", 1)) as conn:
            built = conn.execute("SELECT 1 FROM pg_indexes WHERE indexname = 'item_fulltext'").fetchone()
            count = conn.execute("SELECT count(*) FROM annotations_item").fetchone()[0]
    except psycopg.Error:
        return False
    return bool(built) and count == n


def ids_of_existing() -> dict:
    from django.contrib.auth import get_user_model

    from annotations.models import ImportJob, Project
    from judging.models import JudgeRun, LabelFunction

    project = Project.objects.get(slug="bench")
    return {
        "project": project,
        "run": JudgeRun.objects.get(project=project),
        "rules": list(LabelFunction.objects.filter(project=project).order_by("id")),
        "smes": list(get_user_model().objects.filter(username__startswith="sme").order_by("id")),
        "jobs": list(ImportJob.objects.filter(project=project).order_by("id")),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(port: int) -> subprocess.Popen:
    """gunicorn on 127.0.0.1:``port`` over the benchmark database, 2 workers (``make serve``'s)."""
    server = subprocess.Popen(
        [str(ROOT / ".venv/bin/gunicorn"), "larry_web.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", "2",
         "--timeout", "120"],
        cwd=ROOT, env={**os.environ}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return server
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise SystemExit("gunicorn did not start")


def log_in(base: str):
    """A requests session logged in as the lead through the real log-in form."""
    import requests

    session = requests.Session()
    form = session.get(f"{base}/login/", timeout=30).text
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form).group(1)
    answer = session.post(
        f"{base}/login/", data={"username": LEAD, "password": PASSWORD, "csrfmiddlewaretoken": token},
        headers={"Referer": f"{base}/login/"}, timeout=30,
    )  # fmt: skip
    if answer.status_code != 200 or "sessionid" not in session.cookies:
        raise SystemExit(f"log-in failed: {answer.status_code}")
    return session


def queries(ids: dict) -> dict[str, dict]:
    """The filtered queries timed: name -> query string parameters."""
    rules, smes, run = ids["rules"], ids["smes"], ids["run"]
    return {
        "outcome=accept": {"outcome": "accept"},
        "outcome=pending": {"outcome": "pending"},
        "basis=sme": {"basis": "sme"},
        "basis=rule": {"basis": "rule"},
        "verdict=reject, P 0.30-0.35": {"verdict": "reject", "confidence_min": "0.3", "confidence_max": "0.35"},
        "P(accept) lowest first": {"sort": "confidence"},
        "P 0.6-0.8, highest first": {"confidence_min": "0.6", "confidence_max": "0.8", "sort": "-confidence"},
        "rule hit (0.5 %)": {"rule": rules[0].pk},
        "rule hit (4 %) + reject": {"rule": rules[2].pk, "outcome": "reject"},
        "reviewer": {"reviewer": smes[2].pk},
        "imported labels": {"reviewer": "imported"},
        "task type + source model": {"task_type": "billing", "source_model": "legacy"},
        "task type + pending + verdict accept": {"task_type": "howto", "outcome": "pending", "verdict": "accept"},
        "run chosen, no verdict": {"run": run.pk, "verdict": "none"},
        "search one word": {"q": "refund"},
        "search two words + accept": {"q": "refund madrid", "outcome": "accept"},
        "search phrase": {"q": '"reset the"'},
        "search an item id": {"q": "item-777777"},
        "id A-Z, queued=no": {"sort": "external_id", "queued": "no"},
        "queued=yes": {"queued": "yes"},
        "second import + reject": {"import_job": ids["jobs"][1].pk, "outcome": "reject"},
    }


def prepare(n: int, reuse: bool) -> tuple[dict, bool]:
    """Set Django up on the benchmark's database; ``(build's ids, reused)``: of the database the last run built
    with ``n`` items when ``reuse`` (and there is one), else of a new one (created, migrated, built, indexed).
    Also used by bench/rule_dry_run.py, which times the rule editor on the same database."""
    reused = reuse and existing(n)
    if not reused:
        recreate_database(DB_NAME)
    import django

    django.setup()
    from django.core.management import call_command

    started = time.perf_counter()
    if reused:
        print(f"reusing {DB_NAME} ({n} items)", flush=True)
        return ids_of_existing(), True
    call_command("migrate", verbosity=0)
    ids = build(n)
    index_s = create_fulltext_index()
    print(f"built in {time.perf_counter() - started:.0f} s (full-text index {index_s:.0f} s)", flush=True)
    return ids, False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--reuse", action="store_true", help="time the database the last run built, if any")
    args = parser.parse_args()

    started = time.perf_counter()
    ids, reused = prepare(args.items, args.reuse)
    build_s = time.perf_counter() - started
    from django.db import connection

    connection.close()

    load_start = os.getloadavg()[0]
    port = args.port or free_port()
    server = serve(port)
    base = f"http://127.0.0.1:{port}"
    url = f"{base}/projects/{ids['project'].slug}/items/"
    try:
        session = log_in(base)
        timings: dict[str, list[float]] = {}
        counts: dict[str, str] = {}
        server_ms: list[float] = []  # the view's filter, page and count (its Server-Timing header)
        unfiltered = []
        for _ in range(args.repeat + 1):
            t = time.perf_counter()
            assert session.get(url, timeout=120).status_code == 200
            unfiltered.append((time.perf_counter() - t) * 1000)
        for name, params in queries(ids).items():
            for attempt in range(args.repeat + 1):
                t = time.perf_counter()
                answer = session.get(url, params=params, timeout=120)
                ms = (time.perf_counter() - t) * 1000
                if answer.status_code != 200:
                    raise SystemExit(f"{name}: HTTP {answer.status_code}")
                if attempt:  # the first is a warm-up
                    timings.setdefault(name, []).append(ms)
                    timing = re.search(r"dur=([0-9.]+)", answer.headers.get("Server-Timing", ""))
                    server_ms.append(float(timing.group(1)) if timing else float("nan"))
            found = re.search(r'<p class="count"><strong>([^<]+)</strong>', answer.text)
            counts[name] = found.group(1) if found else "?"
            print(f"{name:40} median {statistics.median(timings[name]):7.1f} ms  max {max(timings[name]):7.1f} ms"
                  f"  ({counts[name]} items)", flush=True)  # fmt: skip
        # The next page of a filtered list, through its keyset link.
        page = session.get(url, params={"outcome": "accept"}, timeout=120).text
        next_link = re.search(r'href="\?([^"]+)" rel="next"', page).group(1).replace("&amp;", "&")
        paging = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            page = session.get(f"{url}?{next_link}", timeout=120).text
            paging.append((time.perf_counter() - t) * 1000)
            next_link = re.search(r'href="\?([^"]+)" rel="next"', page).group(1).replace("&amp;", "&")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    every = [ms for values in timings.values() for ms in values]
    result = {
        "items": args.items,
        "queries": len(timings),
        "requests": len(every),
        "filtered_p50_ms": round(percentile(every, 50), 1),
        "filtered_p95_ms": round(percentile(every, 95), 1),
        "filtered_max_ms": round(max(every), 1),
        "server_query_p50_ms": round(percentile(server_ms, 50), 1),
        "server_query_p95_ms": round(percentile(server_ms, 95), 1),
        "unfiltered_median_ms": round(statistics.median(unfiltered[1:]), 1),
        "next_page_median_ms": round(statistics.median(paging), 1),
        "slowest_query": max(timings, key=lambda name: statistics.median(timings[name])),
        "per_query_median_ms": {name: round(statistics.median(v), 1) for name, v in timings.items()},
        "build_s": None if reused else round(build_s),
        "reused": bool(reused),
        # The machine is shared: its load while the requests ran says how far to trust the figures.
        "load_1min_at_start_end": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "python": sys.version.split()[0],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
