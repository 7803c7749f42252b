"""Hostile-user findings on teacher runs (Sensei Larry), each a reproduction that fails today.

Every test is ``xfail(strict=True)`` with the finding's number (F1..): the fix of a finding turns its test
green, and strict xfail then asks for the marker to go. Replies are read by ``distillation.teacher.read_answer``
(what a real server's JSON becomes); the exports are built and parsed back.
"""

import json

import pytest
from django.urls import reverse

from annotations.models import Item, Project, Review
from distillation.models import TeacherRun
from distillation.teacher import TeacherResult, read_answer
from judging.services import gate_apply
from tests.distillation.test_teacher_exports import answer_to
from tests.distillation.test_training_sets import build, download, jsonl

pytestmark = pytest.mark.django_db


def reply(content, finish_reason="stop", **message) -> dict:
    """A chat completion as an OpenAI-compatible server sends it: one choice."""
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "teacher",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, **message},
                "finish_reason": finish_reason,
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5},
    }


def read(content, **kwargs) -> TeacherResult:
    result = TeacherResult(item_id=1)
    read_answer(reply(content, **kwargs), result)
    return result.storable()  # what answers_store writes


# Replies a response must never be made of.


@pytest.mark.parametrize(
    "content",
    [
        "I'm sorry, but I can't help with that.",
        "I cannot assist with this request.",
        "As an AI language model, I am unable to provide that information.",
    ],
)
def test_a_refusal_in_words_is_no_response(content):
    result = read(content)
    assert result.response == "" and result.error_class == "refusal"


@pytest.mark.parametrize(
    "content",
    [
        "<think>first <think>inner</think> still thinking</think>The answer is 4.",
        "<think>a</think><think>b</think>The answer is 4.",
        "<think>a</think>The answer is 4.</think>",
    ],
)
def test_think_tags_never_reach_the_response(content):
    result = read(content)
    assert "<think>" not in result.response and "</think>" not in result.response


@pytest.mark.parametrize("content", ["\x00", "\x00\x00\x00", "\ud800", " \x00 \ud800 "])
def test_a_reply_of_nul_or_lone_surrogates_is_no_response(content):
    result = read(content)
    assert result.response.replace("\ufffd", "").strip() == result.response == ""
    assert result.error_class  # counted as not stored, with its class


def test_reasoning_holding_a_closing_tag_cannot_split_the_reasoning_row():
    result = read("The answer is 4.", reasoning_content="Step 1.</think>Not the answer.\nStep 2.")
    # The reasoning format writes "<think>\n<reasoning>\n</think>\n\n<response>": a reader splitting at the
    # first </think> (as DeepSeek-R1's chat template does) must find the response after it.
    assistant = f"<think>\n{result.reasoning}\n</think>\n\n{result.response}"
    assert assistant.split("</think>", 1)[1].strip() == result.response


# Exports: what the gate did not accept never reaches a training set.


def student_and_answer(project: Project, *, answer: str, reasoning: str = "") -> tuple[Item, Item]:
    return answer_to(project, "Student WRONG", answer=answer, reasoning=reasoning, prompt="Q?")


def test_dpo_never_exports_a_rejected_teacher_answer(project, django_capture_on_commit_callbacks):
    student, teacher = student_and_answer(project, answer="Teacher says 5, wrongly.")
    Review.objects.create(item=student, decision="reject", origin="import")
    Review.objects.create(item=teacher, decision="reject", corrected_response="It is 4.", origin="import")
    gate_apply(project=project)
    assert teacher.__class__.objects.get(pk=teacher.pk).gate_decision.outcome == "reject"
    rows = jsonl(download(build(project, django_capture_on_commit_callbacks, format="dpo")))
    assert rows, "the correction makes a pair"
    # The module docstring: "a teacher's rejected answer is no student response"; the issue: rejected = the
    # student's rejected response.
    assert "Teacher says 5" not in json.dumps(rows)
    assert {r["rejected"][0]["content"] for r in rows} <= {"Student WRONG"}


