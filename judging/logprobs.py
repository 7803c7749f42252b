"""P(accept) from a judge reply's token log-probabilities.

The OpenAI chat API returns them when a request carries ``logprobs: true``
and ``top_logprobs: K`` (0 to 20): each choice then has
``logprobs.content``, a list with one entry per generated token,
``{"token": str, "logprob": float, "bytes": [int] | null, "top_logprobs":
[{"token", "logprob", "bytes"}, ...]}``, ``top_logprobs`` holding the K most
likely tokens at that position (OpenAI API reference, "Create chat
completion", ``logprobs``/``top_logprobs`` request fields and the
``choices[].logprobs.content`` response field). vLLM's OpenAI-compatible
server returns the same shape, also with schema-constrained output
(``response_format``): tokens the schema forbids there carry a logprob of
-9999, which counts as probability 0 here.

The reply is the verdict JSON whose first field is ``verdict``
(``replies.VERDICT_SCHEMA``; the prompt shows it first, and constrained
decoding follows the schema's order). "accept" and "reject" part ways at
their first letter, so the decision is the token that holds the first
letter of the verdict's value; at that position

    P(accept) = p(accept tokens) / (p(accept tokens) + p(reject tokens))

where a token is an "accept token" when the text generated before it, plus
it, reads ``{"verdict": "`` followed by a piece of "accept" (``"a"``,
``"acc"``, ``"accept"``, ``"accept\\","``), and likewise for reject. So
tokenisers that split the word (``"acc"`` + ``"ept"``) or glue the quote,
a space or the colon to it (``"accept``, `` "reject"``) are read alike, and
case is ignored (``"Accept"``). Tokens that are neither (white space,
a lone quote that leaves the word to a later token, anything else) are
left out of both sums.

When only one class appears among the chosen token and its
``top_logprobs``, the other class's mass is unknown but bounded: every
unlisted token is at most as likely as the least likely of the
``top_logprobs`` (they are the K most likely), and all unlisted tokens
together hold at most 1 - (the listed mass). The other class's mass is
taken as the smaller of the two bounds, which makes P(accept) the least
certain value the listed figures allow if that class were one token (split
into several unlisted pieces it could be more; the second bound caps that).
With no ``top_logprobs`` at all (K = 0, or a server that sends none) only the
second bound holds, and P(chosen verdict) = p(chosen token) / 1.

Returns None (the verdict stands, with no confidence) when the reply has no
log-probabilities, when they cannot be lined up with the reply's text
(the verdict's value not first in the object, tokens that do not spell the
reply up to the verdict), when a logprob is not a finite number ≤ 0, when
both masses are 0, or when the chosen token at that position reads as the
other verdict than the one parsed from the text (the two disagree, so
neither is trusted).
"""

import math
import re
from typing import Any

from judging import replies

ACCEPT, REJECT = "accept", "reject"
_VALUE_START = re.compile(r'\{\s*"verdict"\s*:\s*"')


# A request asks for at most 20 alternatives (LARRY_JUDGE_TOP_LOGPROBS); a reply listing more is not read.
MAX_ALTERNATIVES = 20
# Listed probabilities summing above 1 (beyond rounding, log 1.01) cannot come from one distribution.
IMPOSSIBLE_MASS = math.log(1.01)
# Both words below e**-30 (about 1e-13): no confidence can be read off such a position.
NEGLIGIBLE = -30.0


def _verdict_offsets(content: str) -> tuple[int, int] | None:
    """``(start of the JSON object, start of the verdict's value)`` in ``content``, or None when the reply
    is not an object whose first field is ``verdict``."""
    try:
        _reasoning, text = replies.json_part(content)
    except replies.VerdictParseError:
        return None
    start = content.rfind(text)
    match = _VALUE_START.match(text)
    if start < 0 or match is None:
        return None
    return start, start + match.end()


def _word(rest: str) -> str | None:
    """``"accept"`` or ``"reject"`` when ``rest`` (the text after the value's opening quote) is a piece of
    that word, or the word followed by no further letter; None otherwise."""
    rest = rest.lower()
    if not rest:
        return None
    for word in (ACCEPT, REJECT):
        if word.startswith(rest):
            return word
        if rest.startswith(word) and not rest[len(word) :][:1].isalpha():
            return word
    return None


