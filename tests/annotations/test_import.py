"""Import of JSONL and CSV: fields, prior labels, idempotence, bad lines reported and skipped."""

import io
import json

import pytest

from annotations.importers import ImportFormatError, detect_format, import_items
from annotations.models import Item, Review


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


def test_a_csv_that_is_not_utf8_stops_with_a_clear_error(project):
    text = b"id,prompt,response\nk1,p,r\n" + b"k2,\xff\xfe,r\n"
    report = import_items(project=project, stream=io.BytesIO(text), fmt="csv")
    assert "not UTF-8" in report.fatal


def test_the_format_comes_from_the_file_name():
    assert detect_format("Data.JSONL") == "jsonl" and detect_format("x.csv") == "csv"
    with pytest.raises(ImportFormatError, match="unknown format"):
        detect_format("x.xlsx")


def test_a_csv_without_a_required_column_is_refused_once(project):
    report = import_items(project=project, stream=io.BytesIO(b"id,prompt\n1,p\n2,q\n"), fmt="csv")
    assert report.fatal == "the CSV header has no response column" and report.errors == []
    assert not Item.objects.exists()