def test_the_judge_format_never_exports_a_rejected_teacher_answer(project, django_capture_on_commit_callbacks):
    student, teacher = student_and_answer(project, answer="Teacher says 5, wrongly.")
    Review.objects.create(item=student, decision="reject", origin="import")
    Review.objects.create(item=teacher, decision="reject", origin="import")
    gate_apply(project=project)
    text = download(build(project, django_capture_on_commit_callbacks, format="judge")).decode()
    assert "Student WRONG" in text  # the format works
    assert "Teacher says 5" not in text  # "Nothing the teacher writes is exported unless the gate accepted it"


def test_a_reasoning_row_never_pairs_reasoning_with_a_response_it_did_not_lead_to(
    project, django_capture_on_commit_callbacks
):
    _, teacher = student_and_answer(project, answer="It is 5.", reasoning="2 + 2 is 5, so the answer is 5.")
    Review.objects.create(item=teacher, decision="accept", corrected_response="It is 4.", origin="import")
    gate_apply(project=project)
    rows = jsonl(download(build(project, django_capture_on_commit_callbacks, format="reasoning")))
    for row in rows:
        # Either the teacher's own response after its reasoning, or the correction without that reasoning.
        assert row["response"] == "It is 5." or "so the answer is 5" not in row["messages"][-1]["content"]


# Starting runs over REST.


def api(slug: str) -> str:
    return reverse("teacher-run-list", args=[slug])


@pytest.fixture
def teacher_env(settings):
    settings.LARRY_TEACHER_BASE_URL, settings.LARRY_TEACHER_MODEL = "http://127.0.0.1:9/v1", "teacher"


def test_a_second_start_does_not_ask_again_for_items_a_running_run_answers(client, project, lead, judge_server):
    from distillation.models import TeacherSettings

    # A teacher that answers the connection check a start makes (runs stay queued: on_commit is not run here).
    TeacherSettings.objects.create(project=project, base_url=judge_server.base_url, model="teacher")
    for i in range(3):
        Item.objects.create(project=project, external_id=f"p{i}", prompt=f"Q{i}?", response="")
    client.force_login(lead)
    first = client.post(api(project.slug), {"items": "missing"}, content_type="application/json")
    second = client.post(api(project.slug), {"items": "missing"}, content_type="application/json")
    assert first.status_code == 201 and first.json()["items_total"] == 3
    # Refused, or a run over nothing: each prompt is paid for (and answered) once.
    assert second.status_code == 409 or second.json()["items_total"] == 0
    assert sum(TeacherRun.objects.values_list("items_total", flat=True)) == 3


@pytest.mark.parametrize("whose", ["other project", "no such item", "a teacher answer"])
def test_item_ids_that_are_not_this_projects_originals_are_refused_by_name(client, project, lead, teacher_env, whose):
    other = Project.objects.create(slug="other", name="Other")
    foreign = Item.objects.create(project=other, external_id="b1", prompt="Secret?", response="B")
    _, answer = student_and_answer(project, answer="A teacher answer.")
    bad = {"other project": foreign.pk, "no such item": 10**9, "a teacher answer": answer.pk}[whose]
    client.force_login(lead)
    response = client.post(api(project.slug), {"item_ids": [bad]}, content_type="application/json")
    assert response.status_code == 400 and str(bad) in json.dumps(response.json())
    assert not TeacherRun.objects.exists()


def test_a_resumed_run_never_sends_a_key_to_a_url_it_was_not_set_for(
    project, judge_server, django_capture_on_commit_callbacks
):
    """The lead moves the teacher from an untrusted server (the run's URL) to a trusted one with its own key; an
    old run, resumed, goes on at the URL it recorded and takes the key of the new one with it."""
    from distillation.models import TeacherSettings
    from distillation.teacher_runs import teacher_run_cancel, teacher_run_create, teacher_run_resume

    TeacherSettings.objects.create(project=project, base_url=judge_server.base_url, model="teacher", api_key="")
    Item.objects.create(project=project, external_id="p1", prompt="Q?", response="")
    run = teacher_run_create(project=project, selection="missing")  # not started: its on_commit is dropped
    teacher_run_cancel(run=run)
    TeacherSettings.objects.filter(project=project).update(
        base_url="http://127.0.0.1:9/v1", api_key="sk-for-the-other-server"
    )
    with django_capture_on_commit_callbacks(execute=True):
        teacher_run_resume(run=run)
    assert judge_server.authorizations, "the resumed run asked its recorded URL"
    assert all("sk-for-the-other-server" not in (header or "") for header in judge_server.authorizations)


