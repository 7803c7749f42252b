"""Import of JSONL and CSV: fields, prior labels, idempotence, bad lines reported and skipped."""

import io
import json

import pytest

from annotations import importers
from annotations.importers import BATCH_SIZE, ImportFormatError, detect_format, import_items
from annotations.models import Item, Review
from tests.conftest import run_concurrently
from tests.services import require


def jsonl(*records) -> io.BytesIO:
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in records]
    return io.BytesIO(("\n".join(lines) + "\n").encode())


GOOD = {
    "id": "a1",
    "prompt": "What does Plus cost?",
    "response": "$4 a month.",
    "human_label": "accept",
    "context": "Plus is $4/month.",
    "reference": "$4",
    "source_model": "llama-3.1-8b",
    "task_type": "billing",
    "label_detail": "correct",
}


def test_it_imports_every_field_and_keeps_the_rest_in_metadata(project):
    report = import_items(project=project, stream=jsonl(GOOD), fmt="jsonl")
    assert (report.created, report.errors) == (1, [])
    item = Item.objects.get(project=project, external_id="a1")
    assert (item.prompt, item.context, item.response, item.reference) == (
        "What does Plus cost?",
        "Plus is $4/month.",
        "$4 a month.",
        "$4",
    )
    assert (item.source_model, item.task_type) == ("llama-3.1-8b", "billing")
    assert item.metadata == {"label_detail": "correct"}


def test_a_prior_label_becomes_an_sme_review_without_reviewer(project):
    import_items(project=project, stream=jsonl(GOOD, {**GOOD, "id": "a2", "human_label": "REJECT"}), fmt="jsonl")
    reviews = {r.item.external_id: r for r in Review.objects.filter(item__project=project)}
    assert reviews["a1"].decision == "accept" and reviews["a2"].decision == "reject"
    assert all(r.reviewer is None and r.origin == "import" for r in reviews.values())


def test_labels_can_be_left_out(project):
    report = import_items(project=project, stream=jsonl(GOOD), fmt="jsonl", import_labels=False)
    assert report.labels == 0 and not Review.objects.exists()
    assert Item.objects.get().metadata["human_label"] == "accept"


def test_reimporting_the_same_file_changes_nothing(project):
    data = jsonl(GOOD, {**GOOD, "id": "a2"}).getvalue()
    import_items(project=project, stream=io.BytesIO(data), fmt="jsonl")
    before = list(Item.objects.values_list("id", "external_id", "response"))
    report = import_items(project=project, stream=io.BytesIO(data), fmt="jsonl")
    assert (report.created, report.existing, report.labels) == (0, 2, 0)
    assert list(Item.objects.values_list("id", "external_id", "response")) == before
    assert Review.objects.count() == 2


def test_bad_lines_are_reported_with_their_number_and_reason_and_the_rest_imports(project):
    stream = jsonl(
        GOOD,
        '{"id": "broken", "prompt": ',
        {"id": "no-response", "prompt": "Hi"},
        {"id": "bad-type", "prompt": "Hi", "response": 42},
        {"id": "bad-label", "prompt": "Hi", "response": "Hello", "human_label": "maybe"},
        '["not", "an", "object"]',
        {**GOOD, "id": "a1", "response": "a second a1"},
        {"id": "ok2", "prompt": "Hi", "response": "Hello"},
    )
    report = import_items(project=project, stream=stream, fmt="jsonl")
    reasons = {e.line: e.reason for e in report.errors}
    assert sorted(reasons) == [2, 3, 4, 5, 6, 7]
    assert "invalid JSON" in reasons[2]
    assert "response is missing" in reasons[3]
    assert "response must be a string" in reasons[4]
    assert "human_label must be accept or reject" in reasons[5]
    assert "expected a JSON object" in reasons[6]
    assert "duplicate external_id 'a1' (first on line 1)" in reasons[7]
    assert set(Item.objects.values_list("external_id", flat=True)) == {"a1", "ok2"}
    # Nothing of a bad line was stored: no item, no review.
    assert Review.objects.count() == 1


