"""Reading a judge's reply: the verdict (strictly), the reasoning beside it, and why a reply is no verdict.

A faulty or doubtful reply must never become an accept, so a reply is a
verdict only when all of these hold:

1. it is a chat completion with exactly one choice (one was asked for), at
   index 0, and no ``error`` beside it, whose ``finish_reason`` is
   ``"stop"`` (``"length"``: cut off, class ``truncated``; ``"content_filter"``
   or a ``message.refusal``: class ``refusal``; anything else, or none: class
   ``invalid_reply``), and whose content is at most ``CONTENT_MAX``
   characters (a reply many times longer than ``max_tokens`` allows comes
   from a server that ignored it);
2. its ``message.content``, once surrounding white space, at most one leading
   reasoning block and at most one Markdown code fence are stripped, is one
   JSON object and nothing else (no prose around it, no second object);
3. that object repeats no key at any depth, holds no ``NaN`` or ``Infinity``,
   and is valid against ``VERDICT_SCHEMA`` (JSON Schema 2020-12, checked with
   ``jsonschema``): ``verdict`` exactly ``"accept"`` or ``"reject"``,
   ``rationale`` a string, no other key.

Reasoning: a reasoning model's thoughts come in ``message.reasoning`` (vLLM
0.11 and later), ``message.reasoning_content`` (earlier vLLM, DeepSeek's
API), or, from a server without a reasoning parser, as a ``<think>…</think>``
block before the verdict (DeepSeek-R1's chat template opens the block in the
prompt, so the reply may hold only the closing tag). The block is kept as
the reasoning, beside the rationale, and is never searched for a verdict: a
draft verdict inside it counts for nothing.
"""

import json
import re
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from judging import logprobs
from judging.models import Verdict

ErrorClass = Verdict.ErrorClass

# ``verdict`` comes first, in the schema (constrained decoding follows its order), the prompt and the
# few-shot replies: the verdict's token log-probabilities are then read before any rationale can sway them
# (``judging.logprobs``), and a reply that puts it elsewhere gets no confidence.
VERDICT_SCHEMA = {
    "type": "object",
    "properties": {
        "verdict": {"type": "string", "enum": ["accept", "reject"]},
        "rationale": {"type": "string"},
    },
    "required": ["verdict", "rationale"],
    "additionalProperties": False,
}
_VALIDATOR = Draft202012Validator(VERDICT_SCHEMA)

# What is kept of a reply as evidence, and of its reasoning (characters).
RAW_REPLY_MAX = 16 * 1024
REASONING_MAX = 64 * 1024
# The longest content read as a verdict: 512 tokens are a few thousand characters, reasoning included.
CONTENT_MAX = 64 * 1024

_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"
_SURROGATE = re.compile("[\ud800-\udfff]")
_FENCE = re.compile(r"\A```(?:json|JSON)?[ \t]*\n?(.*?)\s*```\Z", re.DOTALL)


class VerdictParseError(ValueError):
    """The reply's content is not a verdict; the message says what was wrong (class ``invalid_reply``)."""


@dataclass(frozen=True)
class ParsedVerdict:
    """A verdict read from a reply: ``verdict`` is ``"accept"`` or ``"reject"``; ``reasoning`` may be empty."""

    verdict: str
    rationale: str
    reasoning: str = ""


@dataclass(frozen=True)
class Reading:
    """What one reply (a chat completion's JSON) says.

    ``verdict`` is set only when the reply is a valid verdict; otherwise
    ``problem`` says why not and ``error_class`` is one of ``ErrorClass``.
    ``confidence`` is P(accept) from the reply's token log-probabilities
    (``logprobs.reply_confidence``), None when it has none usable.
    ``content`` is the message's text as sent (or the body, when the reply is
    no chat completion), for the record; ``model`` is the model the server
    says answered (``""`` when it does not say); ``tokens_in``/``tokens_out``
    are None when the reply has no usage block.
    """

    verdict: ParsedVerdict | None
    problem: str
    error_class: str
    content: str
    reasoning: str
    model: str
    tokens_in: int | None
    tokens_out: int | None
    repairable: bool
    confidence: float | None = None


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise VerdictParseError(f"the key {key!r} appears twice in one object")
        seen.add(key)
    return dict(pairs)


