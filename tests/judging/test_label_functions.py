"""Label-function kinds and the RuleSet engine: what each kind rejects, hostile input, validation."""

import re
import time

import pytest
from rest_framework.exceptions import ValidationError

from judging.label_functions import (
    AHO_CORASICK_MIN_KEYWORDS,
    Rule,
    RuleSet,
    compile_rule,
    luhn_valid,
    validate_params,
)

# ---------------------------------------------------------------- regex


def test_regex_rejects_on_a_match_and_is_case_insensitive_by_default():
    rejects = compile_rule("regex", {"pattern": r"call us at \+\d"})
    assert rejects("Please CALL US AT +1 415 555 0134")
    assert not rejects("Please write to support.")


def test_regex_can_be_case_sensitive():
    rejects = compile_rule("regex", {"pattern": "ACME", "case_sensitive": True})
    assert rejects("ACME Cloud") and not rejects("acme cloud")


def test_an_alternation_in_one_regex_does_not_leak_into_others():
    # Each pattern is wrapped in a group inside the shared RE2 set.
    rules = RuleSet([Rule("a", "regex", {"pattern": "foo|bar"}), Rule("b", "regex", {"pattern": "^baz"})])
    assert rules.rejections({"response": "xx baz"}) == []
    assert rules.rejections({"response": "bar"}) == ["a"]


@pytest.mark.parametrize(
    ("pattern", "text"),
    [
        ("(a+)+$", "a" * 200_000 + "!"),
        ("(a|aa)+$", "a" * 200_000 + "!"),
        ("(.*a){20}", "a" * 50_000),
        ("(x+x+)+y", "x" * 200_000),
    ],
)
def test_catastrophic_backtracking_patterns_finish_at_once_under_re2(pattern, text):
    # Python's re needs ages on these (exponential backtracking); RE2 is linear in the text.
    # The bound is generous on purpose: it tells "linear" from "exponential", not a speed goal.
    rejects = compile_rule("regex", {"pattern": pattern})
    started = time.process_time()
    rejects(text)
    assert time.process_time() - started < 5


def test_regex_with_backreferences_or_lookarounds_is_refused():
    for pattern in (r"(a)\1", "(?=a)", "(?<!a)b"):
        with pytest.raises(ValidationError, match="RE2 cannot compile"):
            validate_params("regex", {"pattern": pattern})


# ---------------------------------------------------------------- keywords


def test_keywords_match_whole_words_in_any_case():
    rejects = compile_rule("keywords", {"keywords": ["Dropbox", "Google Drive"]})
    assert rejects("You could switch to dropbox instead.")
    assert rejects("Try GOOGLE DRIVE.")
    assert rejects("Dropbox")
    assert not rejects("Our dropboxes are physical mail slots.")
    assert not rejects("mydropbox")


def test_keywords_are_literal_not_patterns():
    rejects = compile_rule("keywords", {"keywords": ["C++", "a.b", "(x"]})
    assert rejects("a.b is here") and not rejects("axb is here")
    assert rejects("I like C++ a lot") and rejects("open (x now")


def test_keywords_in_unicode_text():
    rejects = compile_rule("keywords", {"keywords": ["café", "Москва", "東京"]})
    assert rejects("Un café, por favor 😊")
    assert rejects("Столица — москва.")
    assert rejects("東京")
    assert not rejects("cafés are nice")  # not a whole word
    assert compile_rule("keywords", {"keywords": ["STRASSE"]})("Die Straße ist lang")  # casefold: ß == ss


def test_a_long_keyword_list_uses_one_automaton():
    names = [f"competitor{i}" for i in range(5000)]
    rejects = compile_rule("keywords", {"keywords": names})
    assert rejects("switch to Competitor4321 today") and not rejects("switch to competitor99999")


NFC, NFD = "\u00e9t\u00e9", "e\u0301te\u0301"  # "été" composed, and with combining accents
MANY = [f"filler{i}" for i in range(AHO_CORASICK_MIN_KEYWORDS)]  # enough keywords for the Aho-Corasick path