def test_a_non_utf8_line_is_reported_and_a_bom_is_accepted(project):
    good = json.dumps({"id": "x", "prompt": "p", "response": "r"}).encode()
    stream = io.BytesIO(b"\xef\xbb\xbf" + good + b"\n" + b'{"id": "y", "prompt": "\xff", "response": "r"}\n')
    report = import_items(project=project, stream=stream, fmt="jsonl")
    assert report.created == 1 and report.errors[0].line == 2 and "not UTF-8" in report.errors[0].reason


def test_an_item_without_id_gets_a_content_hash_so_reimport_is_stable(project):
    record = {"prompt": "p", "response": "r"}
    import_items(project=project, stream=jsonl(record), fmt="jsonl")
    report = import_items(project=project, stream=jsonl(record), fmt="jsonl")
    assert report.existing == 1 and len(Item.objects.get().external_id) == 24


def test_csv_with_quotes_newlines_and_bad_rows(project):
    text = (
        "\ufeffexternal_id,prompt,response,human_label,metadata\r\n"
        'c1,"Say ""hi""","Line one\nline two",accept,"{""k"": 1}"\r\n'
        "c2,too,many,cells,{},extra\r\n"
        "c3,short\r\n"
        'c4,p,r,reject,"{not json"\r\n'
        "c5,p,r,,\r\n"
    )
    report = import_items(project=project, stream=io.BytesIO(text.encode()), fmt="csv")
    reasons = {e.line: e.reason for e in report.errors}
    assert set(reasons) == {4, 5, 6}, reasons
    assert "6 cells for 5 columns" in reasons[4]
    assert "fewer cells" in reasons[5]
    assert "metadata is not valid JSON" in reasons[6]
    c1 = Item.objects.get(external_id="c1")
    assert (c1.prompt, c1.response, c1.metadata) == ('Say "hi"', "Line one\nline two", {"k": 1})
    assert Item.objects.filter(external_id="c5").exists()
    assert Review.objects.get().item == c1


def test_a_csv_that_is_not_utf8_stops_with_a_clear_error_that_says_where_and_keeps_what_came_before(project):
    rows = b"".join(b"k%d,p,r\n" % i for i in range(BATCH_SIZE + 5))
    text = b"id,prompt,response\n" + rows + b"bad,\xe9t\xe9,r\nafter,p,r\n"
    report = import_items(project=project, stream=io.BytesIO(text), fmt="csv")
    bad_line = BATCH_SIZE + 7
    assert report.fatal == f"line {bad_line} is not UTF-8 (byte 5 of the line); stopped there"
    # Every row before the fault is stored (a full batch and the partial one), nothing after it.
    assert report.created == BATCH_SIZE + 5 == Item.objects.count()
    assert not Item.objects.filter(external_id__in=["bad", "after"]).exists()


def test_the_format_comes_from_the_file_name():
    assert detect_format("Data.JSONL") == "jsonl" and detect_format("x.csv") == "csv"
    with pytest.raises(ImportFormatError, match="unknown format"):
        detect_format("x.xlsx")


def test_a_csv_without_a_required_column_is_refused_once(project):
    report = import_items(project=project, stream=io.BytesIO(b"id,prompt\n1,p\n2,q\n"), fmt="csv")
    assert report.fatal == "the CSV header has no response column" and report.errors == []
    assert not Item.objects.exists()


def test_wrong_types_are_reported_per_field(project):
    stream = jsonl(
        {"id": "t1", "prompt": ["a", "list"], "response": "r"},
        {"id": "t2", "prompt": "p", "response": "r", "metadata": "not an object"},
        {"id": ["x"], "prompt": "p", "response": "r"},
        {"id": "t4", "prompt": "p", "response": "r", "human_label": 1},
        {"id": "t5", "prompt": "p", "response": "r", "context": None, "source_model": 3.5},
        {"id": True, "prompt": "p", "response": "r"},
        {"id": 7, "prompt": "p", "response": "r"},
    )
    report = import_items(project=project, stream=stream, fmt="jsonl")
    assert [(e.line, e.reason) for e in report.errors] == [
        (1, "prompt must be a string, got list"),
        (2, "metadata must be an object, got str"),
        (3, "external_id must be a string or integer, got list"),
        (4, "human_label must be accept or reject, got '1'"),
        (5, "source_model must be a string, got float"),
        (6, "external_id must be a string or integer, got bool"),
    ]
    assert list(Item.objects.values_list("external_id", flat=True)) == ["7"]