def _refuse_constant(name: str):
    raise VerdictParseError(f"{name} is not valid JSON")


def split_reasoning(content: str) -> tuple[str, str]:
    """``(reasoning, rest)``: one leading ``<think>…</think>`` block (or text up to a lone ``</think>``) split
    off ``content``, which is stripped; ``("", content)`` when there is none.

    Raises VerdictParseError for a block that is opened and never closed.
    """
    text = content.strip()
    opened = text.startswith(_THINK_OPEN)
    end = text.find(_THINK_CLOSE)
    if end < 0:
        if opened:
            raise VerdictParseError("the reasoning block (<think>) is never closed: no verdict after it")
        return "", text
    if not opened and (text.startswith(("{", "```")) or _THINK_OPEN in text[:end]):
        # A reply that starts as JSON (whose strings may mention the tag), or a block that does not start the
        # reply: no reasoning block to split off.
        return "", text
    reasoning = text[len(_THINK_OPEN) if opened else 0 : end]
    return reasoning.strip(), text[end + len(_THINK_CLOSE) :].strip()


def json_part(content: str) -> tuple[str, str]:
    """``(reasoning, text)``: the reasoning block split off ``content`` and the text read as the verdict's
    JSON, its Markdown code fence (if any) removed. ``text`` is a substring of ``content``, the last
    part of it, so ``content.rfind(text)`` is where it starts.

    Raises VerdictParseError for an unclosed reasoning block, or nothing after it.
    """
    reasoning, text = split_reasoning(content)
    if not text:
        raise VerdictParseError("no verdict after the reasoning block")
    fenced = _FENCE.match(text)
    return reasoning, fenced.group(1) if fenced else text


def parse_verdict(content: str | None) -> ParsedVerdict:
    """The verdict in a reply's content, read strictly (rules 2 and 3 of the module docstring).

    Raises VerdictParseError naming the fault: an empty reply, an unclosed
    reasoning block, nothing after the reasoning, text that is not exactly
    one JSON object, a repeated key, ``NaN``, or an object that breaks the
    schema (missing, mistyped or extra keys, a verdict other than accept/reject).
    """
    if not content or not content.strip():
        raise VerdictParseError("empty reply")
    reasoning, text = json_part(content)
    try:
        data = json.loads(text, object_pairs_hook=_refuse_duplicates, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        where = "after the JSON object" if exc.msg == "Extra data" else f"at character {exc.pos + 1}"
        raise VerdictParseError(
            f"the reply is not exactly one JSON object ({exc.msg} {where}): {_shown(content)}"
        ) from None
    except RecursionError:
        raise VerdictParseError("the reply's JSON is nested too deeply") from None
    error = best_match(_VALIDATOR.iter_errors(data))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path)
        raise VerdictParseError(
            f"the reply breaks the verdict schema{f' at {where}' if where else ''}: {error.message}"
        )
    return ParsedVerdict(data["verdict"], data["rationale"], reasoning)


def _shown(text: str, limit: int = 200) -> str:
    return repr(text[:limit]) + ("…" if len(text) > limit else "")


def _usage(reply: dict, name: str) -> int | None:
    usage = reply.get("usage")
    count = usage.get(name) if isinstance(usage, dict) else None
    # A count no real reply has (over 2^31: the column's range) is no count.
    ok = isinstance(count, int) and not isinstance(count, bool) and 0 <= count < 2**31
    return count if ok else None


