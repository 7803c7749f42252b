"""What the teacher writes reaches a training set only through the gate: accepted answers as SFT rows in every
chat format, DPO pairs against the student's rejected response, reasoning rows; rejected, vetoed, truncated or
undecided answers never. Every file is parsed back."""

import json

import pytest

from annotations.models import Item, Review
from distillation.models import TeacherRun
from distillation.teacher_runs import teacher_run_create, teacher_run_report
from judging.models import GateDecision, LabelFunction
from judging.services import label_function_save
from tests.conftest import make_items, use_judge
from tests.distillation.test_teacher_runs import use_teacher
from tests.distillation.test_training_sets import build, download, jsonl

pytestmark = pytest.mark.django_db

PROMPTS = ["Q1?", "Q2 [t-bad]?", "Q3 [t-length]?", "Q4 [t-reasoning]?", "Q5 [t-think]?"]


def teach(project, capture, selection="rejected") -> TeacherRun:
    with capture(execute=True):
        run = teacher_run_create(project=project, selection=selection)
    run.refresh_from_db()
    return run


@pytest.fixture
def taught(project, judge_server, start_run, django_capture_on_commit_callbacks):
    """Five prompts whose student responses the judge rejects; the teacher answers them (one answer WRONG, one
    truncated); a rule vetoes WRONG; a new judge run over everything (another model than the teacher) gates."""
    use_judge(project, judge_server.base_url, model="judge-70b")
    use_teacher(project, judge_server.base_url, model="teacher-405b")
    for i, prompt in enumerate(PROMPTS):
        Item.objects.create(project=project, external_id=f"s{i}", prompt=prompt, response=f"Student {i}: WRONG")
    with django_capture_on_commit_callbacks(execute=True):
        label_function_save(
            rule=LabelFunction(
                project=project, name="wrong", kind="keywords", params={"keywords": ["WRONG"]}, reason="says WRONG"
            )
        )
    start_run(project, use=True)
    run = teach(project, django_capture_on_commit_callbacks)
    assert (run.answers_written, run.answers_failed) == (4, 1)
    # Rules ran on the answers at once; no judge has decided them yet: pending, or vetoed.
    answers = GateDecision.objects.filter(item__answers__isnull=False)
    assert sorted(answers.values_list("outcome", flat=True)) == ["pending", "pending", "pending", "reject"]
    start_run(project, use=True)
    return run


def test_nothing_is_exported_before_the_gate_accepted_it(
    project, judge_server, start_run, django_capture_on_commit_callbacks
):
    use_judge(project, judge_server.base_url)
    use_teacher(project, judge_server.base_url, model="teacher")
    make_items(project, ["WRONG"], prompt="Q?")
    start_run(project, use=True)
    teach(project, django_capture_on_commit_callbacks)
    answer = Item.objects.get(answers__isnull=False)
    assert answer.gate_decision.outcome == "pending"
    for fmt in ("chat", "alpaca", "sharegpt", "dpo", "reasoning", "csv"):
        training_set = build(project, django_capture_on_commit_callbacks, format=fmt)
        assert training_set.items_selected == 0 and download(training_set) in (b"", training_set_header(fmt))


def training_set_header(fmt: str) -> bytes:
    from distillation.formats import file_header

    return file_header(fmt)


def test_accepted_answers_are_sft_rows_in_every_chat_format(project, taught, django_capture_on_commit_callbacks):
    accepted = Item.objects.filter(answers__isnull=False, gate_decision__outcome="accept")
    assert sorted(a.answers.prompt for a in accepted) == ["Q1?", "Q4 [t-reasoning]?", "Q5 [t-think]?"]
    report = teacher_run_report(taught)
    assert (report["written"], report["accepted"], report["vetoed"], report["rejected"]) == (4, 3, 1, 1)
    rates = ({k: r[k] for k in ("n", "accepted", "rate")} for r in (report["teacher"], report["originals"]))
    assert tuple(rates) == ({"n": 4, "accepted": 3, "rate": 0.75}, {"n": 4, "accepted": 0, "rate": 0.0})
    # Each rate's 95 % Wilson interval, as statsmodels computes it on the same counts.
    from statsmodels.stats.proportion import proportion_confint

    for rate in (report["teacher"], report["originals"]):
        low, high = proportion_confint(rate["accepted"], rate["n"], alpha=0.05, method="wilson")
        assert (rate["low"], rate["high"]) == (pytest.approx(low), pytest.approx(high))
    expected = {(a.prompt, a.response) for a in accepted}
    chat = jsonl(download(build(project, django_capture_on_commit_callbacks, format="chat")))
    assert {(r["messages"][0]["content"], r["messages"][1]["content"]) for r in chat} == expected
    alpaca = jsonl(download(build(project, django_capture_on_commit_callbacks, format="alpaca")))
    assert {(r["instruction"], r["output"]) for r in alpaca} == expected
    sharegpt = jsonl(download(build(project, django_capture_on_commit_callbacks, format="sharegpt")))
    assert {(r["conversations"][0]["value"], r["conversations"][1]["value"]) for r in sharegpt} == expected
    for rows in (chat, alpaca, sharegpt):
        text = json.dumps(rows)
        assert "WRONG" not in text and "<think>" not in text and "Thought " not in text


