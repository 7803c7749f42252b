"""A verdict's confidence, P(accept), from the judge reply's token log-probabilities, and from the local
classifier; the parser on crafted structures, then end to end through the test judge server."""

import json
import math

import pytest
from django.urls import reverse

from annotations.models import Review
from judging.backends import judge_with_local_classifier
from judging.logprobs import reply_confidence, verdict_confidence
from judging.models import Verdict
from judging.selectors import run_progress
from tests.conftest import make_items

FORBIDDEN = -9999.0  # what vLLM reports for a token the JSON schema forbids


def lp(p: float) -> float:
    return math.log(p)


def tokens(pieces: list[str], at: int, alternatives: list[tuple[str, float]]) -> dict:
    """A choice's ``logprobs`` for ``pieces`` (each with logprob -0.001 and no alternatives) whose piece
    ``at`` has ``alternatives`` ``[(token, probability or a raw logprob below -100)]``."""
    content = []
    for i, piece in enumerate(pieces):
        top = [{"token": piece, "logprob": -0.001}]
        chosen = -0.001
        if i == at:
            top = [{"token": t, "logprob": p if p < -100 else lp(p)} for t, p in alternatives]
            chosen = next((entry["logprob"] for entry in top if entry["token"] == piece), chosen)
        content.append({"token": piece, "logprob": chosen, "bytes": list(piece.encode()), "top_logprobs": top})
    return {"content": content}


ACCEPT = '{"verdict": "accept", "rationale": "right"}'
ACCEPT_PIECES = ['{"', "verdict", '":', ' "', "accept", '",', ' "', "rationale", '":', ' "', "right", '"}']


def test_p_accept_is_the_accept_mass_over_accept_and_reject_at_the_verdicts_position():
    logprobs = tokens(ACCEPT_PIECES, 4, [("accept", 0.6), ("reject", 0.2), (" ", 0.15)])
    # 0.6 / (0.6 + 0.2): the white-space token is neither.
    assert verdict_confidence(logprobs, ACCEPT, "accept") == pytest.approx(0.75)


def test_a_word_split_into_pieces_sums_every_piece_of_each_word():
    content = '{"verdict": "reject", "rationale": "no"}'
    pieces = ['{"', "verdict", '":', ' "', "rej", "ect", '",', ' "', "rationale", '":', ' "', "no", '"}']
    alternatives = [("rej", 0.5), ("r", 0.1), ("re", 0.1), ("acc", 0.15), ("a", 0.05)]
    got = verdict_confidence(tokens(pieces, 4, alternatives), content, "reject")
    assert got == pytest.approx(0.2 / 0.9)


def test_tokens_that_glue_the_quote_space_or_colon_and_other_cases_are_read_alike():
    content = '{"verdict":"accept","rationale":"ok"}'
    pieces = ['{"', "verdict", '":"acc', "ept", '","', "rationale", '":"', "ok", '"}']
    alternatives = [('":"acc', 0.5), ('": "Accept', 0.1), ('":"REJ', 0.2), ('":"reject"', 0.05), ('":"', 0.1)]
    # '":"' alone leaves the word to the next token: neither class.
    got = verdict_confidence(tokens(pieces, 2, alternatives), content, "accept")
    assert got == pytest.approx(0.6 / 0.85)


def test_a_whole_word_glued_to_its_quotes_and_comma_counts():
    content = '{"verdict": "reject", "rationale": "no"}'
    pieces = ['{"verdict":', ' "reject",', ' "rationale":', ' "no"}']
    alternatives = [(' "reject",', 0.7), (' "accept",', 0.2), (' "acceptable",', 0.1)]
    # "acceptable" is not the word accept: neither class.
    assert verdict_confidence(tokens(pieces, 1, alternatives), content, "reject") == pytest.approx(0.2 / 0.9)


def test_a_reasoning_block_or_a_code_fence_before_the_json_is_skipped():
    content = '<think>Maybe {"verdict": "reject"}? No.</think>\n```json\n{"verdict": "accept", "rationale": "x"}\n```'
    head = ["<think>", "Maybe", ' {"', "verdict", '":', ' "', "reject", '"}?', " No", ".</think>", "\n```json\n"]
    pieces = [*head, '{"', "verdict", '":', ' "', "accept", '",', ' "', "rationale", '":', ' "x"', "}\n```"]
    assert "".join(pieces) == content
    at = len(head) + 4
    logprobs = tokens(pieces, at, [("accept", 0.3), ("reject", 0.6)])
    # The draft in the reasoning is not the verdict's position: the real one is.
    assert verdict_confidence(logprobs, content, "accept") == pytest.approx(1 / 3)