def _logprob(entry: Any) -> tuple[str, float] | None:
    if not isinstance(entry, dict) or not isinstance(entry.get("token"), str):
        return None
    value = entry.get("logprob")
    if isinstance(value, bool) or not isinstance(value, int | float) or not value <= 0 or math.isinf(value):
        return None  # NaN fails "<= 0"; a positive logprob is no probability
    return entry["token"], float(value)


def _logsumexp(values: list[float]) -> float:
    top = max(values)
    if top == -math.inf:
        return top
    return top + math.log(sum(math.exp(v - top) for v in values))


def verdict_confidence(logprobs: Any, content: str, verdict: str) -> float | None:
    """P(accept) in [0, 1] at the verdict's position, from a choice's ``logprobs`` (the ``logprobs`` object
    of ``choices[0]``, a dict with ``content``), its message ``content`` and the ``verdict`` parsed from
    that content; None when the log-probabilities are absent or unusable (see the module docstring).
    Never raises."""
    if not isinstance(logprobs, dict) or not isinstance(logprobs.get("content"), list) or not content:
        return None
    entries = logprobs["content"]
    offsets = _verdict_offsets(content)
    if offsets is None:
        return None
    object_start, value_start = offsets
    texts = [e.get("token") if isinstance(e, dict) else None for e in entries]
    if not all(isinstance(t, str) for t in texts):
        return None
    generated = "".join(texts)
    if generated.startswith(content[:value_start]):
        shift = 0
    else:
        # The tokens hold more than the content (a server that sends the reasoning apart may count its
        # tokens too): find the object's opening by its text, the last one, as the verdict comes last.
        found = generated.rfind(content[object_start:value_start])
        if found < 0:
            return None
        shift = found - object_start
    object_start, value_start = object_start + shift, value_start + shift
    position, index = 0, 0
    while position + len(texts[index]) <= value_start:
        position += len(texts[index])
        index += 1
        if index == len(texts):
            return None
    entry = entries[index]
    if position < object_start:
        return None  # one token holds both the object's opening brace and the verdict's first letter
    before = generated[object_start:position]

    def word_of(token: str) -> str | None:
        match = _VALUE_START.match(before + token)
        return _word((before + token)[match.end() :]) if match else None

    chosen = _logprob(entry)
    if chosen is None or word_of(chosen[0]) != verdict:
        return None
    listed = [chosen]
    others = entry.get("top_logprobs") or []
    if not isinstance(others, list) or len(others) > MAX_ALTERNATIVES:
        return None  # more alternatives than any request asks for (20 at most): not a reply to trust
    top_values = []
    for other in others:
        pair = _logprob(other)
        if pair is None:
            return None
        top_values.append(pair[1])
        if pair[0] != chosen[0]:
            listed.append(pair)
    if _logsumexp([value for _token, value in listed]) > IMPOSSIBLE_MASS:
        return None  # the listed tokens hold more than all the probability there is
    mass: dict[str, list[float]] = {ACCEPT: [], REJECT: []}
    for token, value in listed:
        word = word_of(token)
        if word is not None:
            mass[word].append(value)
    for missing in (ACCEPT, REJECT):
        if not mass[missing]:
            rest = 1.0 - math.exp(_logsumexp([value for _token, value in listed]))
            bound = math.log(rest) if rest > 0 else -math.inf
            if top_values:  # the K most likely tokens: no unlisted token is more likely than the least of them
                bound = min(bound, *top_values)
            mass[missing] = [bound]
    accept, reject = _logsumexp(mass[ACCEPT]), _logsumexp(mass[REJECT])
    if accept == reject == -math.inf or max(accept, reject) < NEGLIGIBLE:
        return None  # neither word is a real candidate at the verdict's position
    if reject == -math.inf:
        return 1.0
    return 1.0 / (1.0 + math.exp(reject - accept)) if reject - accept < 700 else 0.0


def reply_confidence(reply: dict, verdict: str) -> float | None:
    """``verdict_confidence`` for a chat completion (its JSON as parsed) whose first choice was read as
    ``verdict``; None when it has no usable log-probabilities. Never raises."""
    try:
        choice = reply["choices"][0]
        return verdict_confidence(choice.get("logprobs"), choice["message"]["content"], verdict)
    except (KeyError, IndexError, TypeError, AttributeError, ValueError, OverflowError):
        return None
