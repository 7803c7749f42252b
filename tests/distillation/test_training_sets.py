"""Training-set snapshots: every format parsed back, counts that add up, lineage, reproducible sha256."""

import csv
import hashlib
import io
import json
import time

import pytest
from django.urls import reverse
from django.utils import timezone
from rest_framework.exceptions import ValidationError

from annotations.models import Item, Project, Review
from annotations.spreadsheets import neutralise_formula
from distillation import training_sets
from distillation.models import TrainingSet, TrainingSetRow
from distillation.tasks import build_training_set
from distillation.training_sets import iter_file, training_set_build, training_set_create
from judging.models import GateDecision, JudgeRun, LabelFunction, Verdict
from judging.services import gate_apply, gating_policy_set, label_functions_apply
from tests.conftest import run_concurrently

SECOND = timezone.timedelta(seconds=1)
ITEMS = [
    # external_id, prompt, context, response, how it is decided
    ("a1", "What is 2+2?", "", "4", "sme-accept"),
    ("a2", "What is 2+2?", "", "5", "sme-reject"),
    ("b1", "Capital of Spain?", "Spain: capital Madrid.", "Madrid.", "judge-accept"),
    ("c1", "Capital of France?", "", "Lyon.", "sme-reject-corrected"),
    ("d1", "Best storage?", "", "Use CompetitorCo.", "judge-accept"),  # vetoed by the rule
    ("e1", "Unjudged?", "", "Nobody decided this.", "pending"),
    ("f1", "Say hi", "", "Hi!", "judge-accept"),
    ("f2", "Say hi", "", "Hi!", "judge-accept"),  # the same content as f1
    ("g1", "A formula?", "", '=HYPERLINK("http://evil")', "judge-accept"),
    ("h1", "Rejected by the judge?", "", "Wrong.", "judge-reject"),
]


def decide_items(project: Project) -> JudgeRun:
    """Store ITEMS in ``project`` with SME reviews, a finished judge run and a vetoing rule, then gate them."""
    items = {
        ext: Item.objects.create(
            project=project,
            external_id=ext,
            prompt=prompt,
            context=context,
            response=response,
            source_model="small" if ext < "e" else "big",
            task_type="qa",
        )
        for ext, prompt, context, response, _ in ITEMS
    }
    run = JudgeRun.objects.create(
        project=project, backend="openai", model="judge-405b", status="finished", finished_at=timezone.now()
    )
    for ext, _, _, _, how in ITEMS:
        item = items[ext]
        if how == "sme-accept":
            Review.objects.create(item=item, decision="accept", origin="import", comment="Right sum.")
        elif how == "sme-reject":
            Review.objects.create(item=item, decision="reject", reason="inaccurate", origin="import")
        elif how == "sme-reject-corrected":
            Review.objects.create(item=item, decision="reject", corrected_response="Paris.", origin="import")
        elif how.startswith("judge-"):
            verdict = how.removeprefix("judge-")
            Verdict.objects.create(run=run, item=item, verdict=verdict, rationale=f"Judge says {verdict}.")
    LabelFunction.objects.create(
        project=project, name="competitor", kind="keywords", params={"keywords": ["CompetitorCo"]}, reason="competitor"
    )
    label_functions_apply(project=project)
    gating_policy_set(project=project, tiers=[(run, None)])  # a lead chose the run
    gate_apply(project=project)
    return run


@pytest.fixture
def decided(project):
    return decide_items(project)


def build(project, django_capture_on_commit_callbacks, **options) -> TrainingSet:
    with django_capture_on_commit_callbacks(execute=True):
        training_set = training_set_create(project=project, options=options)
    training_set.refresh_from_db()
    assert training_set.status == TrainingSet.Status.READY, training_set.error
    return training_set


def download(training_set, split=None) -> bytes:
    return b"".join(iter_file(training_set, split))


def jsonl(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.decode().splitlines()]


def assert_counts_add_up(training_set):
    written = training_set.rows_train + training_set.rows_validation
    assert training_set.items_selected == written + training_set.duplicates + training_set.unwritable
    assert len(training_set.report["duplicates"]) == training_set.duplicates
    assert len(training_set.report["unwritable"]) == training_set.unwritable