def test_prompts_without_a_response_are_never_handed_to_smes(project, sme):
    from annotations.models import SampleDraw
    from annotations.queue import next_item
    from annotations.sampling import sample_draw
    from annotations.services import review_submit

    for i in range(4):
        Item.objects.create(project=project, external_id=f"r{i}", prompt=f"Q{i}?", response=f"Answer {i}.")
        Item.objects.create(project=project, external_id=f"p{i}", prompt=f"P{i}?", response="")
    draw = sample_draw(project=project, size=8, design=SampleDraw.Design.UNIFORM, seed=0)
    shown = []
    while (item := next_item(project=project, reviewer=sme)) is not None:
        shown.append(item.response)
        review_submit(item=item, reviewer=sme, decision="accept", leased_at=item.leased_at)
    assert shown, "the SME was shown items"
    assert "" not in shown  # nothing to review: the response is missing
    assert draw.population == 4  # the population a uniform estimate is over: items with a response


def test_a_tool_call_is_no_response():
    call = {"id": "call_1", "type": "function", "function": {"name": "search", "arguments": '{"q": "Plus price"}'}}
    result = read("Let me look that up.", tool_calls=[call])
    assert result.response == "" and result.error_class


def test_answers_from_another_model_are_told_apart(
    client, project, lead, judge_server, django_capture_on_commit_callbacks
):
    from distillation.models import TeacherSettings
    from distillation.teacher_runs import teacher_run_create

    TeacherSettings.objects.create(project=project, base_url=judge_server.base_url, model="teacher-405b")
    judge_server.httpd.answer_model = "tiny-1b"  # a server that serves another model than the one asked for
    Item.objects.create(project=project, external_id="p1", prompt="Q?", response="")
    with django_capture_on_commit_callbacks(execute=True):
        teacher_run_create(project=project, selection="missing")
    answer = Item.objects.get(answers__isnull=False)
    client.force_login(lead)
    page = client.get(reverse("distillation:teacher_runs", args=[project.slug])).content.decode()
    # As a judge run's page does ("answered by another model"): the item, or the page, says who wrote it.
    assert answer.source_model == "tiny-1b" or "tiny-1b" in page


@pytest.mark.django_db(transaction=True)
def test_two_workers_storing_the_same_item_at_once_keep_one_answer_and_lose_nothing(project, monkeypatch):
    """Worker 1's lease ran out while it waited on a slow teacher (a paused process), worker 2 took the item:
    both store at once, each with another item in its batch. The judge's ``verdicts_store`` ignores the
    second verdict (``ignore_conflicts``); ``answers_store`` reads "done" before either has committed."""
    import threading

    from distillation.models import TeacherAnswer
    from distillation.teacher_runs import answers_store
    from tests.conftest import run_concurrently

    shared = Item.objects.create(project=project, external_id="shared", prompt="Q?", response="")
    own = [Item.objects.create(project=project, external_id=f"own{i}", prompt=f"Q{i}?", response="") for i in (1, 2)]
    run = TeacherRun.objects.create(project=project, model="teacher", base_url="http://t/v1", selection="missing")
    both_read = threading.Barrier(2, timeout=10)
    real = Item.objects.in_bulk

    def in_bulk(*args, **kwargs):
        both_read.wait()  # both workers have read which items are done (the read before this one); now both write
        return real(*args, **kwargs)

    monkeypatch.setattr(Item.objects, "in_bulk", in_bulk)

    def store(worker: int) -> None:
        results = [
            TeacherResult(shared.pk, response=f"Answer from worker {worker}.", finish_reason="stop"),
            TeacherResult(own[worker - 1].pk, response=f"Own answer {worker}.", finish_reason="stop"),
        ]
        answers_store(run=run, results=results)

    errors = run_concurrently(store, [(1,), (2,)])
    assert errors == []
    assert TeacherAnswer.objects.filter(run=run, item=shared).count() == 1
    assert Item.objects.filter(answers=shared).count() == 1
    assert set(TeacherAnswer.objects.filter(run=run).values_list("item_id", flat=True)) == {
        shared.pk,
        *(i.pk for i in own),
    }


