"""The chat JSONL export: the bytes of ``json.dumps``, paging by id, the latest SME correction, few queries."""

import json
import sys
import threading

import orjson
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from rest_framework.authtoken.models import Token

from annotations.models import Item, Review
from distillation import export
from distillation.export import chat_record, in_blocks, iter_chat_jsonl
from distillation.jsonl import escape_unicode_line_breaks, json_line
from judging.models import GateDecision
from tests.conftest import make_items

TRICKY = ['He said "hi"\\', "tab\there\nnew line", "é ü 中文 😀 \u2028 \u007f \x01 \x1f", "</script>&<"]
# What str.splitlines() breaks at and JSON leaves raw (U+0085, U+2028, U+2029), the other C1 controls, and
# what it breaks at that JSON escapes already (U+000B, U+000C, U+001C-U+001E; and CR, LF).
LINE_BREAKS = "\x85\u2028\u2029"
C1 = "".join(map(chr, range(0x80, 0xA0)))
ESCAPED = set(LINE_BREAKS + C1)
UNICODE_BREAKERS = LINE_BREAKS + C1 + "\x0b\x0c\x1c\x1d\x1e\r\n\r\n"


def dumps_escaped(record) -> str:
    """The oracle: ``json.dumps(ensure_ascii=False)`` with exactly ESCAPED written as the standard library's
    ``\\uXXXX`` escapes (it writes them with ``ensure_ascii=True``)."""
    return "".join(json.dumps(c)[1:-1] if c in ESCAPED else c for c in json.dumps(record, ensure_ascii=False))


def accept(items, outcome="accept"):
    GateDecision.objects.bulk_create(GateDecision(item=item, outcome=outcome, basis="sme") for item in items)


def test_lines_are_the_bytes_of_json_dumps_of_chat_record_with_unicode_line_breaks_escaped(project):
    items = make_items(project, TRICKY)
    Item.objects.filter(pk=items[0].pk).update(context='Plus is $4.\n"quoted"', prompt="Ünïcode?")
    accept(items)
    lines = list(iter_chat_jsonl(project))
    expected = [
        dumps_escaped(chat_record(prompt=i.prompt, context=i.context, response=i.response)) + "\n"
        for i in Item.objects.filter(project=project).order_by("id")
    ]
    assert [line.decode() for line in lines] == expected
    assert json.loads(lines[0])["messages"][0]["content"] == 'Context:\nPlus is $4.\n"quoted"\n\nÜnïcode?'


def test_pages_cover_every_accepted_item_once_in_order_with_the_latest_correction(project, monkeypatch, sme, lead):
    monkeypatch.setattr(export, "FIRST_PAGE_ROWS", 2)
    monkeypatch.setattr(export, "CHUNK_ROWS", 3)
    items = make_items(project, [f"Answer {i}" for i in range(10)])
    accept([i for n, i in enumerate(items) if n not in (4, 7)])
    accept([items[4]], outcome="reject")
    # Item 2: two SMEs corrected it; the later correction wins. Item 5: an empty correction changes nothing.
    Review.objects.create(item=items[2], reviewer=sme, decision="accept", corrected_response="first fix")
    Review.objects.create(item=items[2], reviewer=lead, decision="accept", corrected_response="later fix")
    Review.objects.create(item=items[5], reviewer=sme, decision="accept", corrected_response="")
    with CaptureQueriesContext(connection) as queries:
        lines = [json.loads(line) for line in iter_chat_jsonl(project)]
    answers = [line["messages"][1]["content"] for line in lines]
    assert answers == ["Answer 0", "Answer 1", "later fix", "Answer 3", "Answer 5", "Answer 6", "Answer 8", "Answer 9"]
    # Two queries a page (items, corrections): pages of 2, 3 and 3, and the empty page that ends it.
    assert len(queries) == 7


def test_blocks_regroup_whole_lines_without_changing_a_byte():
    lines = [f"line {i}\n".encode() * (i + 1) for i in range(50)]
    blocks = list(in_blocks(lines, size=100))
    assert b"".join(blocks) == b"".join(lines)
    assert all(block.endswith(b"\n") for block in blocks) and len(blocks) < len(lines)