def test_missing_required_fields_are_reported(project):
    stream = jsonl({"id": "m1", "response": "r"}, {"id": "m2", "prompt": "  ", "response": "r"}, {"id": "m3"})
    report = import_items(project=project, stream=stream, fmt="jsonl")
    assert [(e.line, e.reason) for e in report.errors] == [
        (1, "prompt is missing or empty"),
        (2, "prompt is missing or empty"),
        (3, "prompt is missing or empty"),
    ]
    csv_report = import_items(project=project, stream=io.BytesIO(b"id,prompt,response\nm4,p,\n"), fmt="csv")
    assert [(e.line, e.reason) for e in csv_report.errors] == [(2, "response is missing or empty")]
    assert not Item.objects.exists()


def test_text_the_database_cannot_store_is_a_row_error_not_a_crash(project):
    stream = jsonl(
        '{"id": "n1", "prompt": "p\\u0000", "response": "r"}',
        '{"id": "n2", "prompt": "p", "response": "r", "metadata": {"k": "v\\u0000"}}',
        '{"id": "n3", "prompt": "p", "response": "r", "score": NaN}',
        '{"id": "n4", "prompt": "\\ud800", "response": "r"}',
        '{"id": "n5", "prompt": "p", "response": "r", "big": 123456789012345678901234567890}',
    )
    report = import_items(project=project, stream=stream, fmt="jsonl")
    reasons = {e.line: e.reason for e in report.errors}
    assert reasons[1] == "prompt contains a NUL character, which the database cannot store"
    assert reasons[2] == "metadata contains a NUL character, which the database cannot store"
    assert reasons[3] == "invalid JSON: NaN is not valid JSON"
    assert "lone surrogate" in reasons[4]
    assert sorted(reasons) == [1, 2, 3, 4]
    assert Item.objects.get().metadata == {"big": 123456789012345678901234567890}


def test_a_bom_is_accepted_in_csv(project):
    text = "\ufeffid,prompt,response\nb1,p,r\n".encode()
    report = import_items(project=project, stream=io.BytesIO(text), fmt="csv")
    assert (report.created, report.errors, report.fatal) == (1, [], "")
    assert Item.objects.get().external_id == "b1"


def test_csv_rows_after_multi_line_cells_and_blank_lines_have_their_own_line_numbers(project):
    text = (
        "id,prompt,response\n"
        'q1,"one\ntwo\nthree","a ""quoted"", comma-ful\nanswer"\n'  # lines 2-5
        "\n"  # line 6, blank
        "q2,p\n"  # line 7: too few cells
        'q3,"x\r\ny",r\n'  # lines 8-9
        "q4,p,\n"  # line 10: empty response
    )
    report = import_items(project=project, stream=io.BytesIO(text.encode()), fmt="csv")
    assert [(e.line, e.reason) for e in report.errors] == [
        (7, "fewer cells than the 3 columns"),
        (10, "response is missing or empty"),
    ]
    q1 = Item.objects.get(external_id="q1")
    assert (q1.prompt, q1.response) == ("one\ntwo\nthree", 'a "quoted", comma-ful\nanswer')
    assert Item.objects.get(external_id="q3").prompt == "x\r\ny"