def test_chat_snapshot_takes_the_accepted_set_with_corrections_and_dedupes(
    project, decided, django_capture_on_commit_callbacks
):
    training_set = build(project, django_capture_on_commit_callbacks, format="chat", system_prompt="You are helpful.")
    rows = jsonl(download(training_set))
    answers = sorted(row["messages"][2]["content"] for row in rows)
    # a1, b1, f1 (f2 repeats it), g1; c1 was rejected (its correction is for DPO), d1 vetoed, e1 pending.
    assert answers == sorted(["4", "Madrid.", "Hi!", '=HYPERLINK("http://evil")'])
    assert all(row["messages"][0] == {"role": "system", "content": "You are helpful."} for row in rows)
    spain = next(row for row in rows if row["messages"][2]["content"] == "Madrid.")
    assert spain["messages"][1]["content"] == "Context:\nSpain: capital Madrid.\n\nCapital of Spain?"
    assert training_set.items_selected == 5 and training_set.duplicates == 1
    assert training_set.report["duplicates"] == [{"external_id": "f2", "duplicate_of": "f1"}]
    assert_counts_add_up(training_set)


def test_the_file_hash_is_the_sha256_of_the_download_and_counts_match_the_file(
    project, decided, django_capture_on_commit_callbacks
):
    training_set = build(project, django_capture_on_commit_callbacks, format="chat", validation_fraction=0.5, seed=3)
    whole = download(training_set)
    assert hashlib.sha256(whole).hexdigest() == training_set.sha256 and len(whole) == training_set.size_bytes
    train, validation = download(training_set, "train"), download(training_set, "validation")
    assert whole == train + validation
    assert hashlib.sha256(train).hexdigest() == training_set.files["train"]["sha256"]
    assert len(jsonl(train)) == training_set.rows_train and len(jsonl(validation)) == training_set.rows_validation
    assert training_set.rows_train + training_set.rows_validation == 4


def test_the_same_content_gives_the_same_sha256_whatever_the_ids_and_the_order(
    project, decided, staff, django_capture_on_commit_callbacks
):
    options = {"format": "dpo", "validation_fraction": 0.3, "seed": 7, "system_prompt": "Be brief."}
    first = build(project, django_capture_on_commit_callbacks, **options)
    again = build(project, django_capture_on_commit_callbacks, **options)
    assert again.sha256 == first.sha256
    # The same items imported into another project in the reverse order, so every id differs.
    other = Project.objects.create(slug="copy", name="Copy")
    global ITEMS
    saved, ITEMS = ITEMS, list(reversed(ITEMS))
    try:
        decide_items(other)
    finally:
        ITEMS = saved
    copy = build(other, django_capture_on_commit_callbacks, **options)
    assert copy.sha256 == first.sha256


def test_a_snapshot_is_frozen_when_the_project_changes_later(project, decided, django_capture_on_commit_callbacks):
    training_set = build(project, django_capture_on_commit_callbacks, format="chat")
    before = download(training_set)
    Item.objects.filter(project=project, external_id="a1").update(response="changed")
    Item.objects.filter(project=project, external_id="b1").delete()
    gate_apply(project=project)
    assert download(training_set) == before
    assert hashlib.sha256(before).hexdigest() == training_set.sha256


def test_dpo_pairs_chosen_with_a_rejected_response_to_the_same_prompt(
    project, decided, django_capture_on_commit_callbacks
):
    training_set = build(project, django_capture_on_commit_callbacks, format="dpo")
    pairs = {
        (row["prompt"][-1]["content"], row["chosen"][0]["content"], row["rejected"][0]["content"])
        for row in jsonl(download(training_set))
    }
    assert pairs == {("What is 2+2?", "4", "5"), ("Capital of France?", "Paris.", "Lyon.")}
    # b1, f1, f2 and g1 are accepted with no rejected response to their prompt: listed, never dropped silently.
    assert {entry["external_id"] for entry in training_set.report["unwritable"]} == {"b1", "f1", "f2", "g1"}
    assert {entry["reason"] for entry in training_set.report["unwritable"]} == {
        "no rejected response to the same prompt and context"
    }
    assert training_set.items_selected == 6
    assert_counts_add_up(training_set)


