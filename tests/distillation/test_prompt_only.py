"""Prompts imported without a response: accepted only by a project that allows them, then "needs a response"
(pending at the gate whatever is said of them, so never exported), until a teacher answers them."""

import io
import json

import pytest

from annotations.importers import import_items
from annotations.models import Item, Review
from judging.models import GateDecision
from judging.services import gate_apply

pytestmark = pytest.mark.django_db

ROWS = [{"id": "p1", "prompt": "What is Plus?"}, {"id": "p2", "prompt": "What is Pro?", "response": ""}]


def jsonl(rows) -> io.BytesIO:
    return io.BytesIO("".join(json.dumps(r) + "\n" for r in rows).encode())


def test_a_project_refuses_prompt_only_rows_unless_it_accepts_them(project):
    report = import_items(project=project, stream=jsonl(ROWS), fmt="jsonl")
    assert report.created == 0 and [e.reason for e in report.errors] == [
        "response is missing or empty",
        "response is missing or empty",
    ]
    project.accepts_prompt_only = True
    project.save()
    report = import_items(project=project, stream=jsonl(ROWS), fmt="jsonl")
    assert report.created == 2 and not report.errors
    assert all(item.needs_response for item in Item.objects.all())
    csv = b"id,prompt\nc1,What is Max?\n"
    assert import_items(project=project, stream=io.BytesIO(csv), fmt="csv").created == 1


def test_a_prompt_only_item_stays_pending_even_with_an_accepting_label(project):
    item = Item.objects.create(project=project, external_id="p", prompt="What is Plus?", response="")
    Review.objects.create(item=item, decision="accept", origin="import")
    assert gate_apply(project=project) == {"accept": 0, "reject": 0, "pending": 1}
    decision = GateDecision.objects.get(item=item)
    assert decision.outcome == "pending" and decision.reasons[0].startswith("needs a response")


def test_a_judge_run_leaves_prompts_without_a_response_out(llm_project, judge_server, start_run):
    Item.objects.create(project=llm_project, external_id="bare", prompt="What is Plus?", response="")
    Item.objects.create(project=llm_project, external_id="full", prompt="What is Plus?", response="$4 a month.")
    run = start_run(llm_project)
    assert (run.status, run.items_total, run.items_done) == ("finished", 1, 1)
    assert len([b for b in judge_server.requests if "response_format" in b]) == 1
