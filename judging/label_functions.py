"""Label-function kinds, and the engine that runs many rules over many items fast.

A label function (LF) rejects an item with its reason or abstains (Snorkel's
terms); it never accepts. Each kind has a params schema (a DRF serializer, so
the admin shows field errors) and contributes to a compiled ``RuleSet``:

| kind | params | rejects when the field ... |
| --- | --- | --- |
| ``regex`` | ``pattern``, ``case_sensitive`` (false) | matches the RE2 pattern anywhere |
| ``keywords`` | ``keywords`` | contains any keyword as a whole word, any case (normalised, below) |
| ``length`` | ``min``, ``max`` (either may be null), ``unit`` (chars/words) | is shorter than min or longer than max |
| ``must_contain`` | ``phrases``, ``mode`` (any/all) | lacks the phrase(s), any case (normalised, below) |
| ``pii`` | ``types`` (email, phone, card) | holds an e-mail, a phone number, a card number (Luhn-checked) |
| ``json`` | ``require_object`` (false) | is not valid JSON (or not an object, or nested too deep to parse) |
| ``curt`` | ``max_words`` (5), ``min_prompt_words`` (20) | has <= max_words words, the prompt >= min_prompt_words |

Keyword and phrase lists refuse a blank entry ("keyword 3 is blank");
surrounding white space of an entry is dropped.

Normalisation and case: keyword and must-contain rules compare text
normalised the same way on both sides, the rule's words and the item's
field: invisible format characters dropped (Unicode category Cf: the soft
hyphen, zero-width spaces and joiners, the byte-order mark, bidirectional
marks), so "Drop\u00adbox" or "Drop\u200bbox" cannot slip past "Dropbox";
then Unicode NFKC (so "été" typed with combining accents is the same as
"été" precomposed, and compatibility forms are their plain letters:
full-width letters (U+FF21...), the "fi" ligature U+FB01, a no-break space); then
``str.casefold`` (Unicode's full default case folding, so "STRASSE" finds
"Straße"). Letters of other scripts that look alike (a Cyrillic "o",
U+043E, in a Latin word) stay different letters: list such spellings as keywords of their
own, or use a regex. A keyword matches as a whole word:
the characters on either side are not letters, digits, ``_`` or combining
marks (a mark belongs to the letter before it). Case folding is the same in
every language, which surprises in Turkish and Azeri: capital dotted "İ"
(U+0130) folds to "i" plus U+0307 COMBINING DOT ABOVE, capital "I" to an
ordinary "i", and small dotless i (U+0131) stays itself. So "istanbul" does
not find "İSTANBUL", and a word written with a dotless i is not found in
capitals; list each spelling to be found (e.g. "İstanbul" and "istanbul").

Regex rules see the text exactly as stored, code point by code point, and
fold case (unless ``case_sensitive``) by RE2's simple case folding: a regex
is the tool for finding exactly what was written (a combining mark, one
form of an accent), and a pattern that wants both forms says so
(``é|e\\x{301}``). Lengths count code points as stored.

Speed: per field, every regex and PII pattern goes into one ``re2.Set``
that scans the text once; every short keyword list and must-contain phrase
into a second ``re2.Set`` over the normalised text; and every keyword of
every long keyword list into one Aho-Corasick automaton (``pyahocorasick``)
over the same normalised text, so a text is read a fixed number of times
however many rules there are. Folding costs one pass with ``str.translate``
and NFKC, which is quick on text already normalised, as most is.
RE2 matches in time linear in the text (no backtracking), so no pattern can
hang on hostile text. Rules are data: nothing in them is ever executed.
"""

import functools
import json
import math
import sys
import threading
import time
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import ahocorasick
import re2
from rest_framework import serializers

FIELDS = ("response", "prompt", "context", "reference")

PII_PATTERNS = {
    "email": r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
    # International (+CC ...) or North-American style numbers with separators.
    "phone": r"(?:\+\d{1,3}[ .-]?)?\(?\d{2,4}\)?[ .-]\d{3,4}[ .-]?\d{3,4}\b",
    # 13-19 digits, optionally grouped by spaces or dashes; confirmed by the Luhn check.
    "card": r"\b\d(?:[ -]?\d){12,18}\b",
}