def test_a_big_field_under_the_limit_imports_and_one_over_it_is_a_row_error(project, settings):
    settings.LARRY_IMPORT_MAX_FIELD_BYTES = 300_000
    big = "é" * 100_000  # 200,000 bytes: over the csv module's default 131,072-character cell limit
    over = "x" * 300_001
    stream = jsonl({"id": "j1", "prompt": "p", "response": big}, {"id": "j2", "prompt": "p", "response": over})
    report = import_items(project=project, stream=stream, fmt="jsonl")
    assert [(e.line, e.reason) for e in report.errors] == [
        (2, "response is 300,001 bytes, over the limit of 300,000 (LARRY_IMPORT_MAX_FIELD_BYTES)")
    ]
    text = f"id,prompt,response\nc1,p,{big}\nc2,{over},r\nc3,p,r\n"
    report = import_items(project=project, stream=io.BytesIO(text.encode()), fmt="csv")
    assert [(e.line, e.reason) for e in report.errors] == [
        (3, "prompt is 300,001 bytes, over the limit of 300,000 (LARRY_IMPORT_MAX_FIELD_BYTES)")
    ]
    assert report.fatal == ""
    assert Item.objects.get(external_id="j1").response == big == Item.objects.get(external_id="c1").response
    assert set(Item.objects.values_list("external_id", flat=True)) == {"j1", "c1", "c3"}


def test_metadata_over_the_limit_is_a_row_error(project, settings):
    settings.LARRY_IMPORT_MAX_FIELD_BYTES = 2048
    stream = jsonl({"id": "m1", "prompt": "p", "response": "r", "notes": "n" * 3000})
    report = import_items(project=project, stream=stream, fmt="jsonl")
    assert report.errors[0].reason.startswith("metadata (with the extra fields) is 3,")
    assert not Item.objects.exists()


class ReadSizes(io.BytesIO):
    """A byte stream that remembers the largest block any single read returned."""

    largest = 0

    def readline(self, size=-1):
        line = super().readline(size)
        self.largest = max(self.largest, len(line))
        return line


def test_a_50_mb_jsonl_line_is_reported_without_being_read_whole(project):
    cap = importers.ROW_FIELDS * 1_048_576
    huge = '{"id": "huge", "prompt": "p", "response": "' + "x" * 50_000_000 + '"}'
    stream = ReadSizes(
        jsonl(
            {"id": "before", "prompt": "p", "response": "r"}, huge, {"id": "after", "prompt": "p", "response": "r"}
        ).getvalue()
    )
    report = import_items(project=project, stream=stream, fmt="jsonl")
    assert [(e.line, e.reason) for e in report.errors] == [
        (2, f"the line is {len(huge) + 1:,} bytes, over the limit of {cap:,} for one line; not read")
    ]
    assert stream.largest <= cap + 1
    assert set(Item.objects.values_list("external_id", flat=True)) == {"before", "after"}


def test_a_csv_cell_over_the_line_limit_stops_the_import_clearly_keeping_what_came_before(project, settings):
    settings.LARRY_IMPORT_MAX_FIELD_BYTES = 1024
    cap = importers.ROW_FIELDS * 1024
    text = f'id,prompt,response\nk1,p,r\nk2,"{"a" * 5000}\n{"b" * 5000}",r\nk3,p,r\n'
    report = import_items(project=project, stream=ReadSizes(text.encode()), fmt="csv")
    assert report.fatal == f"CSV error at line 4: field larger than field limit ({cap}); stopped there"
    assert list(Item.objects.values_list("external_id", flat=True)) == ["k1"]
    long_line = f"id,prompt,response\nk1,p,r\nk2,p,{'x' * (cap + 10)}\nk3,p,r\n"
    stream = ReadSizes(long_line.encode())
    report = import_items(project=project, stream=stream, fmt="csv")
    assert report.fatal == f"line 3 is {cap + 16:,} bytes, over the limit of {cap:,} for one line; stopped there"
    assert stream.largest <= cap + 1