@pytest.mark.django_db(transaction=True)
def test_outside_a_transaction_pages_are_read_ahead_by_a_thread_with_the_same_bytes(project, monkeypatch, sme):
    monkeypatch.setattr(export, "FIRST_PAGE_ROWS", 4)
    monkeypatch.setattr(export, "CHUNK_ROWS", 4)
    items = make_items(project, [f"Answer {i}" for i in range(11)])
    accept(items)
    Review.objects.create(item=items[9], reviewer=sme, decision="accept", corrected_response="fixed")
    threads = []
    real_thread = threading.Thread

    def spy(*args, **kwargs):
        threads.append(real_thread(*args, **kwargs))
        return threads[-1]

    monkeypatch.setattr(threading, "Thread", spy)
    lines = list(iter_chat_jsonl(project))
    assert len(threads) == 1 and not threads[0].is_alive()
    expected = [
        (
            dumps_escaped(chat_record(prompt=i.prompt, context="", response="fixed" if n == 9 else i.response)) + "\n"
        ).encode()
        for n, i in enumerate(items)
    ]
    assert lines == expected


@pytest.mark.django_db(transaction=True)
def test_a_client_that_stops_reading_stops_the_reading_thread(project, monkeypatch):
    monkeypatch.setattr(export, "FIRST_PAGE_ROWS", 2)
    monkeypatch.setattr(export, "CHUNK_ROWS", 2)
    accept(make_items(project, [f"Answer {i}" for i in range(20)]))
    lines = iter_chat_jsonl(project)
    assert next(lines).startswith(b'{"messages": ')
    lines.close()
    assert not [t for t in threading.enumerate() if t.name == "larry-read-ahead"]


def test_no_unicode_line_break_splits_a_record_of_the_streamed_export(client, project, lead):
    texts = [f"one{c}two" for c in UNICODE_BREAKERS] + [UNICODE_BREAKERS, "£ ° « » “quotes” — …"]
    items = make_items(project, texts)
    Item.objects.filter(pk=items[0].pk).update(prompt=f"Why{UNICODE_BREAKERS}?", context=f"See{UNICODE_BREAKERS}.")
    accept(items)
    token = Token.objects.create(user=lead).key
    url = reverse("distillation:api_export_chat", args=[project.slug])
    response = client.get(url, HTTP_AUTHORIZATION=f"Token {token}")
    lines = b"".join(response.streaming_content).decode().splitlines()
    assert len(lines) == len(texts)
    assert [json.loads(line)["messages"][1]["content"] for line in lines] == texts
    first = json.loads(lines[0])["messages"][0]["content"]
    assert first == f"Context:\nSee{UNICODE_BREAKERS}.\n\nWhy{UNICODE_BREAKERS}?"


def test_for_every_code_point_a_line_is_json_dumps_with_only_the_c1_controls_and_separators_escaped(project):
    # Every code point PostgreSQL can store (no NUL, no surrogates), in one response.
    everything = "".join(chr(c) for c in range(1, sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF)
    accept(make_items(project, [everything]))
    (line,) = iter_chat_jsonl(project)
    assert line.decode() == dumps_escaped(chat_record(prompt="Question 0?", context="", response=everything)) + "\n"
    assert orjson.loads(line)["messages"][1]["content"] == everything


def test_the_escape_is_the_same_on_str_and_on_utf8_bytes_and_leaves_other_lines_alone():
    everything = "".join(chr(c) for c in range(1, sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF)
    text = json.dumps({"all": everything, "é": "\u2028"}, ensure_ascii=False)
    expected = dumps_escaped({"all": everything, "é": "\u2028"})
    assert escape_unicode_line_breaks(text) == expected
    assert escape_unicode_line_breaks(text.encode()) == expected.encode()
    assert json_line({"all": everything, "é": "\u2028"}) == expected
    for untouched in ('{"a": "plain"}', '{"a": "é ü 中文 😀 “quotes” — … \\u2028"}'):
        assert escape_unicode_line_breaks(untouched) is untouched
        data = untouched.encode()
        assert escape_unicode_line_breaks(data) is data