def test_tokens_that_also_hold_reasoning_sent_apart_are_lined_up_on_the_content():
    pieces = ["Let", " me", " think", ".", "\n", *ACCEPT_PIECES]
    logprobs = tokens(pieces, 9, [("accept", 0.8), ("reject", 0.2)])
    assert verdict_confidence(logprobs, ACCEPT, "accept") == pytest.approx(0.8)


def test_tokens_after_the_verdict_that_do_not_spell_the_text_do_not_matter():
    content = '{"verdict": "accept", "rationale": "fine 😊"}'
    pieces = [*ACCEPT_PIECES[:10], "fine ", "bytes:\\xf0\\x9f", '"}']
    assert verdict_confidence(tokens(pieces, 4, [("accept", 0.9), ("reject", 0.05)]), content, "accept") == (
        pytest.approx(0.9 / 0.95)
    )


def test_only_one_class_listed_bounds_the_other_by_the_least_listed_token():
    logprobs = tokens(ACCEPT_PIECES, 4, [("accept", 0.8), (" ", 0.1), ("\n", 0.02)])
    # Every unlisted token is at most 0.02 likely (and all of them at most 1 - 0.92 = 0.08).
    assert verdict_confidence(logprobs, ACCEPT, "accept") == pytest.approx(0.8 / 0.82)


def test_only_one_class_listed_bounds_the_other_by_the_unlisted_mass_when_that_is_smaller():
    logprobs = tokens(ACCEPT_PIECES, 4, [("accept", 0.9), ("a", 0.09), (" ", 0.008)])
    # Unlisted tokens hold at most 1 - 0.998 = 0.002 together, less than the least listed (0.008).
    assert verdict_confidence(logprobs, ACCEPT, "accept") == pytest.approx(0.99 / 0.992)
    logprobs = tokens(ACCEPT_PIECES, 4, [("accept", 0.97), ("a", 0.025), (" ", 0.005)])
    # The listed tokens hold all the mass.
    assert verdict_confidence(logprobs, ACCEPT, "accept") == pytest.approx(1.0, abs=1e-12)


def test_tokens_the_schema_forbids_count_as_probability_zero():
    logprobs = tokens(ACCEPT_PIECES, 4, [("accept", 1.0), ("hello", FORBIDDEN), ("{", FORBIDDEN)])
    assert verdict_confidence(logprobs, ACCEPT, "accept") == 1.0
    logprobs = tokens(ACCEPT_PIECES, 4, [("accept", 0.9), ("reject", 0.1), ("hello", FORBIDDEN)])
    assert verdict_confidence(logprobs, ACCEPT, "accept") == pytest.approx(0.9)


def test_a_chosen_token_that_contradicts_the_parsed_verdict_gives_no_confidence():
    pieces = [*ACCEPT_PIECES]
    pieces[4] = "reject"  # the tokens say reject where the content says accept
    logprobs = tokens(pieces, 4, [("reject", 0.9), ("accept", 0.1)])
    assert verdict_confidence(logprobs, ACCEPT, "accept") is None


@pytest.mark.parametrize(
    "logprobs",
    [
        None,
        {},
        {"content": None},
        {"content": []},
        {"content": "accept"},
        tokens(ACCEPT_PIECES, 4, [("accept", 0.5), ("reject", float("nan"))]),
        tokens(ACCEPT_PIECES, 4, [("accept", 0.5), ("reject", 1.5)]),  # a logprob above 0
        tokens(ACCEPT_PIECES[:3], 1, [("verdict", 1.0)]),  # the tokens stop before the verdict
        {"content": [{"token": 7, "logprob": -0.1}]},
    ],
    ids=[
        "none",
        "empty",
        "null-content",
        "no-tokens",
        "not-a-list",
        "nan",
        "positive",
        "cut-short",
        "not-a-string",
    ],
)
def test_absent_or_unusable_log_probabilities_give_no_confidence(logprobs):
    assert verdict_confidence(logprobs, ACCEPT, "accept") is None


def test_with_no_alternatives_listed_the_rest_of_the_mass_bounds_the_other_class():
    logprobs = tokens(ACCEPT_PIECES, 4, [])
    logprobs["content"][4]["logprob"] = lp(0.7)  # top_logprobs 0: only the chosen token's own figure
    assert verdict_confidence(logprobs, ACCEPT, "accept") == pytest.approx(0.7)


def test_one_token_that_holds_the_reasoning_end_the_brace_and_the_first_letter_gives_no_confidence():
    content = '<think>x</think>{"verdict": "accept", "rationale": "right"}'
    pieces = ["<think>x", '</think>{"verdict": "acc', 'ept", "rationale": "right"}']
    logprobs = tokens(pieces, 1, [('</think>{"verdict": "acc', 0.6), ('</think>{"verdict": "rej', 0.4)])
    assert verdict_confidence(logprobs, content, "accept") is None