def _options(case_sensitive: bool = True) -> "re2.Options":
    options = re2.Options()
    options.log_errors = False
    options.case_sensitive = case_sensitive
    return options


def _re2_message(exc: Exception) -> str:
    arg = exc.args[0] if exc.args else exc
    return arg.decode() if isinstance(arg, bytes) else str(arg)


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check of a card number given as digits only (ISO/IEC 7812-1, annex B)."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        n = int(char)
        if position % 2:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


def _has_card_number(text: str) -> bool:
    for match in _CARD_NUMBER.finditer(text):
        digits = "".join(c for c in match.group() if c.isdigit())
        if 13 <= len(digits) <= 19 and luhn_valid(digits):
            return True
    return False


_CARD_NUMBER = re2.compile(PII_PATTERNS["card"], _options())


def _words(text: str) -> int:
    return len(text.split())


def _is_word_char(char: str) -> bool:
    """A letter, digit, ``_`` or combining mark: what ``\\pL``, ``\\pN``, ``_`` and ``\\pM`` match in RE2."""
    return char.isalnum() or char == "_" or (not char.isascii() and unicodedata.category(char)[0] == "M")


@functools.cache
def _invisible() -> dict[int, None]:
    """Every format character (category Cf) of Unicode, for ``str.translate`` to drop (made once, ~0.1 s)."""
    return dict.fromkeys(c for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) == "Cf")


def fold(text: str) -> str:
    """``text`` as keyword and must-contain rules compare it: invisible format characters dropped, NFKC,
    then casefolded (see the module docstring)."""
    return unicodedata.normalize("NFKC", text.translate(_invisible())).casefold()


# ---------------------------------------------------------------- params schemas


class RegexParams(serializers.Serializer):
    pattern = serializers.CharField(max_length=2000, trim_whitespace=False)
    case_sensitive = serializers.BooleanField(default=False)

    def validate(self, attrs):
        try:
            re2.compile(attrs["pattern"], _options(attrs["case_sensitive"]))
        except re2.error as exc:
            message = f"RE2 cannot compile this pattern: {_re2_message(exc)}"
            raise serializers.ValidationError({"pattern": message}) from None
        return attrs


def _phrase_list(value: list[str], what: str) -> list[str]:
    """The entries without surrounding white space; raises ValidationError naming each blank entry (from 1),
    one of only white space or invisible characters included (it would match every text, or none)."""
    blank = [f"{what} {n} is blank" for n, phrase in enumerate(value, start=1) if not fold(phrase).strip()]
    if blank:
        raise serializers.ValidationError(blank)
    if not value:
        raise serializers.ValidationError(f"give at least one {what}")
    return [phrase.strip() for phrase in value]


class KeywordParams(serializers.Serializer):
    keywords = serializers.ListField(child=serializers.CharField(max_length=200, allow_blank=True), max_length=100_000)

    def validate_keywords(self, value):
        return _phrase_list(value, "keyword")


class LengthParams(serializers.Serializer):
    min = serializers.IntegerField(min_value=0, max_value=10_000_000, required=False, allow_null=True, default=None)
    max = serializers.IntegerField(min_value=1, max_value=10_000_000, required=False, allow_null=True, default=None)
    unit = serializers.ChoiceField(choices=["chars", "words"], default="chars")

    def validate(self, attrs):
        low, high = attrs["min"], attrs["max"]
        if low is None and high is None:
            raise serializers.ValidationError("give min, max or both")
        if low is not None and high is not None and low > high:
            raise serializers.ValidationError(f"min ({low}) is greater than max ({high})")
        return attrs


class MustContainParams(serializers.Serializer):
    phrases = serializers.ListField(child=serializers.CharField(max_length=500, allow_blank=True), max_length=1000)
    mode = serializers.ChoiceField(choices=["any", "all"], default="any")

    def validate_phrases(self, value):
        return _phrase_list(value, "phrase")


class PiiParams(serializers.Serializer):
    types = serializers.MultipleChoiceField(choices=sorted(PII_PATTERNS), default=sorted(PII_PATTERNS))

    def validate_types(self, value):
        if not value:
            raise serializers.ValidationError("pick at least one of email, phone, card")
        return sorted(value)