@pytest.mark.parametrize("case", ["long ids with a common prefix", "an imported id ending in #teacher-<run>"])
def test_answer_ids_never_collide_with_other_items(project, judge_server, django_capture_on_commit_callbacks, case):
    from distillation.models import TeacherSettings
    from distillation.tasks import start_teacher_run
    from distillation.teacher_runs import teacher_run_create

    TeacherSettings.objects.create(project=project, base_url=judge_server.base_url, model="teacher")
    if case == "long ids with a common prefix":
        ids = ["u" * 250 + "-0001", "u" * 250 + "-0002"]  # 255 characters, the column's most
    else:
        ids = ["q1"]
    for n, external_id in enumerate(ids):
        Item.objects.create(project=project, external_id=external_id, prompt=f"Question {n}?", response="")
    run = teacher_run_create(project=project, selection="missing")  # its start (on commit) is dropped here
    if case != "long ids with a common prefix":
        # An original imported (or edited) meanwhile with the id the answer to q1 will take.
        Item.objects.create(project=project, external_id=f"q1#teacher-{run.pk}", prompt="Other?", response="Other.")
    errors = []
    try:
        with django_capture_on_commit_callbacks(execute=True):
            start_teacher_run.delay(run.pk)
    except Exception as exc:  # the in-process chunk failed
        errors.append(exc)
    run.refresh_from_db()
    assert errors == [] and run.status == "finished" and run.answers_written == len(ids)


class Canned:
    """A real HTTP server on 127.0.0.1 answering every request with ``reply(path, headers, body)``:
    ``(status, headers, body bytes)``; it keeps each request's path and headers in ``seen``."""

    def __init__(self, reply):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        canned = self
        self.seen: list[tuple[str, dict]] = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _any(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                canned.seen.append((self.path, dict(self.headers)))
                status, headers, data = reply(self.path, self.headers, body)
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _any

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        import threading

        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def canned():
    servers = []

    def make(reply):
        servers.append(Canned(reply))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def run_against(project, base_url, capture, **fields) -> TeacherRun:
    from distillation.models import TeacherSettings
    from distillation.teacher_runs import teacher_run_create

    TeacherSettings.objects.update_or_create(
        project=project, defaults={"base_url": base_url, "model": "teacher", **fields}
    )
    with capture(execute=True):
        run = teacher_run_create(project=project, selection="missing")
    run.refresh_from_db()
    return run


def test_an_answer_that_used_all_of_max_tokens_is_no_response(project, canned, django_capture_on_commit_callbacks):
    """Some OpenAI-compatible servers (proxies, older Ollama) say "stop" when they cut an answer at max_tokens;
    the usage says it: completion_tokens == max_tokens."""

    def reply(path, headers, body):
        asked = json.loads(body)["max_tokens"]
        data = {
            "model": "teacher",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "The answer is fo"}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": asked},
        }
        return 200, {}, json.dumps(data).encode()

    Item.objects.create(project=project, external_id="p1", prompt="Q?", response="")
    server = canned(reply)
    run = run_against(project, server.base_url, django_capture_on_commit_callbacks, max_tokens=64)
    assert run.status == "finished" and run.answers_written == 0


ANSWER = {
    "model": "teacher",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "An answer."}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 2},
}


def test_a_redirect_to_another_host_stores_nothing(project, canned, django_capture_on_commit_callbacks):
    """The key does not follow (httpx drops Authorization across origins), but the request does: after a 302 the
    POST is a GET without the prompt, and the other host's reply is stored as the teacher's answer to it."""
    elsewhere = canned(lambda path, headers, body: (200, {}, json.dumps(ANSWER).encode()))
    teacher = canned(lambda path, headers, body: (302, {"Location": elsewhere.base_url + "/chat/completions"}, b""))
    Item.objects.create(project=project, external_id="p1", prompt="Q?", response="")
    run = run_against(project, teacher.base_url, django_capture_on_commit_callbacks, api_key="sk-secret-1")
    assert all("authorization" not in {k.lower() for k in headers} for _, headers in elsewhere.seen)  # holds
    assert run.answers_written == 0 and not elsewhere.seen