def test_an_import_stores_every_column_as_the_orm_would(project):
    """Both store paths (COPY on PostgreSQL, prepared rows on SQLite) skip the model objects: each column they
    write, defaults included, must be what saving the same item and label through the ORM writes."""
    from django.db import connection

    from annotations.models import Project

    records = [
        GOOD,
        {**GOOD, "id": "a2", "human_label": "", "context": ""},
        {**GOOD, "id": 3, "human_label": " Reject ", "metadata": {"k": [1, 2.5, None], "u": "é 中文 😀"}, "x": 1},
    ]
    report = import_items(project=project, stream=jsonl(*records), fmt="jsonl")
    assert (report.created, report.labels) == (3, 2)
    other = Project.objects.create(slug="other", name="Other")
    for item in Item.objects.filter(project=project).order_by("id"):
        copy = Item.objects.create(
            project=other,
            **{name: getattr(item, name) for name in ("external_id", *importers.TEXT_FIELDS, "metadata")},
        )
        for review in Review.objects.filter(item=item):
            Review.objects.create(item=copy, decision=review.decision, origin=Review.Origin.IMPORT)

    def stored(p) -> tuple[list, list]:
        skip = {"id", "project_id", "item_id", "created_at", "updated_at"}
        with connection.cursor() as cursor:
            rows = []
            for table, where in (
                (Item._meta.db_table, "project_id = %s"),
                (Review._meta.db_table, f"item_id IN (SELECT id FROM {Item._meta.db_table} WHERE project_id = %s)"),
            ):
                cursor.execute(f"SELECT * FROM {table} WHERE {where} ORDER BY id", [p.pk])
                names = [column[0] for column in cursor.description]
                rows.append([[(n, v) for n, v in zip(names, row, strict=True) if n not in skip] for row in cursor])
        return rows[0], rows[1]

    items, reviews = stored(project)
    assert (items, reviews) == stored(other)
    assert [dict(row)["decision"] for row in reviews] == ["accept", "reject"]
    assert len(items) == 3 and dict(items[0])["external_id"] == "a1"


def test_ids_stored_by_another_import_meanwhile_count_as_existing(project, monkeypatch):
    """The COPY path asks which ids exist, then COPYs; should another import store one in between, the
    unique constraint stops the COPY and the batch goes through the ON CONFLICT path instead."""
    import_items(project=project, stream=jsonl(GOOD), fmt="jsonl")
    monkeypatch.setattr(importers, "_existing_ids", lambda cursor, project, batch: set())  # it looked too early
    report = import_items(project=project, stream=jsonl(GOOD, {**GOOD, "id": "a2"}), fmt="jsonl")
    assert (report.created, report.existing, report.labels) == (1, 1, 1)
    assert sorted(Item.objects.values_list("external_id", flat=True)) == ["a1", "a2"]
    assert Review.objects.count() == 2


def test_text_with_copy_special_characters_is_stored_exactly(project):
    tricky = 'tab\there, new\nline, cr\r\nlf, back\\slash, \\N, \\t literally, "quotes", é 中文 😀'
    record = {"id": "x\\t1", "prompt": tricky, "response": tricky, "context": "\\", "metadata": {"k": tricky}}
    report = import_items(
        project=project, stream=jsonl(record, {**record, "id": "x2", "human_label": "reject"}), fmt="jsonl"
    )
    assert (report.created, report.labels, report.errors) == (2, 1, [])
    item = Item.objects.get(external_id="x\\t1")
    assert (item.prompt, item.response, item.context, item.metadata) == (tricky, tricky, "\\", {"k": tricky})
    assert Review.objects.get().item.external_id == "x2"


@pytest.mark.django_db(transaction=True)
def test_outside_a_transaction_batches_are_stored_in_parallel_keeping_the_file_order(project, monkeypatch):
    import threading

    monkeypatch.setattr(importers, "BATCH_SIZE", 3)
    import_items(project=project, stream=jsonl({**GOOD, "id": "p4"}), fmt="jsonl")  # already there: existing
    records = [{**GOOD, "id": f"p{i}", "human_label": "accept" if i % 2 else ""} for i in range(20)]
    records.insert(7, '{"broken"')
    seen = []
    report = import_items(project=project, stream=jsonl(*records), fmt="jsonl", progress=seen.append)
    assert (report.created, report.existing, report.labels) == (19, 1, 10)
    assert [(e.line, e.reason[:12]) for e in report.errors] == [(8, "invalid JSON")]
    assert seen == sorted(seen) and seen[-1] == 21
    stored = list(Item.objects.filter(project=project).order_by("id").values_list("external_id", flat=True))
    assert stored == ["p4"] + [f"p{i}" for i in range(20) if i != 4]  # ids follow the file
    labelled = set(Review.objects.values_list("item__external_id", flat=True))
    assert labelled == {"p4"} | {f"p{i}" for i in range(20) if i % 2}  # p4's label is from the first import
    assert not [t for t in threading.enumerate() if t.name.startswith("larry-import")]