class JsonParams(serializers.Serializer):
    require_object = serializers.BooleanField(default=False)


class CurtParams(serializers.Serializer):
    max_words = serializers.IntegerField(min_value=0, max_value=10_000, default=5)
    min_prompt_words = serializers.IntegerField(min_value=0, max_value=1_000_000, default=20)


@dataclass(frozen=True)
class Kind:
    schema: type[serializers.Serializer]
    example: str


KINDS: dict[str, Kind] = {
    "regex": Kind(RegexParams, '{"pattern": "as an AI (language )?model", "case_sensitive": false}'),
    "keywords": Kind(KeywordParams, '{"keywords": ["Dropbox", "Google Drive"]}'),
    "length": Kind(LengthParams, '{"min": 20, "max": 8000, "unit": "chars"}'),
    "must_contain": Kind(MustContainParams, '{"phrases": ["support@acme.example"], "mode": "any"}'),
    "pii": Kind(PiiParams, '{"types": ["email", "phone", "card"]}'),
    "json": Kind(JsonParams, '{"require_object": true}'),
    "curt": Kind(CurtParams, '{"max_words": 5, "min_prompt_words": 20}'),
}


def validate_params(kind: str, params) -> dict:
    """The params with defaults filled in; raises serializers.ValidationError naming the field at fault."""
    if kind not in KINDS:
        raise serializers.ValidationError({"kind": f"unknown kind {kind!r}; one of {', '.join(KINDS)}"})
    if not isinstance(params, dict):
        raise serializers.ValidationError({"params": "must be a JSON object"})
    unknown = set(params) - set(KINDS[kind].schema().fields)
    if unknown:
        raise serializers.ValidationError({"params": f"unknown for {kind}: {', '.join(sorted(unknown))}"})
    schema = KINDS[kind].schema(data=params)
    schema.is_valid(raise_exception=True)
    return dict(schema.validated_data)


# ---------------------------------------------------------------- the engine


@dataclass(frozen=True)
class Rule:
    """One rule as the engine sees it: ``key`` identifies it in results (e.g. the LF's pk)."""

    key: object
    kind: str
    params: dict
    field: str = "response"
    task_types: tuple[str, ...] = ()


# Roles of a pattern in a field's RE2 sets.
_REJECT, _CARD, _PHRASE = 0, 1, 2
# Keyword lists this long go to Aho-Corasick; shorter ones into the RE2 set.
AHO_CORASICK_MIN_KEYWORDS = 200
# Whole words: not next to a letter, digit, _ or combining mark (which belongs to the letter before it).
_BOUNDARY_BEFORE, _BOUNDARY_AFTER = r"(?:^|[^\pL\pM\pN_])", r"(?:$|[^\pL\pM\pN_])"


@dataclass
class _FieldPlan:
    """What to compute on one field of an item; rule indexes point into RuleSet.rules."""

    patterns: list[str] = field(default_factory=list)  # matched on the text as stored
    pattern_owner: list[tuple[int, int]] = field(default_factory=list)  # (rule index, role)
    re_set: "_SetGroup | None" = None
    folded_patterns: list[str] = field(default_factory=list)  # matched on fold(text): keywords, phrases
    folded_owner: list[tuple[int, int]] = field(default_factory=list)  # (rule index, _REJECT or _PHRASE)
    folded_set: "_SetGroup | None" = None
    automaton: "ahocorasick.Automaton | None" = None
    must: list[tuple[int, str, int]] = field(default_factory=list)  # (rule index, mode, phrase count)
    lengths: list[tuple[int, float, float, bool]] = field(default_factory=list)  # (i, min, max, in words?)
    needs_words: bool = False
    curt_max_words: int = -1
    curts: list[tuple[int, int, int]] = field(default_factory=list)  # (i, max words, min prompt words)
    jsons: list[tuple[int, bool]] = field(default_factory=list)  # (i, require object)