def read_reply(reply: Any) -> Reading:
    """Read one reply of ``POST /chat/completions`` (its JSON as parsed; any value) strictly.

    Never raises: a reply that is no verdict comes back with ``problem`` and
    ``error_class`` set. ``repairable`` says whether asking again with the
    reply shown could mend it (not for a refusal, nor for a reply that is no
    chat completion at all).
    """
    if not isinstance(reply, dict):
        body = reply if isinstance(reply, str) else _dumped(reply)
        return _fault("the reply is not a chat completion (not a JSON object)", body, {}, repairable=False)
    choices = reply.get("choices")
    if reply.get("error") is not None or reply.get("object") == "error":
        return _fault("the reply carries an error", _dumped(reply), reply, repairable=False)
    if not isinstance(choices, list) or not choices:
        return _fault("the reply has no choices", _dumped(reply), reply, repairable=False)
    if len(choices) != 1:
        return _fault(f"the reply has {len(choices)} choices; one was asked for", _dumped(reply), reply)
    choice = choices[0]
    if not isinstance(choice, dict) or choice.get("index", 0) != 0:
        return _fault("the reply's choice is not choice 0", _dumped(reply), reply, repairable=False)
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    content = message.get("content") if isinstance(message.get("content"), str) else ""
    if len(content) > CONTENT_MAX:
        problem = f"the reply is {len(content):,} characters long, far over max_tokens: its server ignored it"
        return _fault(problem, content[:RAW_REPLY_MAX], reply, repairable=False)
    reasoning = message.get("reasoning") or message.get("reasoning_content") or ""
    reasoning = reasoning if isinstance(reasoning, str) else ""
    finish = choice.get("finish_reason")
    refusal = message.get("refusal")
    if refusal:
        return _fault(f"the model refused: {str(refusal)[:200]}", content, reply, ErrorClass.REFUSAL, reasoning)
    if finish == "content_filter":
        problem = "the server's content filter stopped the reply (finish_reason=content_filter)"
        return _fault(problem, content, reply, ErrorClass.REFUSAL, reasoning)
    if finish == "length":
        problem = "the reply was cut off at max_tokens (finish_reason=length)"
        return _fault(problem, content, reply, ErrorClass.TRUNCATED, reasoning, repairable=True)
    if finish != "stop":
        problem = f"the reply did not end normally (finish_reason={finish!r}, expected 'stop')"
        return _fault(problem, content, reply, ErrorClass.INVALID_REPLY, reasoning, repairable=True)
    try:
        parsed = parse_verdict(content)
    except VerdictParseError as exc:
        return _fault(str(exc), content, reply, ErrorClass.INVALID_REPLY, reasoning, repairable=True)
    if reasoning:
        parsed = ParsedVerdict(
            parsed.verdict, parsed.rationale, "\n\n".join(r for r in (reasoning, parsed.reasoning) if r)
        )
    return Reading(
        verdict=parsed,
        problem="",
        error_class="",
        content=content,
        reasoning=parsed.reasoning,
        model=_model(reply),
        tokens_in=_usage(reply, "prompt_tokens"),
        tokens_out=_usage(reply, "completion_tokens"),
        repairable=False,
        confidence=logprobs.reply_confidence(reply, parsed.verdict),
    )


def _dumped(value: Any) -> str:
    """A reply as text for the record, whatever it holds (cut to ``RAW_REPLY_MAX``)."""
    try:
        return json.dumps(value, default=str)[:RAW_REPLY_MAX]
    except (ValueError, RecursionError):
        return repr(value)[:RAW_REPLY_MAX]


def storable(text: str, limit: int) -> str:
    """``text`` as PostgreSQL can store it and a page can show it: NUL and lone surrogates replaced by
    U+FFFD, cut to ``limit`` characters (with "…" when cut)."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = _SURROGATE.sub("\ufffd", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _model(reply: dict) -> str:
    model = reply.get("model")
    return model[:200] if isinstance(model, str) else ""


def _fault(
    problem: str,
    content: str,
    reply: dict,
    error_class: str = ErrorClass.INVALID_REPLY,
    reasoning: str = "",
    *,
    repairable: bool = False,
) -> Reading:
    return Reading(
        verdict=None,
        problem=problem,
        error_class=error_class,
        content=content,
        reasoning=reasoning,
        model=_model(reply),
        tokens_in=_usage(reply, "prompt_tokens"),
        tokens_out=_usage(reply, "completion_tokens"),
        repairable=repairable,
    )
