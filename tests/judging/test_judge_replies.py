"""A faulty or doubtful judge reply never becomes a verdict, let alone an accept (against a real HTTP server)."""

import json
import socket

import pytest
from django.urls import reverse

from annotations.models import Slot
from annotations.queue import in_sme_queue
from distillation.export import iter_chat_jsonl
from judging.models import GateDecision, Verdict
from judging.replies import VerdictParseError, parse_verdict, read_reply
from tests.conftest import make_items, use_judge


def by_response(run) -> dict[str, Verdict]:
    return {v.item.response: v for v in Verdict.objects.filter(run=run).select_related("item")}


def exported_responses(project) -> list[str]:
    return [json.loads(line)["messages"][-1]["content"] for line in iter_chat_jsonl(project)]


FAULTY = {
    "a [dup-key]": "invalid_reply",
    "b [no-rationale]": "invalid_reply",
    "c [extra-key]": "invalid_reply",
    "d [prose-accept]": "invalid_reply",
    "e [think-draft]": "invalid_reply",
    "f [content-filter]": "refusal",
}


def test_faulty_replies_that_look_like_accepts_stay_pending_and_are_never_exported(llm_project, start_run):
    make_items(llm_project, ["fine", *FAULTY])
    run = start_run(llm_project, use=True)
    assert (run.status, run.items_done, run.items_error) == ("finished", 1, len(FAULTY))
    got = by_response(run)
    assert got["fine"].verdict == "accept"
    for response in FAULTY:
        assert got[response].verdict == "", (response, got[response].error)
    outcomes = dict(GateDecision.objects.values_list("item__response", "outcome"))
    assert outcomes == {"fine": "accept", **{response: "pending" for response in FAULTY}}
    assert exported_responses(llm_project) == ["fine"]


def test_each_faulty_reply_is_an_error_of_its_class_with_the_reason(llm_project, judge_server, start_run):
    make_items(llm_project, list(FAULTY))
    run = start_run(llm_project)
    got = by_response(run)
    assert {response: v.error_class for response, v in got.items()} == FAULTY
    assert "appears twice" in got["a [dup-key]"].error
    assert "'rationale' is a required property" in got["b [no-rationale]"].error
    assert "confidence" in got["c [extra-key]"].error
    assert "not exactly one JSON object" in got["d [prose-accept]"].error
    assert "no verdict after the reasoning" in got["e [think-draft]"].error
    assert "content_filter" in got["f [content-filter]"].error
    # Each invalid reply got one repair request; a filtered (refused) one is not asked again.
    repairs = [r for r in judge_server.requests if r["messages"][-1]["content"].startswith("Your reply was not")]
    assert len(repairs) == 5
    assert all(len(got[r].attempts) == 2 for r in FAULTY if r != "f [content-filter]")
    assert len(got["f [content-filter]"].attempts) == 1


def test_a_reasoning_judge_gives_verdicts_and_its_reasoning_is_kept_beside_the_rationale(llm_project, start_run):
    make_items(llm_project, ["a [think]", "b WRONG [think]", "c [reasoning-field]"])
    run = start_run(llm_project)
    assert (run.status, run.items_done, run.items_error) == ("finished", 3, 0)
    got = by_response(run)
    assert (got["a [think]"].verdict, got["b WRONG [think]"].verdict, got["c [reasoning-field]"].verdict) == (
        "accept",
        "reject",
        "accept",
    )
    for v in got.values():
        assert v.reasoning == "The price is $4, as the context says."
        assert v.rationale.startswith("the test server said")
    assert got["a [think]"].raw_reply.startswith("<think>The price is $4")