def test_a_reply_whose_verdict_is_not_its_first_field_gives_no_confidence():
    content = '{"rationale": "right", "verdict": "accept"}'
    pieces = ['{"', "rationale", '":', ' "', "right", '",', ' "', "verdict", '":', ' "', "accept", '"}']
    assert verdict_confidence(tokens(pieces, 10, [("accept", 0.9), ("reject", 0.1)]), content, "accept") is None


def test_reply_confidence_reads_a_chat_completion_and_never_raises():
    # As the openai client hands a reply over with cast_to=object: plain JSON values.
    logprobs = json.loads(json.dumps(tokens(ACCEPT_PIECES, 4, [("accept", 0.6), ("reject", 0.4)])))
    reply = {"choices": [{"index": 0, "message": {"content": ACCEPT}, "logprobs": logprobs}]}
    assert reply_confidence(reply, "accept") == pytest.approx(0.6)
    assert reply_confidence({"choices": []}, "accept") is None
    assert reply_confidence({"choices": [{"message": None}]}, "accept") is None


def test_the_schema_the_prompt_and_the_few_shot_replies_put_the_verdict_first():
    from judging import backends, prompts
    from judging.replies import VERDICT_SCHEMA

    assert next(iter(VERDICT_SCHEMA["properties"])) == "verdict"
    assert prompts.FIXED_INSTRUCTIONS.index('{"verdict"') < prompts.FIXED_INSTRUCTIONS.index('"rationale"')
    assert prompts.verdict_reply("accept", "fine")["content"].startswith('{"verdict": "accept"')
    assert backends.REPAIR_PROMPT.index('"verdict"') < backends.REPAIR_PROMPT.index('"rationale"')


# End to end: runs against the test judge server, whose log-probabilities tests craft with markers.


def confidences(run) -> dict[str, float | None]:
    return dict(Verdict.objects.filter(run=run).values_list("item__response", "confidence"))


def test_a_run_asks_for_log_probabilities_records_it_and_stores_each_verdicts_p_accept(
    llm_project, judge_server, start_run
):
    make_items(
        llm_project,
        [
            "plain",
            "plain WRONG",
            "doubtful [p-accept=0.37]",
            "split [lp-split]",
            "split WRONG [lp-split]",
            "glued [lp-glued]",
            "glued WRONG [lp-glued]",
            "one class [lp-one-class]",
            "thinking [think]",
            "fenced [fenced]",
        ],
    )
    run = start_run(llm_project)
    assert run.status == "finished" and run.config["top_logprobs"] == 5
    assert all(r["logprobs"] is True and r["top_logprobs"] == 5 for r in judge_server.requests)
    got = confidences(run)
    expected = {
        "plain": 0.9,
        "plain WRONG": 0.1,
        "doubtful [p-accept=0.37]": 0.37,  # the verdict (accept) stands; its confidence says it is doubtful
        "split [lp-split]": 0.9,
        "split WRONG [lp-split]": 0.1,
        "glued [lp-glued]": 0.9,
        "glued WRONG [lp-glued]": 0.1,
        "one class [lp-one-class]": 0.9 / 0.905,  # the reject mass bounded by the least listed token, 0.005
        "thinking [think]": 0.9,
        "fenced [fenced]": 0.9,
    }
    assert got == {response: pytest.approx(p) for response, p in expected.items()}
    verdicts = dict(Verdict.objects.filter(run=run).values_list("item__response", "verdict"))
    assert verdicts["doubtful [p-accept=0.37]"] == "accept" and verdicts["plain WRONG"] == "reject"


def test_replies_without_usable_log_probabilities_keep_their_verdict_with_no_confidence(
    llm_project, lead, client, start_run
):
    make_items(llm_project, ["plain", "missing [lp-none]", "contradicted [lp-contradict]", "broken [garbage]"])
    run = start_run(llm_project)
    got = confidences(run)
    assert got == {
        "plain": pytest.approx(0.9),
        "missing [lp-none]": None,
        "contradicted [lp-contradict]": None,
        "broken [garbage]": None,
    }
    verdicts = dict(Verdict.objects.filter(run=run).values_list("item__response", "verdict"))
    assert verdicts["missing [lp-none]"] == verdicts["contradicted [lp-contradict]"] == "accept"
    assert verdicts["broken [garbage]"] == ""  # an error, not a verdict: not counted below
    assert run_progress(run)["no_confidence"] == 2
    client.force_login(lead)
    page = client.get(reverse("judging:run_detail", args=[llm_project.slug, run.pk])).content.decode()
    assert "2 of 3 verdicts without a confidence" in page