def test_dpo_pairs_an_accepted_answer_with_the_students_rejected_response(
    project, taught, django_capture_on_commit_callbacks
):
    rows = jsonl(download(build(project, django_capture_on_commit_callbacks, format="dpo")))
    pairs = {r["prompt"][0]["content"]: (r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows}
    assert set(pairs) == {"Q1?", "Q4 [t-reasoning]?", "Q5 [t-think]?"}
    for prompt, (chosen, rejected) in pairs.items():
        student = Item.objects.get(prompt=prompt, answers__isnull=True)
        assert rejected == student.response
        assert chosen == Item.objects.get(answers=student).response


def test_reasoning_rows_carry_the_teachers_reasoning_apart(project, taught, django_capture_on_commit_callbacks):
    rows = jsonl(download(build(project, django_capture_on_commit_callbacks, format="reasoning")))
    assert len(rows) == 2  # the two accepted answers with reasoning: the field, and the <think> block
    for row in rows:
        answer = Item.objects.get(answers__prompt=row["messages"][0]["content"])
        assert (row["reasoning"], row["response"]) == (answer.reasoning, answer.response)
        assert row["messages"][1]["content"] == f"<think>\n{answer.reasoning}\n</think>\n\n{answer.response}"
        assert row["reasoning"].startswith("Thought ") and "<think>" not in row["response"]


def test_several_candidates_per_prompt_pair_one_to_one(
    project, judge_server, start_run, django_capture_on_commit_callbacks
):
    """One prompt, two students rejected (A, B), the teacher answers each twice (two runs), and an SME corrects
    B: the correction takes B; each first-run answer takes the response of the item it answers while free (Ta
    takes A); the rest find every student response taken and are reported; a rejected teacher answer is never
    a rejected side."""
    use_judge(project, judge_server.base_url, model="judge-70b")
    use_teacher(project, judge_server.base_url, model="teacher-405b")
    a = Item.objects.create(project=project, external_id="a", prompt="Q?", response="Student A WRONG")
    b = Item.objects.create(project=project, external_id="b", prompt="Q?", response="Student B WRONG")
    Item.objects.create(project=project, external_id="c", prompt="Q [t-bad]?", response="Student C WRONG")
    start_run(project, use=True)
    teach(project, django_capture_on_commit_callbacks, selection="all")
    # A second run over A only: its answer is the same text as the first one's (same prompt), a duplicate.
    with django_capture_on_commit_callbacks(execute=True):
        teacher_run_create(project=project, selection="items", item_ids=[a.pk])
    Review.objects.create(item=b, decision="reject", corrected_response="The SME's answer.", origin="import")
    start_run(project, use=True)
    ta = Item.objects.filter(answers=a).first()
    training_set = build(project, django_capture_on_commit_callbacks, format="dpo")
    rows = jsonl(download(training_set))
    pairs = sorted((r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows)
    assert pairs == sorted([("The SME's answer.", "Student B WRONG"), (ta.response, "Student A WRONG")])
    assert "Student C WRONG" not in json.dumps(rows)  # C's teacher answer was rejected: no chosen for C
    assert all("WRONG" not in chosen for chosen, _ in pairs)
    unwritable = training_set.report["unwritable"]
    assert training_set.duplicates + len(unwritable) == training_set.items_selected - 2
    assert any("are taken" in entry["reason"] for entry in unwritable), training_set.report


def answer_to(
    project, student_response: str, *, answer: str, reasoning: str = "", n: int = 1, prompt: str = ""
) -> tuple[Item, Item]:
    """A student's item ``s<n>`` and a teacher's answer to it (``s<n>#teacher-1``, ``answers`` it), both
    undecided."""
    prompt = prompt or f"Q{n}?"
    student = Item.objects.create(project=project, external_id=f"s{n}", prompt=prompt, response=student_response)
    teacher = Item.objects.create(
        project=project,
        external_id=f"s{n}#teacher-1",
        prompt=prompt,
        response=answer,
        reasoning=reasoning,
        source_model="teacher-405b",
        answers=student,
    )
    return student, teacher


def test_the_reasoning_format_leaves_out_a_corrected_answer_and_says_why(project, django_capture_on_commit_callbacks):
    from judging.services import gate_apply

    _, corrected = answer_to(project, "Student WRONG", answer="It is 5.", reasoning="So it is 5.", n=1)
    _, kept = answer_to(project, "Student WRONG", answer="It is 4.", reasoning="So it is 4.", n=2)
    Review.objects.create(item=corrected, decision="accept", corrected_response="It is 4.", origin="import")
    Review.objects.create(item=kept, decision="accept", origin="import")
    gate_apply(project=project)
    training_set = build(project, django_capture_on_commit_callbacks, format="reasoning")
    rows = jsonl(download(training_set))
    assert [(r["reasoning"], r["response"]) for r in rows] == [("So it is 4.", "It is 4.")]
    assert training_set.report["unwritable"] == [
        {
            "external_id": corrected.external_id,
            "reason": "an SME corrected the response: the reasoning did not lead to the correction",
        }
    ]
    # The correction is not lost: the chat format writes it (without the reasoning).
    chat = jsonl(download(build(project, django_capture_on_commit_callbacks, format="chat")))
    assert sorted(r["messages"][-1]["content"] for r in chat) == ["It is 4.", "It is 4."]


def test_the_judge_format_writes_accepted_teacher_answers_and_rejected_student_responses(
    project, django_capture_on_commit_callbacks
):
    from judging.services import gate_apply

    student, teacher = answer_to(project, "Student WRONG", answer="It is 4.")
    Review.objects.create(item=student, decision="reject", origin="import")
    Review.objects.create(item=teacher, decision="accept", origin="import")
    gate_apply(project=project)
    rows = jsonl(download(build(project, django_capture_on_commit_callbacks, format="judge")))
    assert sorted((r["response"], r["verdict"]) for r in rows) == [("It is 4.", "accept"), ("Student WRONG", "reject")]