class RuleSet:
    """Many rules compiled together; ``rejections(item)`` lists the keys of the rules that reject it.

    ``item`` is a mapping with the text fields (``response``, ``prompt``,
    ``context``, ``reference``) and optionally ``task_type``. Params are
    validated on construction; raises serializers.ValidationError for bad
    ones. Cost per item: one RE2 set scan and at most one automaton pass per
    field read, plus a few comparisons per length/curt rule.
    """

    def __init__(self, rules: Iterable[Rule]):
        self.rules = [
            Rule(r.key, r.kind, validate_params(r.kind, r.params), r.field, tuple(r.task_types)) for r in rules
        ]
        self.task_types = {i: frozenset(r.task_types) for i, r in enumerate(self.rules) if r.task_types}
        plans: dict[str, _FieldPlan] = defaultdict(_FieldPlan)
        long_lists: dict[str, dict[str, set[int]]] = defaultdict(lambda: defaultdict(set))
        for index, rule in enumerate(self.rules):
            if rule.field not in FIELDS:
                raise serializers.ValidationError(
                    {"field": f"unknown field {rule.field!r}; one of {', '.join(FIELDS)}"}
                )
            plan, params = plans[rule.field], rule.params
            if rule.kind == "regex":
                flags = "" if params["case_sensitive"] else "(?i)"
                self._add_pattern(plan, f"{flags}(?:{params['pattern']})", index, _REJECT)
            elif rule.kind == "keywords" and len(params["keywords"]) >= AHO_CORASICK_MIN_KEYWORDS:
                for word in params["keywords"]:
                    long_lists[rule.field][fold(word)].add(index)
            elif rule.kind == "keywords":
                words = "|".join(re2.escape(fold(word)) for word in params["keywords"])
                plan.folded_patterns.append(f"{_BOUNDARY_BEFORE}(?:{words}){_BOUNDARY_AFTER}")
                plan.folded_owner.append((index, _REJECT))
            elif rule.kind == "pii":
                for pii in params["types"]:
                    self._add_pattern(plan, PII_PATTERNS[pii], index, _CARD if pii == "card" else _REJECT)
            elif rule.kind == "must_contain":
                plan.must.append((index, params["mode"], len(params["phrases"])))
                for phrase in params["phrases"]:
                    plan.folded_patterns.append(re2.escape(fold(phrase)))
                    plan.folded_owner.append((index, _PHRASE))
            elif rule.kind == "length":
                low = -1 if params["min"] is None else params["min"]
                high = math.inf if params["max"] is None else params["max"]
                plan.lengths.append((index, low, high, params["unit"] == "words"))
            elif rule.kind == "curt":
                plan.curts.append((index, params["max_words"], params["min_prompt_words"]))
            elif rule.kind == "json":
                plan.jsons.append((index, params["require_object"]))
        for name, plan in plans.items():
            plan.needs_words = bool(plan.curts) or any(in_words for *_, in_words in plan.lengths)
            plan.curt_max_words = max((c[1] for c in plan.curts), default=-1)
            if plan.patterns:
                plan.re_set = _compiled_set(plan.patterns)
            if plan.folded_patterns:
                plan.folded_set = _compiled_set(plan.folded_patterns)
            if long_lists[name]:
                plan.automaton = ahocorasick.Automaton()
                for word, owners in long_lists[name].items():
                    plan.automaton.add_word(word, (len(word), tuple(owners)))
                plan.automaton.make_automaton()
        self.plans = list(plans.items())
        self._skip_by_type: dict[str, frozenset[int]] = {}

    @staticmethod
    def _add_pattern(plan: _FieldPlan, pattern: str, index: int, role: int) -> None:
        plan.patterns.append(pattern)
        plan.pattern_owner.append((index, role))

    def _skipped(self, task_type: str) -> frozenset[int]:
        """Rules limited to other task types than this one (cached per task type)."""
        skip = self._skip_by_type.get(task_type)
        if skip is None:
            skip = frozenset(i for i, types in self.task_types.items() if task_type not in types)
            self._skip_by_type[task_type] = skip
        return skip

    def rejections(self, item) -> list:
        """Keys of the rules that reject ``item``, in rule order."""
        rejected: set[int] = set()
        skip = self._skipped(item.get("task_type") or "") if self.task_types else frozenset()
        for name, plan in self.plans:
            text = item.get(name) or ""
            if plan.re_set is not None:
                for hit in plan.re_set.Match(text) or ():
                    index, role = plan.pattern_owner[hit]
                    if role == _REJECT:
                        rejected.add(index)
                    elif index not in skip and _has_card_number(text):
                        rejected.add(index)
            if plan.folded_set is not None or plan.automaton is not None:
                # Word boundaries are read from the folded text itself: folding changes lengths ("ß" is "ss").
                folded = fold(text)
            if plan.folded_set is not None:
                found: dict[int, int] = {}  # must_contain phrases seen, per rule
                for hit in plan.folded_set.Match(folded) or ():
                    index, role = plan.folded_owner[hit]
                    if role == _REJECT:
                        rejected.add(index)
                    else:
                        found[index] = found.get(index, 0) + 1
                for index, mode, count in plan.must:
                    if found.get(index, 0) < (count if mode == "all" else 1):
                        rejected.add(index)
            if plan.automaton is not None:
                for end, (length, owners) in plan.automaton.iter(folded):
                    start = end - length + 1
                    if (start == 0 or not _is_word_char(folded[start - 1])) and (
                        end + 1 == len(folded) or not _is_word_char(folded[end + 1])
                    ):
                        rejected.update(owners)
            if plan.lengths or plan.curts:
                words = len(text.split()) if plan.needs_words else 0
                chars = len(text)
                for index, low, high, in_words in plan.lengths:
                    n = words if in_words else chars
                    if n < low or n > high:
                        rejected.add(index)
                if plan.curts and words <= plan.curt_max_words:
                    prompt_words = len((item.get("prompt") or "").split())
                    for index, max_words, min_prompt_words in plan.curts:
                        if words <= max_words and prompt_words >= min_prompt_words:
                            rejected.add(index)
            if plan.jsons and any(index not in skip for index, _ in plan.jsons):
                value = _parse_json(text)
                for index, require_object in plan.jsons:
                    if value is _INVALID or (require_object and not isinstance(value, dict)):
                        rejected.add(index)
        if skip:
            rejected -= skip
        return [self.rules[i].key for i in sorted(rejected)]