def test_fewer_alternatives_asked_for_can_leave_one_class_unlisted(llm_project, judge_server, settings, start_run):
    settings.LARRY_JUDGE_TOP_LOGPROBS = 2
    make_items(llm_project, ["split [lp-split]"])
    run = start_run(llm_project)
    assert judge_server.requests[0]["top_logprobs"] == 2
    # Listed: "acc" 0.513 and "a" 0.342; the reject mass is at most 1 - 0.855 (less than the least listed).
    assert confidences(run) == {"split [lp-split]": pytest.approx(0.855)}


def test_top_logprobs_0_asks_for_none_and_the_run_page_says_so(
    llm_project, judge_server, settings, lead, client, start_run
):
    settings.LARRY_JUDGE_TOP_LOGPROBS = 0
    make_items(llm_project, ["a", "b WRONG"])
    run = start_run(llm_project)
    assert run.config["top_logprobs"] == 0
    assert all("logprobs" not in r and "top_logprobs" not in r for r in judge_server.requests)
    assert confidences(run) == {"a": None, "b WRONG": None}
    client.force_login(lead)
    page = client.get(reverse("judging:run_detail", args=[llm_project.slug, run.pk])).content.decode()
    assert "2 of 2 verdicts without a confidence" in page and "did not ask for log-probabilities" in page


def test_the_run_page_shows_the_confidence_beside_each_listed_verdict(llm_project, lead, client, start_run):
    items = make_items(llm_project, ["sure WRONG", "doubtful [p-accept=0.37]", "unsure [lp-none]"])
    for item in items:  # the SMEs disagree with every verdict, so each is listed among the disagreements
        Review.objects.create(item=item, decision="accept" if "WRONG" in item.response else "reject", origin="import")
    run = start_run(llm_project)
    client.force_login(lead)
    page = client.get(reverse("judging:run_detail", args=[llm_project.slug, run.pk])).content.decode()
    assert "<th>P(accept) raw</th><th>calibrated</th>" in page
    assert '<td class="num">0.100</td>' in page and '<td class="num">0.370</td>' in page
    assert '<td class="num">—</td>' in page


def test_the_api_gives_the_raw_confidence(llm_project, staff, client, start_run):
    make_items(llm_project, ["doubtful [p-accept=0.37]"])
    run = start_run(llm_project)
    client.force_login(staff)
    body = client.get(f"/api/projects/{llm_project.slug}/runs/{run.pk}/verdicts/").json()
    rows = body["results"] if isinstance(body, dict) else body
    assert [row["confidence"] for row in rows] == [pytest.approx(0.37)]


# The local classifier.


def test_the_local_classifiers_confidence_is_its_probability_of_accept(project):
    good = [f"Correct and complete answer number {i}, thank you." for i in range(8)]
    bad = [f"Wrong answer, the price is made up {i}." for i in range(8)]
    items = make_items(project, [*good, *bad, "Correct and complete answer, thank you.", "Wrong, made up price."])
    truth = {it.pk: ("accept" if it.response in good else "reject") for it in items[:16]}
    results = {r.item_id: r for r in judge_with_local_classifier(items, truth)[0]}
    unseen_good, unseen_bad = results[items[16].pk], results[items[17].pk]
    assert unseen_good.verdict == "accept" and unseen_good.confidence > 0.5
    assert unseen_bad.verdict == "reject" and unseen_bad.confidence < 0.5
    for r in results.values():
        assert 0 <= r.confidence <= 1 and (r.verdict == "accept") == (r.confidence >= 0.5)


def test_log_probabilities_no_distribution_could_give_are_no_confidence():
    """Mass above 1 (Accept and ACCEPT both at -0.01), both words all but impossible, or more alternatives than
    any request asks for: no confidence, the verdict stands alone."""
    content = '{"verdict": "accept", "rationale": "ok"}'

    def at_verdict(top: list[tuple[str, float]], chosen=("accept", -0.01)) -> dict:
        head = '{"verdict": "'
        return {
            "content": [
                {"token": head, "logprob": 0.0, "top_logprobs": []},
                {
                    "token": chosen[0],
                    "logprob": chosen[1],
                    "top_logprobs": [{"token": t, "logprob": v} for t, v in top],
                },
                {"token": content[len(head) + len(chosen[0]) :], "logprob": 0.0, "top_logprobs": []},
            ]
        }

    assert verdict_confidence(at_verdict([("accept", -0.01), ("reject", -5.0)]), content, "accept") > 0.99
    assert verdict_confidence(at_verdict([("Accept", -0.01), ("ACCEPT", -0.01)]), content, "accept") is None
    impossible = at_verdict([("accept", -800.0), ("reject", -801.0)], chosen=("accept", -800.0))
    assert verdict_confidence(impossible, content, "accept") is None
    many = at_verdict([("accept", -0.01)] + [(f"x{i}", -20.0) for i in range(10_000)])
    assert verdict_confidence(many, content, "accept") is None