def test_judge_distillation_rows_carry_verdict_rationale_and_basis(
    project, decided, django_capture_on_commit_callbacks
):
    training_set = build(project, django_capture_on_commit_callbacks, format="judge", dedupe=False)
    rows = {row["response"]: row for row in jsonl(download(training_set))}
    assert set(rows) == {
        "4",
        "5",
        "Madrid.",
        "Lyon.",
        "Use CompetitorCo.",
        "Hi!",
        '=HYPERLINK("http://evil")',
        "Wrong.",
    }
    assert rows["4"] == {
        "prompt": "What is 2+2?",
        "context": "",
        "response": "4",
        "verdict": "accept",
        "rationale": "Right sum.",
        "basis": "sme",
    }
    assert (rows["5"]["verdict"], rows["5"]["rationale"]) == ("reject", "inaccurate")
    assert (rows["Madrid."]["rationale"], rows["Madrid."]["basis"]) == ("Judge says accept.", "judge")
    vetoed = rows["Use CompetitorCo."]
    assert (vetoed["verdict"], vetoed["rationale"], vetoed["basis"]) == (
        "reject",
        "Rejected by rule: competitor",
        "rule",
    )
    assert rows["Wrong."]["verdict"] == "reject"
    assert training_set.items_selected == 9 and training_set.rows_train == 9  # f1 and f2 both, dedupe is off
    assert_counts_add_up(training_set)


def test_alpaca_and_sharegpt_rows(project, decided, django_capture_on_commit_callbacks):
    alpaca = jsonl(download(build(project, django_capture_on_commit_callbacks, format="alpaca", system_prompt="S")))
    spain = next(row for row in alpaca if row["output"] == "Madrid.")
    assert spain == {
        "system": "S",
        "instruction": "Capital of Spain?",
        "input": "Spain: capital Madrid.",
        "output": "Madrid.",
    }
    sharegpt = jsonl(download(build(project, django_capture_on_commit_callbacks, format="sharegpt")))
    spain = next(row for row in sharegpt if row["conversations"][-1]["value"] == "Madrid.")
    assert spain == {
        "conversations": [
            {"from": "human", "value": "Context:\nSpain: capital Madrid.\n\nCapital of Spain?"},
            {"from": "gpt", "value": "Madrid."},
        ]
    }


def test_csv_neutralises_formulas_and_parses_back(project, decided, django_capture_on_commit_callbacks):
    training_set = build(project, django_capture_on_commit_callbacks, format="csv")
    rows = list(csv.DictReader(io.StringIO(download(training_set).decode(), newline="")))
    assert list(rows[0]) == ["external_id", "prompt", "context", "response", "source_model", "task_type"]
    formula = next(row for row in rows if row["external_id"] == "g1")
    assert formula["response"] == '\'=HYPERLINK("http://evil")'
    assert len(rows) == training_set.rows_train == 4  # f2 repeats f1's content under another id: a duplicate
    assert training_set.report["duplicates"] == [{"external_id": "f2", "duplicate_of": "f1"}]


