"""Planner statistics right after bulk writes (larry_web.planner), on PostgreSQL."""

import io

import pytest
from django.db import connection

from annotations.importers import import_items
from larry_web.planner import MIN_ROWS, analyze_after_bulk_write


def _estimated_rows(table: str) -> float:
    with connection.cursor() as cursor:
        cursor.execute("SELECT reltuples FROM pg_class WHERE relname = %s", [table])
        return cursor.fetchone()[0]


def _jsonl(n: int, prefix: str) -> io.BytesIO:
    return io.BytesIO(
        b"".join(
            b'{"id": "%s%d", "prompt": "p", "response": "r", "human_label": "accept"}\n' % (prefix, i) for i in range(n)
        )
    )


@pytest.fixture(autouse=True)
def postgresql_only(db):
    if connection.vendor != "postgresql":
        pytest.skip("ANALYZE is PostgreSQL's")


def test_a_big_import_leaves_the_planner_knowing_its_rows(project):
    report = import_items(project=project, stream=_jsonl(MIN_ROWS + 200, b"a"), fmt="jsonl")
    assert report.created == MIN_ROWS + 200 and report.labels == MIN_ROWS + 200
    assert _estimated_rows("annotations_item") == MIN_ROWS + 200
    assert _estimated_rows("annotations_review") == MIN_ROWS + 200


def test_a_small_import_is_left_to_autovacuum(project):
    # ANALYZE writes pg_class in place (it survives the test's rollback): compare with the estimate before.
    before = _estimated_rows("annotations_item")
    import_items(project=project, stream=_jsonl(10, b"b"), fmt="jsonl")
    assert _estimated_rows("annotations_item") == before != 10


def test_a_write_small_against_the_table_is_not_analysed_again(project):
    import_items(project=project, stream=_jsonl(MIN_ROWS * 12, b"c"), fmt="jsonl")
    assert analyze_after_bulk_write({"annotations_item": MIN_ROWS}) == []  # under 10 % of 12,000 rows
    assert analyze_after_bulk_write({"annotations_item": MIN_ROWS * 2}) == ["annotations_item"]


def test_a_big_draw_leaves_the_planner_knowing_its_slots_and_members(project, sme):
    from annotations.sampling import sample_draw

    import_items(project=project, stream=_jsonl(MIN_ROWS + 200, b"d"), fmt="jsonl", import_labels=False)
    sample_draw(project=project, size=MIN_ROWS + 100, design="uniform", seed=1, user=sme)
    # Inside the draw's transaction, ANALYZE counts the rows it wrote (its own, not yet committed).
    assert _estimated_rows("annotations_slot") == MIN_ROWS + 100
    assert _estimated_rows("annotations_samplemembership") == MIN_ROWS + 100