@pytest.mark.postgres  # the parallel writers are PostgreSQL's
@pytest.mark.django_db(transaction=True)
def test_a_database_error_in_a_parallel_writer_is_raised_and_stops_the_import(project, monkeypatch):
    require("postgres")
    monkeypatch.setattr(importers, "BATCH_SIZE", 2)
    calls = []

    def failing(project, batch, pks=None):
        calls.append(batch)
        raise RuntimeError("the database went away")

    monkeypatch.setattr(importers, "_store_copy", failing)
    with pytest.raises(RuntimeError, match="went away"):
        import_items(project=project, stream=jsonl(*[{**GOOD, "id": f"e{i}"} for i in range(40)]), fmt="jsonl")
    assert len(calls) < 20  # the hand-out stopped early


@pytest.mark.parametrize(
    "body",
    [
        # A quote never closed: the rows after it must not vanish into one cell.
        b'external_id,prompt,response\r\nq0,p0,r0\r\nq1,"oops,r\r\nq2,p2,r2\r\nq3,p3,r3\r\n',
        # A quote closed mid-way: the rows in between must not be glued into a stored item.
        b'external_id,prompt,response\r\nq0,p0,r0\r\nq5,"oops,r\r\nq6,p6,r6\r\nq7,"p7",r7\r\nq8,p8,r8\r\n',
    ],
)
def test_a_stray_csv_quote_stops_the_import_with_a_clear_error_keeping_the_rows_before(project, body):
    report = import_items(project=project, stream=io.BytesIO(body), fmt="csv")
    assert report.fatal.startswith("CSV error at line") and "stopped there" in report.fatal
    assert list(Item.objects.values_list("external_id", flat=True)) == ["q0"]


def test_a_csv_header_that_repeats_a_column_is_refused(project):
    body = b"external_id,prompt,response,prompt\r\nq1,p,r,p2\r\n"
    report = import_items(project=project, stream=io.BytesIO(body), fmt="csv")
    assert report.fatal == "the CSV header repeats the column 'prompt'" and not Item.objects.exists()


@pytest.mark.parametrize("line", ["166", "1.5", '"text"', "true", "null", "[1.5]"])
def test_a_line_that_is_json_but_not_an_object_is_reported(project, line):
    # Found by schemathesis: a PDF uploaded as JSONL has a line "166", which used to crash the import.
    report = import_items(project=project, stream=io.BytesIO(line.encode() + b"\n"), fmt="jsonl")
    assert [error.line for error in report.errors] == [1] and not report.fatal
    assert "expected a JSON object" in report.errors[0].reason


def test_the_import_command_reports_and_re_gates_the_project(project, tmp_path, django_capture_on_commit_callbacks):
    from django.core.management import call_command

    from judging.models import GateDecision

    path = tmp_path / "items.jsonl"
    path.write_bytes(jsonl(GOOD, {**GOOD, "id": "a2", "human_label": ""}, {"id": "bad"}, "").getvalue())
    out, err = io.StringIO(), io.StringIO()
    with django_capture_on_commit_callbacks(execute=True):  # no broker in tests: the re-gating runs here
        call_command("import_items", project.slug, str(path), stdout=out, stderr=err)
    summary = "2 items created, 0 already present, 1 labels imported as SME reviews, 1 lines not stored"
    assert f"{summary}, 1 blank lines skipped" in out.getvalue()
    assert "re-gating support now: label functions, then the gate" in out.getvalue()
    assert f"{path}:3: prompt is missing or empty" in err.getvalue()
    assert dict(GateDecision.objects.values_list("item__external_id", "outcome")) == {"a1": "accept", "a2": "pending"}

    path.write_bytes(jsonl({**GOOD, "id": "a3"}).getvalue())
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        call_command("import_items", project.slug, str(path), "--no-gate", stdout=out, stderr=err)
    assert callbacks == [] and not GateDecision.objects.filter(item__external_id="a3").exists()
    assert f"not re-gated (--no-gate): run `manage.py apply_rules {project.slug}` when ready" in out.getvalue()