def test_a_cut_reasoning_never_reaches_a_reasoning_row(project, canned, django_capture_on_commit_callbacks):
    """A reasoning model allowed 32K tokens (max_tokens goes to 65,536) thinks for ~100K characters: normal."""
    thought = " ".join(f"step {i} checks the sum." for i in range(5000))  # ~110K characters
    assert len(thought) > 100_000
    data = {**ANSWER}
    data["choices"] = [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "It is 4.", "reasoning_content": thought},
            "finish_reason": "stop",
        }
    ]
    server = canned(lambda path, headers, body: (200, {}, json.dumps(data).encode()))
    Item.objects.create(project=project, external_id="p1", prompt="Q?", response="")
    run = run_against(project, server.base_url, django_capture_on_commit_callbacks, max_tokens=32768)
    assert run.status == "finished"
    answers = Item.objects.filter(answers__isnull=False)
    for answer in answers:
        Review.objects.create(item=answer, decision="accept", origin="import")
    gate_apply(project=project)
    rows = jsonl(download(build(project, django_capture_on_commit_callbacks, format="reasoning")))
    assert all(row["reasoning"] == thought for row in rows), [row["reasoning"][-30:] for row in rows]


def test_an_answer_mentioning_the_closing_tag_is_kept_whole_when_the_reasoning_came_apart():
    content = "Close the block with </think> and then write the answer the user reads."
    result = read(content, reasoning_content="The user asks about reasoning tags.")
    assert result.response == content
    assert result.reasoning == "The user asks about reasoning tags."


def test_a_long_answer_within_max_tokens_is_stored(project, canned, django_capture_on_commit_callbacks):
    """max_tokens may be set up to 65,536; an answer of 17,500 tokens (~70,000 characters: a long program) is
    within 32,768 and ended normally."""
    content = "x = 1  # a line of the program\n" * 2300  # ~71,000 characters
    data = {**ANSWER, "usage": {"prompt_tokens": 10, "completion_tokens": 17_500}}
    data["choices"] = [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]
    server = canned(lambda path, headers, body: (200, {}, json.dumps(data).encode()))
    Item.objects.create(project=project, external_id="p1", prompt="Write the program.", response="")
    run = run_against(project, server.base_url, django_capture_on_commit_callbacks, max_tokens=32768)
    assert list(run.answers.values_list("error", flat=True)) == [""]
    assert Item.objects.get(answers__isnull=False).response == content.strip()


def test_acceptance_rates_are_shown_with_an_interval(client, project, lead, teacher_env):
    student, teacher = student_and_answer(project, answer="It is 4.")
    Review.objects.create(item=student, decision="reject", origin="import")
    Review.objects.create(item=teacher, decision="accept", origin="import")
    gate_apply(project=project)
    run = TeacherRun.objects.create(project=project, model="teacher", base_url="http://t/v1", selection="rejected")
    from distillation.models import TeacherAnswer

    TeacherAnswer.objects.create(run=run, item=student, answer=teacher)
    client.force_login(lead)
    page = client.get(reverse("distillation:teacher_runs", args=[project.slug])).content.decode()
    assert "1.00 vs 0.00" in page  # the rates, over n = 1 prompt
    assert "95 %" in page  # "Every figure shown to a person has its n and an interval"


def test_a_finished_runs_faults_can_be_asked_again(client, project, lead, teacher_env):
    """Transport faults after every retry end a run as finished, with answers not stored: the README's
    ``resume?retry_failed=1`` is the way to ask again, as a judge run's "re-run errors" is."""
    from distillation.models import TeacherAnswer, TeacherWork

    item = Item.objects.create(project=project, external_id="p1", prompt="Q?", response="")
    run = TeacherRun.objects.create(
        project=project, model="teacher", base_url="http://t/v1", selection="missing", status="finished"
    )
    TeacherAnswer.objects.create(run=run, item=item, error_class="server_error", error="HTTP 503 after 3 tries")
    client.force_login(lead)
    response = client.post(reverse("teacher-run-detail", args=[project.slug, run.pk]) + "resume/?retry_failed=1")
    assert response.status_code == 200, response.content
    assert TeacherWork.objects.filter(run=run, item=item).exists()