class _SetGroup:
    """Patterns compiled into as few ``re2.Set`` as RE2's memory budget allows: one, unless they are many and
    long, then halves, and halves of halves. ``Match(text)`` gives indexes into the whole list, as one set
    would. Raises serializers.ValidationError when one pattern alone is too big to compile (naming it)."""

    def __init__(self, patterns: list[str]) -> None:
        self.sets: list[tuple[re2.Set, int]] = []
        self._add(patterns, 0)

    def _add(self, patterns: list[str], offset: int) -> None:
        compiled = re2.Set.SearchSet(_options())
        try:
            for pattern in patterns:
                compiled.Add(pattern)
            compiled.Compile()
        except re2.error:
            if len(patterns) == 1:
                raise serializers.ValidationError(
                    {"params": f"a pattern of this rule is too big for RE2 to compile: {patterns[0][:80]!r}…"}
                ) from None
            half = len(patterns) // 2
            self._add(patterns[:half], offset)
            self._add(patterns[half:], offset + half)
            return
        self.sets.append((compiled, offset))

    def Match(self, text: str) -> list[int]:  # re2.Set's name, so callers need not know which they have
        if len(self.sets) == 1:
            return self.sets[0][0].Match(text) or []
        return [offset + hit for compiled, offset in self.sets for hit in compiled.Match(text) or ()]


def _compiled_set(patterns: list[str]) -> _SetGroup:
    return _SetGroup(patterns)


_INVALID = object()
_JSON_STARTS = frozenset('{["-0123456789tfn')


def _parse_json(text: str):
    """The parsed value, or _INVALID; skips json.loads when the first character rules JSON out.

    JSON nested deeper than Python's recursion limit lets the standard library parse (about 1,000 levels, less
    the caller's stack) is _INVALID too: the field is untrusted text, and one item must not stop the rules."""
    stripped = text.lstrip()
    if not stripped or stripped[0] not in _JSON_STARTS:
        return _INVALID
    try:
        return json.loads(stripped)
    except (ValueError, RecursionError):
        return _INVALID