def test_the_evidence_is_kept_raw_reply_attempts_answering_model(llm_project, judge_server, start_run):
    judge_server.httpd.answer_model = "served-model-x"
    make_items(llm_project, ["ok", "x [429-once]", "y [garbage-once]", "z [http500]"])
    run = start_run(llm_project)
    got = by_response(run)
    assert got["ok"].attempts == [{"status": 200}]
    assert got["ok"].answered_by == "served-model-x"
    assert json.loads(got["ok"].raw_reply)["verdict"] == "accept"
    assert got["x [429-once]"].attempts == [{"status": 429}, {"status": 200}]
    assert got["x [429-once]"].verdict == "accept"
    first, second = got["y [garbage-once]"].attempts
    assert first["status"] == 200 and "not exactly one JSON object" in first["problem"] and second == {"status": 200}
    # A 5xx is retried by the client (LARRY_JUDGE_MAX_RETRIES), every try on the record.
    assert [a["status"] for a in got["z [http500]"].attempts] == [500] * 4
    assert got["z [http500]"].error_class == "server_error" and "HTTP 500" in got["z [http500]"].error


def test_a_reply_without_usage_counts_its_tokens_as_unknown_not_zero(llm_project, lead, client, start_run):
    make_items(llm_project, ["ok", "x [no-usage]"])
    run = start_run(llm_project)
    got = by_response(run)
    assert (got["x [no-usage]"].tokens_in, got["x [no-usage]"].tokens_out) == (None, None)
    assert got["x [no-usage]"].verdict == "accept"
    assert run.tokens_out == got["ok"].tokens_out == 12
    client.force_login(lead)
    page = client.get(reverse("judging:run_detail", args=[llm_project.slug, run.pk])).content.decode()
    assert "1 reply without a usage block" in page


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_refused_connection_is_reported_as_refused_not_as_a_timeout(project, start_run, settings):
    settings.LARRY_JUDGE_MAX_RETRIES = 1
    use_judge(project, f"http://127.0.0.1:{_closed_port()}/v1", "m")
    make_items(project, ["ok"])
    run = start_run(project)
    verdict = Verdict.objects.get(run=run)
    assert verdict.error_class == "refused"
    assert verdict.error.startswith("refused: the judge server refused the connection")
    assert "timed out" not in verdict.error.lower()
    assert [a["error"] for a in verdict.attempts] == ["refused", "refused"]


def test_the_run_page_counts_errors_by_class_and_one_action_queues_them_for_smes(llm_project, lead, client, start_run):
    make_items(llm_project, ["ok", "a [dup-key]", "b [truncated]", "c [refusal]", "d [http500]", "e [garbage]"])
    run = start_run(llm_project, use=True)
    client.force_login(lead)
    url = reverse("judging:run_detail", args=[llm_project.slug, run.pk])
    page = client.get(url).content.decode()
    for label, n in (("invalid reply", 2), ("truncated reply", 1), ("refusal", 1), ("server error (5xx)", 1)):
        assert f'<td>{label}</td><td class="num">{n}</td>' in page, label
    assert "Queue the 5 items without a verdict for SME review" in page
    assert not llm_project.items.filter(in_sme_queue()).exists()

    answer = client.post(reverse("judging:run_control", args=[llm_project.slug, run.pk, "queue-errors"]))
    assert answer.status_code == 302
    queued = set(llm_project.items.filter(in_sme_queue()).values_list("response", flat=True))
    assert queued == {"a [dup-key]", "b [truncated]", "c [refusal]", "d [http500]", "e [garbage]"}
    assert Slot.objects.filter(item__response__in=queued, done=False).count() == 5
    # Pressed again (a double click): nothing more.
    client.post(reverse("judging:run_control", args=[llm_project.slug, run.pk, "queue-errors"]))
    assert Slot.objects.count() == 5
    # They stay pending until an SME decides them: never exported meanwhile.
    assert exported_responses(llm_project) == ["ok"]