@pytest.mark.postgres  # SQLite has one writer; its in-memory test database locks whole tables
@pytest.mark.django_db(transaction=True)
def test_concurrent_imports_of_the_same_ids_into_one_project_take_turns(project):
    require("postgres")
    n = 3 * BATCH_SIZE
    records = [{**GOOD, "id": f"c{i}"} for i in range(n)]
    files = [jsonl(*records), jsonl(*reversed(records)), jsonl(*records[::2], *records[1::2])]
    reports = []
    errors = run_concurrently(
        lambda stream: reports.append(import_items(project=project, stream=stream, fmt="jsonl")),
        [(stream,) for stream in files],
    )
    # Before imports into one project took turns, COPYs of the same ids in other orders deadlocked.
    assert errors == []
    assert sorted((r.created, r.existing) for r in reports) == [(0, n), (0, n), (n, 0)]
    assert Item.objects.filter(project=project).count() == n and Review.objects.count() == n


def test_the_import_command_uses_an_existing_slug_as_it_is_and_refuses_one_that_slugifies_to_nothing(project, tmp_path):
    from django.core.management import CommandError, call_command

    from annotations.models import Project

    path = tmp_path / "items.jsonl"
    path.write_bytes(jsonl(GOOD).getvalue())
    Project.objects.create(slug="Acme", name="Acme")  # as the API may create it
    call_command("import_items", "Acme", str(path), "--no-gate", stdout=io.StringIO(), stderr=io.StringIO())
    assert Item.objects.get(external_id="a1").project.slug == "Acme" and not Project.objects.filter(slug="acme")
    with pytest.raises(CommandError, match="makes no slug"):
        call_command("import_items", "日本語", str(path), stdout=io.StringIO(), stderr=io.StringIO())
    assert not Project.objects.filter(slug="").exists()


def test_surrounding_whitespace_of_ids_is_stripped_at_import(project):
    stream = jsonl(
        {**GOOD, "id": " a1 "},
        {**GOOD, "id": "\ta2\n"},
        {**GOOD, "external_id": "  ", "id": " a3"},  # a blank external_id falls back to id, as an empty one does
        {**GOOD, "id": "a1"},  # the same id as line 1 once stripped
        {**GOOD, "id": "   ", "response": "no id"},  # nothing left: the content hash, as for an empty id
    )
    report = import_items(project=project, stream=stream, fmt="jsonl")
    assert [(e.line, e.reason) for e in report.errors] == [(4, "duplicate external_id 'a1' (first on line 1)")]
    ids = list(Item.objects.order_by("id").values_list("external_id", flat=True))
    assert ids[:3] == ["a1", "a2", "a3"] and len(ids[3]) == 24
    csv_report = import_items(
        project=project, stream=io.BytesIO(b"id,prompt,response\n a1 ,p,r\nc1\t,p,r\n"), fmt="csv"
    )
    assert (csv_report.created, csv_report.existing) == (1, 1)  # " a1 " is the a1 already stored
    assert Item.objects.filter(external_id="c1").exists()


def test_the_main_jobs_label_reader_strips_ids_as_the_import_does(tmp_path):
    from distillation.pipeline import read_labels

    path = tmp_path / "items.jsonl"
    path.write_bytes(jsonl({**GOOD, "id": " a1 "}, {**GOOD, "id": "a2\t", "human_label": "reject"}).getvalue())
    assert read_labels(path) == {"a1": "accept", "a2": "reject"}


