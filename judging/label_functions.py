"""Label-function kinds: a small registry keyed by ``kind``.

Each kind has a params schema (a DRF serializer, so the admin gets clear
field errors) and a compiled matcher ``text -> bool`` that says whether the
rule *rejects*. A rule never accepts; not rejecting is abstaining (Snorkel's
terms). Patterns run under RE2 (``google-re2``), which matches in time linear
in the text, so no rule can hang on a hostile response.

| kind | params | rejects when |
| --- | --- | --- |
| ``regex`` | ``pattern``, ``case_sensitive`` (false) | the pattern matches anywhere |
| ``keywords`` | ``keywords`` (list) | any keyword occurs as a whole word, any case |
| ``length`` | ``min_chars``, ``max_chars`` (either may be null) | the text is shorter or longer |
"""

from collections.abc import Callable
from dataclasses import dataclass

import re2
from rest_framework import serializers

Matcher = Callable[[str], bool]


def _re2(pattern: str, *, case_sensitive: bool) -> "re2._Regexp":
    options = re2.Options()
    options.log_errors = False
    options.case_sensitive = case_sensitive
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        message = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise serializers.ValidationError({"pattern": f"RE2 cannot compile this pattern: {message}"}) from None


class RegexParams(serializers.Serializer):
    pattern = serializers.CharField(max_length=2000)
    case_sensitive = serializers.BooleanField(default=False)

    def validate(self, attrs):
        _re2(attrs["pattern"], case_sensitive=attrs["case_sensitive"])
        return attrs


class KeywordParams(serializers.Serializer):
    keywords = serializers.ListField(
        child=serializers.CharField(max_length=200, trim_whitespace=True), max_length=10000
    )

    def validate_keywords(self, value):
        words = [w for w in value if w]
        if not words:
            raise serializers.ValidationError("give at least one keyword")
        return words


class LengthParams(serializers.Serializer):
    min_chars = serializers.IntegerField(min_value=0, required=False, allow_null=True, default=None)
    max_chars = serializers.IntegerField(min_value=1, required=False, allow_null=True, default=None)

    def validate(self, attrs):
        low, high = attrs["min_chars"], attrs["max_chars"]
        if low is None and high is None:
            raise serializers.ValidationError("give min_chars, max_chars or both")
        if low is not None and high is not None and low > high:
            raise serializers.ValidationError(f"min_chars ({low}) is greater than max_chars ({high})")
        return attrs


def _regex_matcher(params: dict) -> Matcher:
    compiled = _re2(params["pattern"], case_sensitive=params["case_sensitive"])
    return lambda text: compiled.search(text) is not None


def _keywords_matcher(params: dict) -> Matcher:
    # RE2's \b knows only ASCII word characters, so spell out a Unicode-aware boundary.
    alternation = "|".join(re2.escape(word) for word in params["keywords"])
    compiled = _re2(rf"(?:^|[^\pL\pN_])(?:{alternation})(?:$|[^\pL\pN_])", case_sensitive=False)
    return lambda text: compiled.search(text) is not None


def _length_matcher(params: dict) -> Matcher:
    low, high = params["min_chars"], params["max_chars"]

    def rejects(text: str) -> bool:
        n = len(text)
        return (low is not None and n < low) or (high is not None and n > high)

    return rejects


@dataclass(frozen=True)
class Kind:
    schema: type[serializers.Serializer]
    build: Callable[[dict], Matcher]
    help: str


KINDS: dict[str, Kind] = {
    "regex": Kind(RegexParams, _regex_matcher, '{"pattern": "(?i)call us at \\\\+?\\\\d", "case_sensitive": false}'),
    "keywords": Kind(KeywordParams, _keywords_matcher, '{"keywords": ["Dropbox", "Google Drive"]}'),
    "length": Kind(LengthParams, _length_matcher, '{"min_chars": 40, "max_chars": 8000}'),
}


def validate_params(kind: str, params) -> dict:
    """The params with defaults filled in; raises serializers.ValidationError naming the field at fault."""
    if kind not in KINDS:
        raise serializers.ValidationError({"kind": f"unknown kind {kind!r}; one of {', '.join(KINDS)}"})
    if not isinstance(params, dict):
        raise serializers.ValidationError({"params": "must be a JSON object"})
    schema = KINDS[kind].schema(data=params)
    schema.is_valid(raise_exception=True)
    return dict(schema.validated_data)


def compile_rule(kind: str, params: dict) -> Matcher:
    """A matcher ``text -> True when the rule rejects``; validates params first."""
    return KINDS[kind].build(validate_params(kind, params))
