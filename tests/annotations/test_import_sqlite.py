"""The import's store paths beyond what test_import.py covers: the prepared rows of SQLite (``_store_sqlite``), its
ids, and the import tests run once more on the embedded SQLite default (the suite runs on PostgreSQL)."""

import os
import subprocess
import sys
from pathlib import Path

from django.db import connection

from annotations import importers
from annotations.importers import BATCH_SIZE, import_items
from annotations.models import Item, Review
from tests.annotations.test_import import GOOD, jsonl

ROOT = Path(__file__).resolve().parents[2]


def test_the_sqlite_store_writes_every_column_of_the_tables():
    item_columns = ("id", *importers._SQLITE_ITEM_DEFAULTS, *importers._SQLITE_ITEM_VALUES)
    assert sorted(item_columns) == sorted(f.column for f in Item._meta.concrete_fields)
    review_columns = sorted(f.column for f in Review._meta.concrete_fields if f.column != "id")  # numbered by SQLite
    assert sorted(importers._SQLITE_REVIEW_COLUMNS) == review_columns


def test_new_ids_follow_the_highest_ever_given_and_labels_name_their_own_items(project):
    """Items deleted at the end leave their ids unused (as the ORM's AUTOINCREMENT does on SQLite); an item
    saved through the ORM after an import gets the next id; every label is stored on its own item."""
    import_items(project=project, stream=jsonl(*({**GOOD, "id": f"a{i}"} for i in range(3))), fmt="jsonl")
    last = Item.objects.order_by("-id").values_list("id", flat=True).first()
    Item.objects.filter(pk=last).delete()
    records = [{**GOOD, "id": f"b{i}", "human_label": ("accept", "reject", "")[i % 3]} for i in range(5)]
    report = import_items(project=project, stream=jsonl(*records), fmt="jsonl")
    assert (report.created, report.labels) == (5, 4)
    new = list(Item.objects.filter(external_id__startswith="b").order_by("id").values_list("id", "external_id"))
    assert [ext for _, ext in new] == [f"b{i}" for i in range(5)] and new[0][0] > last
    saved = Item.objects.create(project=project, external_id="orm", prompt="p", response="r")
    assert saved.pk > new[-1][0]
    labels = dict(Review.objects.filter(item__project=project).values_list("item__external_id", "decision"))
    assert labels == {"a0": "accept", "a1": "accept"} | {
        f"b{i}": ("accept", "reject")[i % 3] for i in range(5) if i % 3 != 2
    }


def test_batches_with_stored_ids_among_new_ones_store_only_the_new_with_their_labels(project):
    n = 2 * BATCH_SIZE + 7
    records = [{**GOOD, "id": f"k{i}", "prompt": f"p{i}", "human_label": ("accept", "reject")[i % 2]} for i in range(n)]
    first = import_items(project=project, stream=jsonl(*records[::3]), fmt="jsonl")
    assert (first.created, first.existing) == (len(records[::3]), 0)
    rows = []
    second = import_items(project=project, stream=jsonl(*records, records[5]), fmt="jsonl", progress=rows.append)
    assert (second.created, second.existing, second.labels) == (
        n - len(records[::3]),
        len(records[::3]),
        second.created,
    )
    assert [(e.line, e.reason) for e in second.errors] == [(n + 1, "duplicate external_id 'k5' (first on line 6)")]
    assert len(rows) == 3 and rows[-1] == n + 1  # after each batch (errors count as they are read, ahead)
    stored = dict(Item.objects.filter(project=project).values_list("external_id", "prompt"))
    assert stored == {f"k{i}": f"p{i}" for i in range(n)}
    labels = dict(Review.objects.filter(item__project=project).values_list("item__external_id", "decision"))
    assert labels == {f"k{i}": ("accept", "reject")[i % 2] for i in range(n)}
    assert list(Item.objects.filter(project=project).order_by("id").values_list("external_id", flat=True)) == [
        r["id"] for r in records[::3]
    ] + [r["id"] for i, r in enumerate(records) if i % 3]


def test_the_import_tests_pass_on_the_embedded_sqlite_default(tmp_path):
    """The suite runs on PostgreSQL; the README's default is SQLite, whose store path is its own: the import
    tests (this file's included) again, in a pytest of their own on a SQLite database."""
    if connection.vendor == "sqlite":
        return  # this is that run
    # PostgreSQL-only tests skip there, also in CI (where LARRY_REQUIRE_SERVICES=1 would fail them instead).
    env = {k: v for k, v in os.environ.items() if k != "LARRY_REQUIRE_SERVICES"}
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'larry.sqlite3'}"
    files = ["tests/annotations/test_import.py", __file__]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *files],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "needs postgres, which is missing here" in done.stdout  # on SQLite