@pytest.mark.parametrize("filler", [[], MANY], ids=["re2", "aho-corasick"])
def test_keywords_match_text_in_either_unicode_normal_form(filler):
    for keyword, text in ((NFC, f"C'est l'{NFD}."), (NFD, f"C'est l'{NFC}."), (NFC, f"L'{NFD.upper()} !")):
        assert compile_rule("keywords", {"keywords": [keyword, *filler]})(text), (keyword, text)


@pytest.mark.parametrize("filler", [[], MANY], ids=["re2", "aho-corasick"])
def test_a_combining_mark_belongs_to_its_word(filler):
    rejects = compile_rule("keywords", {"keywords": ["cafe", *filler]})
    assert not rejects("un cafe\u0301 noir")  # "café" with a combining accent is not the word "cafe"
    assert not rejects("cafe\u0333")  # a mark with no composed form (double low line) is part of the word too
    assert rejects("un cafe noir")


@pytest.mark.parametrize("filler", [[], MANY], ids=["re2", "aho-corasick"])
def test_casefolding_is_language_independent_as_documented(filler):
    # Unicode's default case folding: Turkish dotted capital I folds to "i" + a combining dot above, and
    # dotless small i stays itself, so Turkish spellings need keywords of their own.
    dotted, dotless = "\u0130", "\u0131"

    def rejects(keyword, text):
        return compile_rule("keywords", {"keywords": [keyword, *filler]})(text)

    assert rejects(f"{dotted}stanbul", f"{dotted}STANBUL'da") and rejects(
        f"{dotless}l{dotless}k", f"{dotless}L{dotless}K"
    )
    assert not rejects("istanbul", f"{dotted}STANBUL") and not rejects(f"{dotless}l{dotless}k", "ILIK")
    assert rejects("STRASSE", "die Stra\u00dfe")


def test_must_contain_compares_normalised_and_casefolded_text():
    rejects = compile_rule("must_contain", {"phrases": [NFC, "STRASSE"], "mode": "all"})
    assert not rejects(f"L'{NFD.upper()} dans la Straße.")
    assert rejects(f"L'{NFD} seulement.")
    assert not compile_rule("must_contain", {"phrases": [NFD]})(f"un {NFC}")


def test_regex_matches_the_text_as_stored_code_point_by_code_point():
    # Decided: regexes are not normalised, so a pattern can find exactly what is written (a combining mark, a
    # decomposed accent); a pattern that wants both forms says so.
    assert compile_rule("regex", {"pattern": "e\\x{301}"})(f"l'{NFD}")
    assert not compile_rule("regex", {"pattern": "e\\x{301}"})(f"l'{NFC}")
    assert compile_rule("regex", {"pattern": f"(?:{NFC}|{NFD})"})(f"l'{NFD}")


# ---------------------------------------------------------------- length and curt


@pytest.mark.parametrize(
    ("params", "text", "expected"),
    [
        ({"min": 10}, "Too short", True),
        ({"min": 10}, "Long enough text", False),
        ({"max": 5}, "Too long", True),
        ({"min": 2, "max": 5}, "ok", False),
        ({"min": 3, "unit": "words"}, "two words", True),
        ({"max": 2, "unit": "words"}, "three words here", True),
        ({"max": 3}, "😊😊😊", False),  # characters, not bytes
        ({"max": 3}, "😊😊😊😊", True),
    ],
)
def test_length_bounds(params, text, expected):
    assert compile_rule("length", params)(text) is expected


def test_curt_reads_the_prompt_too():
    rejects = compile_rule("curt", {"max_words": 3, "min_prompt_words": 6})
    long_prompt = "How do I restore a file I deleted last week?"
    assert rejects("Check settings.", prompt=long_prompt)
    assert not rejects("Check settings.", prompt="Where?")
    assert not rejects("Open Settings, then Version history, then pick the file.", prompt=long_prompt)


# ---------------------------------------------------------------- must_contain, pii, json