def compile_rule(kind: str, params: dict, field: str = "response") -> Callable[[str], bool]:
    """A single rule as ``text -> True when it rejects`` (for tests and the admin's checks)."""
    rules = RuleSet([Rule("rule", kind, params, field)])
    return lambda text, **other: bool(rules.rejections({field: text, **other}))


# A lead typing in the rule editor asks for a dry run at every pause; validating and compiling a rule of
# 100,000 keywords takes seconds, more than the dry run's budget, and most pauses change another field.
COMPILED_CACHE_SIZE = 8
_fresh = threading.local()


@dataclass(frozen=True)
class CompiledRule:
    """One rule validated and compiled, as ``rule_compiled`` keeps it: ``rules`` a RuleSet whose only key is
    ``"rule"`` (its ``rules[0].params`` the validated params: read, never change them, they are shared),
    ``seconds`` how long validating and compiling took (wall clock, once)."""

    rules: RuleSet
    seconds: float

    @property
    def params(self) -> dict:
        return self.rules.rules[0].params


@functools.lru_cache(maxsize=COMPILED_CACHE_SIZE)
def _compiled(kind: str, params_json: str, field: str, task_types: tuple[str, ...]) -> CompiledRule:
    started = time.perf_counter()
    rules = RuleSet([Rule("rule", kind, json.loads(params_json), field, task_types)])
    _fresh.compiled = True
    return CompiledRule(rules, time.perf_counter() - started)


def rule_compiled(
    kind: str, params: dict, field: str = "response", task_types: Iterable[str] = ()
) -> tuple[CompiledRule, bool]:
    """``(compiled, fresh)``: the rule validated and compiled, from a small LRU cache in this process
    (``COMPILED_CACHE_SIZE`` rules, keyed by kind, field, task types and the params as canonical JSON),
    ``fresh`` True when this call compiled it. Raises serializers.ValidationError for bad params (not cached),
    as ``RuleSet`` does. Params that are not JSON are compiled every time."""
    try:
        key = json.dumps(params, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError):
        started = time.perf_counter()
        rules = RuleSet([Rule("rule", kind, params, field, tuple(task_types))])
        return CompiledRule(rules, time.perf_counter() - started), True
    _fresh.compiled = False
    compiled = _compiled(kind, key, field, tuple(task_types))
    return compiled, _fresh.compiled


@functools.lru_cache(maxsize=8)
def _keyword_automaton(keywords: tuple[str, ...]) -> "ahocorasick.Automaton":
    automaton = ahocorasick.Automaton()
    for word in keywords:
        folded = fold(word)
        automaton.add_word(folded, len(folded))
    automaton.make_automaton()
    return automaton


def first_match(kind: str, params: dict, text: str) -> tuple[int, int] | None:
    """Where a rule of ``kind`` with (validated) ``params`` first finds what it rejects in ``text``:
    ``(start, end)`` in code points, for showing a lead the part that matched; None when it finds nothing
    or rejects for an absence, a length or a parse (must_contain, length, curt, json).

    Regex and PII rules search the text as stored (PII card numbers Luhn-checked, as the engine does);
    keyword rules search the folded text (``fold``) with the engine's whole-word test, and answer None
    when folding changed the text's length (the offsets would not point into ``text``)."""
    if kind == "regex":
        flags = "" if params.get("case_sensitive") else "(?i)"
        found = re2.compile(f"{flags}(?:{params['pattern']})", _options()).search(text)
        return found.span() if found else None
    if kind == "pii":
        spans = []
        for pii in params["types"]:
            for found in re2.compile(PII_PATTERNS[pii], _options()).finditer(text):
                if pii != "card" or luhn_valid("".join(c for c in found.group() if c.isdigit())):
                    spans.append(found.span())
                    break
        return min(spans) if spans else None
    if kind == "keywords":
        folded = fold(text)
        if len(folded) != len(text):
            return None
        for end, length in _keyword_automaton(tuple(params["keywords"])).iter(folded):
            start = end - length + 1
            if (start == 0 or not _is_word_char(folded[start - 1])) and (
                end + 1 == len(folded) or not _is_word_char(folded[end + 1])
            ):
                return start, end + 1
    return None