@pytest.mark.parametrize("cell", ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"])
def test_neutralise_formula_prefixes_every_dangerous_start(cell):
    assert neutralise_formula(cell) == "'" + cell


def test_plain_cells_are_left_alone():
    assert neutralise_formula("4 - 1 = 3") == "4 - 1 = 3"


def test_filters_select_by_source_model_task_type_run_and_date(project, decided, django_capture_on_commit_callbacks):
    by_model = build(project, django_capture_on_commit_callbacks, format="judge", filters={"source_models": ["big"]})
    assert {row["response"] for row in jsonl(download(by_model))} == {
        "Hi!",
        '=HYPERLINK("http://evil")',
        "Wrong.",
    }
    by_run = build(project, django_capture_on_commit_callbacks, format="judge", filters={"judge_run": decided.pk})
    assert by_run.items_selected == 6  # b1 d1 f1 f2 g1 h1: the items the run judged
    tomorrow = (timezone.now() + timezone.timedelta(days=1)).isoformat()
    later = build(project, django_capture_on_commit_callbacks, format="judge", filters={"created_after": tomorrow})
    assert later.items_selected == 0 and download(later) == b""
    assert by_model.filters == {"source_models": ["big"]}


def test_lineage_records_reviews_runs_rules_and_options(project, decided, django_capture_on_commit_callbacks):
    training_set = build(project, django_capture_on_commit_callbacks, format="judge", seed=5)
    lineage = training_set.lineage
    assert lineage["decided_by"] == {"sme": 3, "judge": 6, "rules_only": 0}
    assert lineage["reviews"] == {"sme": 0, "imported": 3, "adjudications": 0}
    assert [run["id"] for run in lineage["judge_runs"]] == [decided.pk]
    assert lineage["label_functions"] == [
        {"id": LabelFunction.objects.get().pk, "name": "competitor", "version": 0, "reason": "competitor"}
    ]
    assert (lineage["seed"], lineage["format"], lineage["vetoed"]) == (5, "judge", 1)


def test_bad_options_are_refused_with_the_field_at_fault(project, decided):
    with pytest.raises(ValidationError) as error:
        training_set_create(project=project, options={"format": "parquet", "validation_fraction": 2})
    assert set(error.value.detail) == {"format", "validation_fraction"}
    with pytest.raises(ValidationError) as error:
        training_set_create(project=project, options={"filters": {"judge_run": 99999}})
    assert "judge_run" in str(error.value.detail)
    # A misspelt filter is refused by name, not dropped (which would build the set from every item).
    with pytest.raises(ValidationError) as error:
        training_set_create(project=project, options={"filters": {"source_model": ["x"], "task_types": ["t"]}})
    assert list(error.value.detail["filters"]) == ["source_model"]
    assert "unknown filter" in str(error.value.detail)
    assert not TrainingSet.objects.exists()


def test_a_build_is_idempotent_once_ready(project, decided, django_capture_on_commit_callbacks):
    training_set = build(project, django_capture_on_commit_callbacks, format="chat")
    again = training_set_build(training_set_id=training_set.pk)
    assert again.sha256 == training_set.sha256 and again.rows.count() == training_set.rows_train


def test_an_empty_accepted_set_gives_an_empty_ready_snapshot(project, django_capture_on_commit_callbacks):
    training_set = build(project, django_capture_on_commit_callbacks, format="chat")
    assert training_set.items_selected == 0 and download(training_set) == b""
    assert training_set.sha256 == hashlib.sha256(b"").hexdigest()
    assert GateDecision.objects.count() == 0


def test_leads_snapshot_from_the_page_smes_and_outsiders_cannot(
    client, project, decided, lead, sme, outsider, django_capture_on_commit_callbacks
):
    url = reverse("distillation:training_sets", args=[project.slug])
    client.force_login(outsider)
    assert client.get(url).status_code == 404
    client.force_login(sme)
    assert client.get(url).status_code == 403
    client.force_login(lead)
    page = client.get(url)
    assert page.status_code == 200 and b"Snapshot a new training set" in page.content
    form = {"format": "dpo", "validation_fraction": "0", "seed": "0", "dedupe": "on", "source_models": ["small"]}
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(url, form)
    training_set = TrainingSet.objects.get()
    assert response.status_code == 302 and response["Location"] == training_set.get_absolute_url()
    assert training_set.filters == {"source_models": ["small"]}
    detail = client.get(training_set.get_absolute_url()).content.decode()
    assert "2 train + 0 validation rows" in detail and training_set.sha256 in detail
    assert "no rejected response to the same prompt and context" in detail  # b1 is listed, not dropped


def test_the_page_form_reports_bad_options(client, project, decided, lead):
    client.force_login(lead)
    url = reverse("distillation:training_sets", args=[project.slug])
    response = client.post(url, {"format": "dpo", "validation_fraction": "0.9", "seed": "x"})
    assert response.status_code == 400 and not TrainingSet.objects.exists()
    assert response.context["form"].errors.keys() == {"validation_fraction", "seed"}


def test_a_failed_build_keeps_no_rows_and_says_why(project, decided, django_capture_on_commit_callbacks):
    training_set = TrainingSet.objects.create(project=project, filters={"judge_run": 424242})
    training_set = training_set_build(training_set_id=training_set.pk)
    assert training_set.status == TrainingSet.Status.FAILED and "no judge run 424242" in training_set.error
    assert training_set.rows.count() == 0


def test_csv_cells_with_line_breaks_stay_one_quoted_cell(project, decided, django_capture_on_commit_callbacks):
    Item.objects.filter(project=project, external_id="b1").update(prompt="hello\r\n=cmd|' /C calc'!A0")
    Item.objects.filter(project=project, external_id="f1").update(response="\r=1+1")
    training_set = build(project, django_capture_on_commit_callbacks, format="csv")
    text = download(training_set).decode()
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert len(rows) == training_set.rows_train == 5  # f1 no longer repeats f2
    assert next(row for row in rows if row["external_id"] == "b1")["prompt"] == "hello\r\n=cmd|' /C calc'!A0"
    assert next(row for row in rows if row["external_id"] == "f1")["response"] == "'\r=1+1"
    assert "\"hello\r\n=cmd|' /C calc'!A0\"" in text  # quoted: the formula is inside a cell that starts "hello"


def test_dpo_lineage_counts_the_rejected_responses_drawn_from(project, decided, django_capture_on_commit_callbacks):
    training_set = build(project, django_capture_on_commit_callbacks, format="dpo", filters={"source_models": ["big"]})
    # a2, c1, d1 (vetoed) and h1: the pool is the whole project's rejects, not only the filtered "big" ones.
    assert training_set.lineage["dpo_rejected_responses"] == 4


# What str.splitlines() breaks at: raw in JSON (U+0085, U+2028, U+2029), escaped by JSON already (U+000A-U+000D,
# U+001C-U+001E); and the other C1 controls, escaped too.
BREAKERS = "\x85\u2028\u2029" + "".join(map(chr, range(0x80, 0xA0))) + "\x0b\x0c\x1c\x1d\x1e\r\n"


@pytest.fixture
def breakers(project):
    """Per character ``c`` of BREAKERS, a prompt with an accepted and a rejected response, ``c`` in every field."""
    for i, c in enumerate(BREAKERS):
        for ext, decision, response in ((f"good{i}", "accept", f"good{c}answer"), (f"bad{i}", "reject", f"bad{c}")):
            item = Item.objects.create(
                project=project,
                external_id=ext,
                prompt=f"Q{i}{c}?",
                context=f"ctx{c}",
                response=response,
                source_model=f"model{c}",
            )
            Review.objects.create(item=item, decision=decision, origin="import", comment=f"why{c}")
    gate_apply(project=project)


def strings_in(value) -> set[str]:
    if isinstance(value, str):
        return {value}
    children = value.values() if isinstance(value, dict) else value
    return set().union(*(strings_in(child) for child in children))


@pytest.mark.parametrize("fmt", ["chat", "alpaca", "sharegpt", "dpo", "judge"])
def test_no_unicode_line_break_splits_a_row_of_any_jsonl_format(
    fmt, project, breakers, django_capture_on_commit_callbacks
):
    system = "" if fmt == "judge" else f"system{BREAKERS}"
    training_set = build(
        project, django_capture_on_commit_callbacks, format=fmt, system_prompt=system, validation_fraction=0.3, seed=1
    )
    lines = download(training_set).decode().splitlines()
    n = len(BREAKERS) * (2 if fmt == "judge" else 1)
    assert len(lines) == training_set.rows_train + training_set.rows_validation == n
    assert training_set.rows_validation > 0
    found = strings_in([json.loads(line) for line in lines])
    expected = {f"good{c}answer" for c in BREAKERS}
    if fmt in ("dpo", "judge"):
        expected |= {f"bad{c}" for c in BREAKERS}
    if fmt in ("chat", "sharegpt", "dpo"):
        expected |= {f"Context:\nctx{c}\n\nQ{i}{c}?" for i, c in enumerate(BREAKERS)}
    else:
        expected |= {f"Q{i}{c}?" for i, c in enumerate(BREAKERS)} | {f"ctx{c}" for c in BREAKERS}
    if fmt == "judge":
        expected |= {f"why{c}" for c in BREAKERS}
    assert expected | ({system} if system else set()) <= found
    # Each split's file too: its own sha256 is of what a reader splits.
    for split in ("train", "validation"):
        assert len(download(training_set, split).decode().splitlines()) == training_set.files[split]["rows"]


def test_a_csv_row_with_unicode_line_breaks_stays_one_record(project, breakers, django_capture_on_commit_callbacks):
    training_set = build(project, django_capture_on_commit_callbacks, format="csv")
    text = download(training_set).decode()
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert len(rows) == training_set.rows_train == len(BREAKERS)
    assert {row["response"] for row in rows} == {f"good{c}answer" for c in BREAKERS}
    assert {row["source_model"] for row in rows} == {f"model{c}" for c in BREAKERS}
    # A reader that splits lines first (str.splitlines()) and parses CSV after still sees one record per row,
    # since such cells are quoted (it loses the break character itself: it took it for a line end).
    records = list(csv.reader(text.splitlines()))
    assert len(records) == 1 + len(BREAKERS)
    kept = {c for c in BREAKERS if len(f"a{c}b".splitlines()) == 1}
    assert {record[3] for record in records[1:]} == {f"good{c}answer" for c in kept} | {"goodanswer"}


def test_rows_stored_before_escaping_keep_their_bytes(project):
    """A snapshot is frozen text: rows written raw by an earlier version download exactly as stored."""
    raw = '{"messages": [{"role": "user", "content": "Q\u2028?"}, {"role": "assistant", "content": "A\x85"}]}'
    training_set = TrainingSet.objects.create(project=project, status=TrainingSet.Status.READY)
    training_set.rows.create(split="train", content_sha256="0" * 64, external_id="old", line=raw)
    assert download(training_set) == (raw + "\n").encode()


def answers_to_one_prompt(project, accepted: list[str], rejected: list[str], corrections: dict | None = None):
    """SME-decided items answering one prompt: ``accepted`` and ``rejected`` responses (a rejected response in
    ``corrections`` gets the SME's corrected response), gated."""
    corrections = corrections or {}
    answers = [("acc", response, "accept") for response in accepted] + [("rej", r, "reject") for r in rejected]
    for n, (prefix, response, decision) in enumerate(answers):
        item = Item.objects.create(project=project, external_id=f"{prefix}{n}", prompt="Plus price?", response=response)
        Review.objects.create(
            item=item, decision=decision, origin="import", corrected_response=corrections.get(response, "")
        )
    gate_apply(project=project)


def dpo_pairs(training_set) -> list[tuple[str, str]]:
    return sorted((row["chosen"][0]["content"], row["rejected"][0]["content"]) for row in jsonl(download(training_set)))


def test_dpo_pairs_three_accepted_with_two_rejected_one_to_one_and_lists_the_third(
    project, django_capture_on_commit_callbacks
):
    answers_to_one_prompt(project, ["$4.", "$4 a month.", "Four dollars."], ["Free.", "$40."])
    for seed in range(12):
        training_set = build(project, django_capture_on_commit_callbacks, format="dpo", seed=seed)
        pairs = dpo_pairs(training_set)
        # Each rejected response pairs once; each chosen one at most once; the third chosen has no partner left.
        assert sorted(rejected for _, rejected in pairs) == ["$40.", "Free."], (seed, pairs)
        assert len({chosen for chosen, _ in pairs}) == 2
        assert [entry["reason"] for entry in training_set.report["unwritable"]] == [
            "each rejected response to the same prompt and context pairs once, and all 2 are taken"
        ]
        assert training_set.items_selected == 3
        assert_counts_add_up(training_set)


def test_dpo_pairs_two_accepted_with_two_of_three_rejected_never_one_twice(project, django_capture_on_commit_callbacks):
    answers_to_one_prompt(project, ["$4.", "$4 a month."], ["Free.", "$40.", "Ask sales."])
    used = set()
    for seed in range(12):
        training_set = build(project, django_capture_on_commit_callbacks, format="dpo", seed=seed)
        pairs = dpo_pairs(training_set)
        assert sorted(chosen for chosen, _ in pairs) == sorted(["$4.", "$4 a month."]), (seed, pairs)
        assert len({rejected for _, rejected in pairs}) == 2, (seed, pairs)
        assert training_set.unwritable == 0 and training_set.items_selected == 2
        used |= {rejected for _, rejected in pairs}
    assert used == {"Free.", "$40.", "Ask sales."}  # the seed chooses which two: none is always left out


def test_a_dpo_correction_pairs_with_the_response_it_corrects_and_that_response_is_not_reused(
    project, django_capture_on_commit_callbacks
):
    answers_to_one_prompt(
        project, ["$4.", "$4 a month."], ["Free.", "$40."], corrections={"Free.": "Plus costs $4 a month."}
    )
    for seed in range(12):
        training_set = build(project, django_capture_on_commit_callbacks, format="dpo", seed=seed)
        pairs = dpo_pairs(training_set)
        assert ("Plus costs $4 a month.", "Free.") in pairs
        # "Free." is taken by its correction, so one accepted response pairs with "$40." and the other is listed.
        assert sorted(rejected for _, rejected in pairs) == ["$40.", "Free."], (seed, pairs)
        assert training_set.items_selected == 3 and training_set.unwritable == 1
        assert_counts_add_up(training_set)


def test_dpo_pairing_depends_only_on_the_content_and_the_seed(project, django_capture_on_commit_callbacks):
    accepted, rejected = ["$4.", "$4 a month.", "Four dollars.", "4 USD."], ["Free.", "$40.", "Ask sales."]
    answers_to_one_prompt(project, accepted, rejected, corrections={"$40.": "It is $4."})
    first = build(project, django_capture_on_commit_callbacks, format="dpo", seed=5)
    assert build(project, django_capture_on_commit_callbacks, format="dpo", seed=5).sha256 == first.sha256
    other = Project.objects.create(slug="copy", name="Copy")
    answers_to_one_prompt(other, accepted[::-1], rejected[::-1], corrections={"$40.": "It is $4."})
    copy = build(other, django_capture_on_commit_callbacks, format="dpo", seed=5)
    assert copy.sha256 == first.sha256 and dpo_pairs(copy) == dpo_pairs(first)
    seeds = {build(project, django_capture_on_commit_callbacks, format="dpo", seed=s).sha256 for s in range(8)}
    assert len(seeds) > 1  # the seed does choose the pairs


def test_a_dpo_pair_never_rejects_the_chosen_text_itself(project, django_capture_on_commit_callbacks):
    answers_to_one_prompt(project, ["$4."], ["$4.", "Free."])  # "$4." was also rejected, on another item
    for seed in range(8):
        assert dpo_pairs(build(project, django_capture_on_commit_callbacks, format="dpo", seed=seed)) == [
            ("$4.", "Free.")
        ]


def build_directly(project, **options) -> TrainingSet:
    """A set built in this thread, for its sha256 and counts."""
    training_set = training_set_build(training_set_id=TrainingSet.objects.create(project=project, **options).pk)
    assert training_set.status == TrainingSet.Status.READY, training_set.error
    return training_set


def slow_candidates(monkeypatch, seconds: float, then=None) -> list[int]:
    """Slow the build down (``seconds`` per item read) so that builds overlap; ``then(n)`` runs before the
    ``n``-th item is handed out. Returns the list of builds that started reading items (one entry each)."""
    real, started = training_sets._candidates, []

    def candidates(*args):
        started.append(1)
        for n, candidate in enumerate(real(*args), start=1):
            time.sleep(seconds)
            if then:
                then(n)
            yield candidate

    monkeypatch.setattr(training_sets, "_candidates", candidates)
    return started


@pytest.mark.django_db(transaction=True)
def test_two_deliveries_of_one_build_at_once_make_one_build_with_the_right_sha256(project, monkeypatch):
    decide_items(project)
    options = {"format": "chat", "validation_fraction": 0.5, "seed": 3}
    reference = build_directly(project, **options)
    monkeypatch.setattr(training_sets, "WRITE_BATCH", 1)
    started = slow_candidates(monkeypatch, 0.1)
    training_set = TrainingSet.objects.create(project=project, **options)
    errors = run_concurrently(lambda pk: training_set_build(training_set_id=pk), [(training_set.pk,)] * 2)
    assert errors == []
    training_set.refresh_from_db()
    assert len(started) == 1  # the second delivery found the set claimed and left it alone
    assert (training_set.status, training_set.sha256) == (TrainingSet.Status.READY, reference.sha256)
    assert training_set.rows.count() == training_set.rows_train + training_set.rows_validation == 4
    assert hashlib.sha256(download(training_set)).hexdigest() == reference.sha256


def test_a_build_whose_lease_ran_out_is_taken_over_and_a_live_one_is_left_alone(project, decided):
    reference = build_directly(project, format="chat")
    now = timezone.now()
    live, dead = (
        TrainingSet.objects.create(project=project, claimed_by=name, claimed_until=until)
        for name, until in (("live-worker", now + timezone.timedelta(hours=1)), ("dead-worker", now - SECOND))
    )
    for training_set in (live, dead):  # rows the claim holder wrote before the check
        training_set.rows.create(split="train", content_sha256="0" * 64, external_id="half-built", line="{}")
    live = training_set_build(training_set_id=live.pk)
    assert (live.status, live.claimed_by, list(live.rows.values_list("external_id", flat=True))) == (
        TrainingSet.Status.BUILDING,
        "live-worker",
        ["half-built"],
    )
    dead = training_set_build(training_set_id=dead.pk)
    assert (dead.status, dead.sha256) == (TrainingSet.Status.READY, reference.sha256)
    assert dead.rows.count() == dead.rows_train == 4 and not dead.rows.filter(external_id="half-built").exists()
    assert dead.claimed_by not in ("", "dead-worker") and dead.claimed_until is None


def test_a_build_that_lost_its_claim_stops_and_touches_nothing_of_the_new_holders(project, decided, monkeypatch):
    training_set = TrainingSet.objects.create(project=project, format="judge")
    monkeypatch.setattr(training_sets, "WRITE_BATCH", 1)

    def taken_over(n: int) -> None:
        if n == 3:  # this build stalled past its lease; another worker claimed the set and started over
            TrainingSet.objects.filter(pk=training_set.pk).update(
                claimed_by="new-holder", claimed_until=timezone.now() + timezone.timedelta(hours=1)
            )
            TrainingSetRow.objects.filter(training_set=training_set).delete()
            training_set.rows.create(split="train", content_sha256="0" * 64, external_id="new-holder's", line="{}")

    slow_candidates(monkeypatch, 0, then=taken_over)
    result = training_set_build(training_set_id=training_set.pk)
    assert (result.status, result.error, result.claimed_by) == (TrainingSet.Status.BUILDING, "", "new-holder")
    assert list(result.rows.values_list("external_id", flat=True)) == ["new-holder's"]


def test_a_set_deleted_while_it_builds_stays_deleted_and_its_task_ends_quietly(project, decided, monkeypatch):
    training_set = TrainingSet.objects.create(project=project, format="judge")
    monkeypatch.setattr(training_sets, "WRITE_BATCH", 1)

    def delete(n: int) -> None:
        if n == 3:
            TrainingSet.objects.filter(pk=training_set.pk).delete()

    slow_candidates(monkeypatch, 0, then=delete)
    assert build_training_set(training_set.pk) is None
    assert not TrainingSet.objects.exists() and not TrainingSetRow.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_build_stopped_by_the_soft_time_limit_mid_query_is_marked_failed_not_left_building(project, monkeypatch):
    """Celery's soft limit is a signal: it can strike inside a query and leave the connection in a transaction
    it cannot leave ("can't change 'autocommit' now"); the set used to stay 'building' for ever."""
    from celery.exceptions import SoftTimeLimitExceeded
    from django.db import connection

    from distillation import training_sets

    decide_items(project)
    training_set = TrainingSet.objects.create(project=project, format="chat")

    def interrupted(*args, **kwargs):
        with connection.cursor() as cursor:
            cursor.execute("BEGIN")  # a transaction Django does not know of, as a signal mid-query leaves
            cursor.execute("SELECT 1")
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(training_sets, "_build", interrupted)
    built = training_sets.training_set_build(training_set_id=training_set.pk)
    assert built.status == "failed" and "SoftTimeLimitExceeded" in built.error
    assert built.claimed_until is None and not built.rows.exists()