def test_must_contain_any_or_all():
    any_rule = compile_rule("must_contain", {"phrases": ["support@acme.example", "help centre"]})
    all_rule = compile_rule("must_contain", {"phrases": ["thank you", "Acme"], "mode": "all"})
    assert not any_rule("Write to SUPPORT@acme.example.") and any_rule("Write to us.")
    assert not all_rule("Thank you for using Acme!") and all_rule("Thank you!")


@pytest.mark.parametrize(
    ("text", "types", "expected"),
    [
        ("mail jane.doe@gmail.com now", ["email"], True),
        ("no address here @ all", ["email"], False),
        ("call +1 415 555 0134", ["phone"], True),
        ("call (415) 555-0134", ["phone"], True),
        ("version 2.0.1 released in 2024", ["phone"], False),
        ("card 4111 1111 1111 1111", ["card"], True),
        ("card 4111-1111-1111-1111", ["card"], True),
        ("card 4111 1111 1111 1112", ["card"], False),  # fails the Luhn check
        ("order 1234567890123", ["card"], False),
        ("jane@example.org", ["phone", "card"], False),
    ],
)
def test_pii(text, types, expected):
    assert compile_rule("pii", {"types": types})(text) is expected


def test_luhn():
    assert luhn_valid("79927398713") and not luhn_valid("79927398710")
    assert luhn_valid("378282246310005")  # an Amex test number


def test_json():
    assert not compile_rule("json", {})('{"a": [1, 2]}')
    assert compile_rule("json", {})('{"a": ')
    assert not compile_rule("json", {})("[1, 2]")
    assert compile_rule("json", {"require_object": True})("[1, 2]")
    assert compile_rule("json", {})("```json\n{}\n```")


def test_json_nested_too_deep_to_parse_is_invalid_not_a_crash():
    # An imported response is untrusted: JSON nested thousands of levels used to raise RecursionError from the
    # rule, which stopped the rules (and the re-gating) of the whole project.
    deep = "[" * 5000 + "]" * 5000
    assert compile_rule("json", {})(deep) and compile_rule("json", {})("[" * 5000)
    rules = RuleSet([Rule("json", "json", {}), Rule("short", "length", {"max": 5})])
    assert rules.rejections({"response": deep}) == ["json", "short"]


# ---------------------------------------------------------------- the rule set


def test_rules_read_their_own_field_and_task_types():
    rules = RuleSet(
        [
            Rule("prompt-rule", "keywords", {"keywords": ["password"]}, field="prompt"),
            Rule("billing-only", "keywords", {"keywords": ["refund"]}, task_types=("billing",)),
            Rule("everywhere", "length", {"max": 1000}),
        ]
    )
    item = {"prompt": "Reset my password", "response": "A refund is coming.", "task_type": "account"}
    assert rules.rejections(item) == ["prompt-rule"]
    assert rules.rejections({**item, "task_type": "billing"}) == ["prompt-rule", "billing-only"]


def test_many_rules_give_the_same_answers_as_one_rule_at_a_time():
    specs = [
        ("regex", {"pattern": r"\bfree\b"}),
        ("regex", {"pattern": "ACME", "case_sensitive": True}),
        ("keywords", {"keywords": ["Dropbox", "Box"]}),
        ("length", {"min": 12}),
        ("must_contain", {"phrases": ["acme"]}),
        ("pii", {}),
        ("json", {}),
        ("curt", {"max_words": 2, "min_prompt_words": 2}),
    ]
    rules = RuleSet([Rule(i, kind, params) for i, (kind, params) in enumerate(specs)])
    texts = ["It's free!", "ACME box", "acme dropboxes", "{}", "Call +44 20 7946 0958 re acme", "ok", "Acme is fine"]
    for text in texts:
        alone = [i for i, (kind, params) in enumerate(specs) if compile_rule(kind, params)(text, prompt="two words")]
        assert rules.rejections({"response": text, "prompt": "two words"}) == alone, text