def test_blank_lines_and_rows_are_counted_in_the_report(project):
    stream = jsonl(GOOD, "", "   ", {**GOOD, "id": "a2"}, "\t")
    report = import_items(project=project, stream=stream, fmt="jsonl")
    assert (report.created, report.blank, report.errors) == (2, 3, [])
    assert report.as_dict()["blank"] == 3
    # A blank line, and rows of empty cells as spreadsheets write them, are blank rows of a CSV file.
    text = b"id,prompt,response\nc1,p,r\n\n,,\n  , ,\t\nc2,p,r\n"
    csv_report = import_items(project=project, stream=io.BytesIO(text), fmt="csv")
    assert (csv_report.created, csv_report.blank, csv_report.errors) == (2, 3, [])


def test_a_missing_required_field_names_a_near_miss_that_is_present(project):
    stream = jsonl(
        {"id": "n1", "prompt": "p", "responce": "r"},
        {"id": "n2", "Prompt ": "p", "response": "r"},
        {"id": "n3", "prompt": "p", "answer": "r"},  # nothing close: no guess
        {"id": "n4", "prompt": "p", "response": "", "responce": "r"},  # present but empty: not missing
    )
    report = import_items(project=project, stream=stream, fmt="jsonl")
    assert [(e.line, e.reason) for e in report.errors] == [
        (1, "response is missing (did you mean 'responce'?)"),
        (2, "prompt is missing (did you mean 'Prompt '?)"),
        (3, "response is missing or empty"),
        (4, "response is missing or empty"),
    ]
    one = import_items(project=project, stream=io.BytesIO(b"id,prompt,responce\n1,p,r\n"), fmt="csv")
    assert one.fatal == "the CSV header has no response column (did you mean 'responce'?)"
    two = import_items(project=project, stream=io.BytesIO(b"id,Prompt,responses\n1,p,r\n"), fmt="csv")
    assert two.fatal == (
        "the CSV header has no prompt or response column (did you mean 'Prompt' for prompt, 'responses' for response?)"
    )
    assert not Item.objects.exists()


def test_a_key_written_twice_refuses_its_line_whichever_value_it_would_keep(project):
    """A parser keeps the last of two values: a line saying both reject and accept must not become an
    accept (the same ambiguity as a judge's reply with a repeated key)."""
    lines = [
        '{"external_id": "d1", "prompt": "p", "response": "r", "human_label": "reject", "human_label": "accept"}',
        '{"external_id": "d2", "external_id": "d3", "prompt": "p", "response": "r"}',
        '{"external_id": "d4", "prompt": "p", "response": "r", "metadata": {"a": 1, "a" : 2}}',
        '{"external_id": "d5", "prompt": "He said \\"x\\": y", "response": "r \\":\\" ok", "human_label": "accept"}',
        '{"external_id": "d6", "prompt": "p", "response": "r", "score": 1.5, "score": NaN}',
    ]
    report = import_items(project=project, stream=jsonl(*lines), fmt="jsonl")
    assert [(e.line, e.reason) for e in report.errors][:3] == [
        (1, "the key 'human_label' appears twice in one object: which value is meant cannot be told"),
        (2, "the key 'external_id' appears twice in one object: which value is meant cannot be told"),
        (3, "the key 'a' appears twice in one object: which value is meant cannot be told"),
    ]
    assert report.errors[3].line == 5  # NaN: refused for its own reason
    assert list(project.items.values_list("external_id", flat=True)) == ["d5"]
    assert Review.objects.get().decision == "accept"


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32"])
def test_a_utf16_or_utf32_file_is_refused_as_a_whole_with_its_encoding_named(project, encoding):
    text = json.dumps({"id": "a", "prompt": "p", "response": "r"}) + "\n"
    report = import_items(project=project, stream=io.BytesIO(text.encode(encoding)), fmt="jsonl")
    assert "not UTF-8: save it as UTF-8" in report.fatal and "UTF-" in report.fatal
    assert report.errors == [] and not project.items.exists()