def test_only_leads_queue_a_runs_errors(llm_project, sme, outsider, client, start_run):
    make_items(llm_project, ["a [garbage]"])
    run = start_run(llm_project)
    url = reverse("judging:run_control", args=[llm_project.slug, run.pk, "queue-errors"])
    client.force_login(sme)
    assert client.post(url).status_code == 403
    client.force_login(outsider)
    assert client.post(url).status_code == 404
    assert not llm_project.items.filter(in_sme_queue()).exists()


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ('{"verdict": "accept", "rationale": "fine"}', ("accept", "fine", "")),
        ('  \n```json\n{"verdict": "reject", "rationale": "no"}\n```\n', ("reject", "no", "")),
        (
            '<think>a "verdict": "accept" draft</think>\n{"verdict": "reject", "rationale": "x"}',
            ("reject", "x", 'a "verdict": "accept" draft'),
        ),
        ('reasoning first</think>{"verdict": "reject", "rationale": "x"}', ("reject", "x", "reasoning first")),
        ('<think>t</think>\n```json\n{"verdict": "accept", "rationale": ""}\n```', ("accept", "", "t")),
        ('{"verdict": "accept", "rationale": "the </think> tag"}', ("accept", "the </think> tag", "")),
    ],
)
def test_strict_parsing_accepts_exactly_one_object_after_one_reasoning_block_and_one_fence(reply, expected):
    parsed = parse_verdict(reply)
    assert (parsed.verdict, parsed.rationale, parsed.reasoning) == expected


@pytest.mark.parametrize(
    "reply",
    [
        "",
        "accept",
        '{"verdict": "maybe", "rationale": ""}',
        '{"verdict": "REJECT", "rationale": "x"}',
        '{"verdict": "accept", "rationale": 3}',
        '{"verdict": "accept", "rationale": {"a": 1, "a": 2}}',
        '{"verdict": "accept", "rationale": "x", "score": NaN}',
        "[1, 2]",
        '{"verdict": ',
        'Sure! {"verdict": "accept", "rationale": "x"} Hope that helps.',
        '{"verdict": "reject", "rationale": "x"}\n{"verdict": "accept", "rationale": "y"}',
        '<think>{"verdict": "accept", "rationale": "x"}',
        '<think>a</think><think>b</think>{"verdict": "accept", "rationale": "x"}',
        '```json\n```json\n{"verdict": "accept", "rationale": "x"}\n```\n```',
        "[" * 100_000,
    ],
)
def test_replies_that_are_not_exactly_a_verdict_are_refused(reply):
    with pytest.raises(VerdictParseError):
        parse_verdict(reply)


def _completion(content, finish="stop", **message):
    return {"model": "m", "choices": [{"message": {"content": content, **message}, "finish_reason": finish}]}


@pytest.mark.parametrize(
    ("reply", "error_class"),
    [
        (_completion('{"verdict": "accept", "rationale": "x"}', "content_filter"), "refusal"),
        (_completion('{"verdict": "accept", "rationale": "x"}', "length"), "truncated"),
        (_completion('{"verdict": "accept", "rationale": "x"}', None), "invalid_reply"),
        (_completion('{"verdict": "accept", "rationale": "x"}', "tool_calls"), "invalid_reply"),
        (_completion('{"verdict": "accept", "rationale": "x"}', refusal="no"), "refusal"),
        ({"choices": []}, "invalid_reply"),
        ("<html>bad gateway</html>", "invalid_reply"),
        (None, "invalid_reply"),
    ],
)
def test_only_a_reply_that_stopped_normally_is_read_as_a_verdict(reply, error_class):
    reading = read_reply(reply)
    assert reading.verdict is None and reading.error_class == error_class and reading.problem


def test_the_api_shows_the_evidence_and_queues_errors_for_leads_only(llm_project, lead, sme, client, start_run):
    make_items(llm_project, ["ok [think]", "x [dup-key]"])
    run = start_run(llm_project)
    client.force_login(lead)
    verdicts = client.get(f"/api/projects/{llm_project.slug}/runs/{run.pk}/verdicts/?error_class=invalid_reply")
    (row,) = verdicts.json()["results"]
    assert row["external_id"] == "r1" and row["error_class"] == "invalid_reply" and len(row["attempts"]) == 2
    assert "appears twice" in row["error"] and row["raw_reply"].startswith('{"verdict": "reject"')
    url = f"/api/projects/{llm_project.slug}/runs/{run.pk}/queue-errors/"
    client.force_login(sme)
    assert client.post(url).status_code == 403
    client.force_login(lead)
    assert client.post(url).json() == {"queued": 1}
    assert client.post(url).json() == {"queued": 0}
    assert list(llm_project.items.filter(in_sme_queue()).values_list("external_id", flat=True)) == ["r1"]