def test_text_is_never_executed_or_interpreted():
    rejects = compile_rule("keywords", {"keywords": ["{{ 7*7 }}", "__import__('os')"]})
    assert rejects("render {{ 7*7 }} please") and not rejects("49")


@pytest.mark.parametrize(
    ("kind", "params", "field", "message"),
    [
        ("regex", {"pattern": "(unclosed"}, "pattern", "RE2 cannot compile"),
        ("keywords", {"keywords": []}, "keywords", "at least one keyword"),
        ("keywords", {"keywords": ["", " "]}, "keywords", "keyword 1 is blank"),
        ("keywords", {"keywords": ["Dropbox", "Box", "   "]}, "keywords", "keyword 3 is blank"),
        ("must_contain", {"phrases": ["thanks", "\t"]}, "phrases", "phrase 2 is blank"),
        ("length", {}, "non_field_errors", "give min, max or both"),
        ("length", {"min": 50, "max": 10}, "non_field_errors", "min (50) is greater than max (10)"),
        ("length", {"min": -1}, "min", "greater than or equal to 0"),
        ("length", {"max": 5, "unit": "bytes"}, "unit", "not a valid choice"),
        ("must_contain", {"phrases": []}, "phrases", "at least one phrase"),
        ("pii", {"types": ["ssn"]}, "types", "not a valid choice"),
        ("curt", {"max_words": -2}, "max_words", "greater than or equal to 0"),
        ("length", {"min_chars": 3}, "params", "unknown for length: min_chars"),
        ("shell", {"cmd": "rm -rf /"}, "kind", "unknown kind"),
    ],
)
def test_bad_params_are_refused_with_a_message_naming_the_field(kind, params, field, message):
    with pytest.raises(ValidationError) as caught:
        validate_params(kind, params)
    assert field in caught.value.detail
    assert re.search(re.escape(message), str(caught.value.detail[field]))


def test_rules_too_many_for_one_re2_set_still_all_veto():
    """40 rules of 199 twelve-letter keywords, or 3 of 1,000 long phrases: more than RE2 compiles as one set;
    they used to stop every veto of the project (regating failed, stale hits kept)."""
    import random
    import string

    rng = random.Random(0)

    def word(n):
        return "".join(rng.choice(string.ascii_lowercase) for _ in range(n))

    lists = [[word(12) for _ in range(199)] for _ in range(40)]
    rules = RuleSet([Rule(i, "keywords", {"keywords": words}) for i, words in enumerate(lists)])
    assert rules.rejections({"response": f"please use {lists[39][5]} now"}) == [39]
    assert rules.rejections({"response": f"{lists[0][0]} and {lists[20][198]}"}) == [0, 20]
    phrases = [word(500) for _ in range(1000)]
    must = RuleSet([Rule(i, "must_contain", {"phrases": phrases, "mode": "any"}) for i in range(3)])
    assert must.rejections({"response": "nothing of it"}) == [0, 1, 2]
    assert must.rejections({"response": f"x {phrases[999]} y"}) == []


@pytest.mark.parametrize(
    "text",
    [
        "Try Drop\u00adbox today",  # a soft hyphen inside the word
        "Try Drop\u200bbox today",  # a zero-width space
        "Try \ufeffDropbox today",  # a byte-order mark before it
        "Try \uff24\uff52\uff4f\uff50\uff42\uff4f\uff58 today",  # full-width letters
        "Try\u00a0Dropbox\u00a0today",  # no-break spaces around it
    ],
)
def test_invisible_or_compatibility_characters_do_not_slip_a_text_past_a_keyword(text):
    assert compile_rule("keywords", {"keywords": ["Dropbox"]})(text)
    assert not compile_rule("must_contain", {"phrases": ["dropbox"]})(text)


def test_a_keyword_of_only_invisible_characters_is_refused_as_blank():
    from rest_framework.exceptions import ValidationError

    with pytest.raises(ValidationError, match="keyword 2 is blank"):
        validate_params("keywords", {"keywords": ["Dropbox", "\u200b\u00ad"]})
