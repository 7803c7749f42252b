"""Reading a teacher's answer as text (``distillation.answer_text``): reasoning told apart, whole, or refused."""

import pytest

from distillation.answer_text import REASONING_MAX, answer_parts


def test_leading_blocks_in_a_row_are_all_reasoning():
    parts = answer_parts("<think>First.</think>\n<think>Second.</think>\n\nThe answer is 4.")
    assert (parts.reasoning, parts.response, parts.error_class) == ("First.\n\nSecond.", "The answer is 4.", "")


def test_a_block_opened_by_the_chat_template_is_reasoning():
    parts = answer_parts("Two and two.</think>The answer is 4.")
    assert (parts.reasoning, parts.response) == ("Two and two.", "The answer is 4.")


@pytest.mark.parametrize(
    "content",
    [
        "<think>a <think>b</think> c</think>The answer is 4.",
        "<think>a</think>The answer is 4.</think>",
        "<think>a</think>The answer is <think>4</think>.",
    ],
)
def test_a_tag_left_in_the_answer_refuses_it(content):
    parts = answer_parts(content)
    assert (parts.response, parts.reasoning, parts.error_class) == ("", "", "invalid_reply")
    assert "think tag" in parts.error


def test_a_block_never_closed_is_no_answer():
    parts = answer_parts("<think>Still thinking when it stopped")
    assert (parts.response, parts.error_class) == ("", "empty")


def test_with_reasoning_apart_a_mention_of_the_tag_is_the_answers():
    parts = answer_parts("Write </think> to end it.", "About tags.")
    assert (parts.response, parts.reasoning) == ("Write </think> to end it.", "About tags.")


@pytest.mark.parametrize("content", ["<think>More.</think>Answer.", "</think>Answer."])
def test_reasoning_apart_and_a_block_in_the_content_as_well_is_refused(content):
    parts = answer_parts(content, "Thought.")
    assert (parts.response, parts.error_class) == ("", "invalid_reply")


@pytest.mark.parametrize("apart", ["Step 1.</think>Step 2.", "Step <think> 1."])
def test_reasoning_holding_a_tag_is_refused(apart):
    parts = answer_parts("The answer is 4.", apart)
    assert (parts.response, parts.reasoning, parts.error_class) == ("", "", "invalid_reply")


def test_reasoning_is_kept_whole_up_to_the_bound_and_refused_beyond():
    whole = answer_parts("It is 4.", "x" * REASONING_MAX)
    assert whole.reasoning == "x" * REASONING_MAX and whole.response == "It is 4."
    over = answer_parts("It is 4.", "x" * (REASONING_MAX + 1))
    assert (over.response, over.reasoning, over.error_class) == ("", "", "invalid_reply")
    assert f"{REASONING_MAX + 1:,} characters" in over.error


def test_nul_and_surrogates_are_cleaned_before_the_emptiness_check():
    assert answer_parts("\x00 \ufffd \ud800").error_class == "empty"
    assert answer_parts("<think>Why.</think>\x00").error_class == "empty"
    kept = answer_parts("It is\x00 4.", "\x00")  # a blank reasoning apart is no reasoning
    assert (kept.response, kept.reasoning) == ("It is\ufffd 4.", "")
