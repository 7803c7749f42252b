"""Label-function kinds: what each rejects, and validation of their params."""

import pytest
from rest_framework.exceptions import ValidationError

from judging.label_functions import compile_rule, validate_params


def test_regex_rejects_on_a_match_and_is_case_insensitive_by_default():
    rejects = compile_rule("regex", {"pattern": r"call us at \+\d"})
    assert rejects("Please CALL US AT +1 415 555 0134")
    assert not rejects("Please write to support.")


def test_regex_can_be_case_sensitive():
    rejects = compile_rule("regex", {"pattern": "ACME", "case_sensitive": True})
    assert rejects("ACME Cloud") and not rejects("acme cloud")


def test_keywords_match_whole_words_in_any_case():
    rejects = compile_rule("keywords", {"keywords": ["Dropbox", "Google Drive"]})
    assert rejects("You could switch to dropbox instead.")
    assert rejects("Try GOOGLE DRIVE.")
    assert not rejects("Our dropboxes are physical mail slots.")


def test_keywords_are_literal_not_patterns():
    rejects = compile_rule("keywords", {"keywords": ["C++", "a.b"]})
    assert rejects("a.b is here") and not rejects("axb is here")


@pytest.mark.parametrize(
    ("params", "text", "expected"),
    [
        ({"min_chars": 10}, "Too short", True),
        ({"min_chars": 10}, "Long enough text", False),
        ({"max_chars": 5}, "Too long", True),
        ({"min_chars": 2, "max_chars": 5}, "ok", False),
    ],
)
def test_length_bounds(params, text, expected):
    assert compile_rule("length", params)(text) is expected


def test_a_catastrophic_backtracking_pattern_cannot_hang_under_re2():
    rejects = compile_rule("regex", {"pattern": "(a+)+$"})
    # Python's re would backtrack for ages on this input; RE2 answers at once.
    assert not rejects("a" * 100_000 + "!")
    assert rejects("a" * 100_000)


def test_unicode_text_is_matched():
    assert compile_rule("keywords", {"keywords": ["café"]})("Un café, por favor 😊")
    assert compile_rule("length", {"max_chars": 3})("😊😊😊😊")


@pytest.mark.parametrize(
    ("kind", "params", "field", "message"),
    [
        ("regex", {"pattern": "(?<=x)a"}, "pattern", "RE2 cannot compile"),
        ("regex", {"pattern": "(unclosed"}, "pattern", "RE2 cannot compile"),
        ("keywords", {"keywords": []}, "keywords", "at least one keyword"),
        ("keywords", {"keywords": ["", " "]}, "keywords", ""),
        ("length", {}, "non_field_errors", "min_chars, max_chars or both"),
        ("length", {"min_chars": 50, "max_chars": 10}, "non_field_errors", "greater than"),
        ("length", {"min_chars": -1}, "min_chars", ""),
        ("shell", {"cmd": "rm -rf /"}, "kind", "unknown kind"),
    ],
)
def test_bad_params_are_refused_with_a_message_naming_the_field(kind, params, field, message):
    with pytest.raises(ValidationError) as caught:
        validate_params(kind, params)
    assert field in caught.value.detail
    assert message in str(caught.value.detail[field])