MALFORMED = {
    "a [bad-json-body]": "invalid_reply",
    "b [not-utf8]": "invalid_reply",
    "c [two-choices]": "invalid_reply",
    "d [index-1]": "invalid_reply",
    "e [error-beside]": "invalid_reply",
    "f [huge-content]": "invalid_reply",
}


def test_a_malformed_body_fails_its_own_item_only_and_never_becomes_an_accept(llm_project, start_run):
    """Each of these used to crash the whole chunk (the run stuck at 'running') or be read as an accept."""
    make_items(llm_project, ["fine", *MALFORMED, "g [length-lie]", "also fine"])
    run = start_run(llm_project, use=True)
    assert run.status == "finished" and (run.items_done, run.items_error) == (2, len(MALFORMED) + 1)
    got = by_response(run)
    assert {r: got[r].error_class for r in MALFORMED} == MALFORMED
    assert got["g [length-lie]"].verdict == "" and got["g [length-lie]"].error_class
    assert "3 choices" not in got["c [two-choices]"].error and "2 choices" in got["c [two-choices]"].error
    assert "100,0" in got["f [huge-content]"].error and len(got["f [huge-content]"].raw_reply) <= 16 * 1024
    assert exported_responses(llm_project) == ["fine", "also fine"]


def test_what_a_database_cannot_store_is_cleaned_not_crashed_on(llm_project, start_run):
    make_items(llm_project, ["x [nul]", "y [huge-tokens]", "fine"])
    run = start_run(llm_project)
    assert run.status == "finished" and (run.items_done, run.items_error) == (3, 0)
    got = by_response(run)
    assert got["x [nul]"].rationale == "fine\ufffd and \ufffd too" and got["x [nul]"].answered_by == "judge\ufffdmodel"
    assert got["y [huge-tokens]"].tokens_in is None  # a count no reply has is no count
    assert got["fine"].tokens_in > 0


def test_no_exception_of_a_reply_reaches_the_log_with_the_key(project, judge_server, start_run, caplog):
    import logging

    secret = "sk-larry-0123456789abcdef"
    use_judge(project, judge_server.base_url, api_key=secret)
    caplog.set_level(logging.DEBUG)
    make_items(project, ["a [length-lie]", "b [not-utf8]", "c [bad-json-body]"])
    run = start_run(project)
    assert run.status == "finished" and run.items_error == 3
    assert secret not in caplog.text
    assert all(secret not in v.error for v in Verdict.objects.filter(run=run))


def test_the_run_page_names_the_models_that_answered_and_flags_another_than_asked(
    llm_project, judge_server, lead, client, start_run
):
    judge_server.httpd.answer_model = "<b>hostile-model</b>"
    make_items(llm_project, ["ok"])
    run = start_run(llm_project)
    client.force_login(lead)
    page = client.get(reverse("judging:run_detail", args=[llm_project.slug, run.pk])).content.decode()
    assert "&lt;b&gt;hostile-model&lt;/b&gt;" in page and "<b>hostile-model" not in page
    assert "not only the model asked for (test-judge)" in page


def test_errors_are_queued_only_once_the_run_ended_and_only_those_left_pending(
    llm_project, lead, client, start_run, django_capture_on_commit_callbacks
):
    from judging.models import JudgeRun
    from judging.services import RunBusy, judge_run_queue_errors

    make_items(llm_project, ["a [garbage]", "b [garbage]"])
    old = start_run(llm_project)  # errors on both
    fixed = llm_project.items.get(response="b [garbage]")
    fixed.response = "b fine"
    fixed.save()
    start_run(llm_project, use=True)  # a later run, chosen for the gate, accepts b
    assert GateDecision.objects.get(item=fixed).outcome == "accept"
    assert judge_run_queue_errors(run=old) == 1  # a only: b is decided
    JudgeRun.objects.filter(pk=old.pk).update(status="running")
    old.refresh_from_db()
    with pytest.raises(RunBusy):
        judge_run_queue_errors(run=old)
    client.force_login(lead)
    answer = client.post(f"/api/projects/{llm_project.slug}/runs/{old.pk}/queue-errors/")
    assert answer.status_code == 409 and "still running" in answer.json()["detail"]
