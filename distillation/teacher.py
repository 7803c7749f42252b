"""The teacher (Sensei Larry): asking an OpenAI-compatible server for the response a prompt should have had, and
reading its answer strictly.

Where the teacher is: the project's ``TeacherSettings``, field by field over
``LARRY_TEACHER_BASE_URL``/``LARRY_TEACHER_MODEL``/``LARRY_TEACHER_API_KEY``
(``teacher_config_for``). What it is sent: the settings' system prompt (when
set), then the item's user turn exactly as the chat formats write it
(``"Context:\\n<context>\\n\\n<prompt>"``, ``distillation.export.chat_record``),
so the teacher answers what the student is trained on.

An answer is a response only when the reply is one choice that ended normally
(``finish_reason`` "stop"): cut off at ``max_tokens`` ("length", or
``usage.completion_tokens`` reaching it: class ``truncated``), refused
(``message.refusal``, ``finish_reason`` "content_filter", or a refusal in
words, ``looks_like_refusal``: ``refusal``), empty once cleaned and its
reasoning split off (``empty``), a tool call, one longer than ``max_tokens``
allows, or anything else (``invalid_reply``: a think tag left in the answer or
held by the reasoning, reasoning longer than max_tokens allows) is never
stored as a response. Reasoning comes in ``message.reasoning`` (vLLM 0.11+)
or ``message.reasoning_content`` (earlier vLLM, DeepSeek), or as leading
``<think>…</think>`` blocks (a server without a reasoning parser); it is kept
apart, whole, never in the response (``distillation.answer_text``).
Transport faults (429, 5xx, timeouts) are retried by the ``openai`` client
with backoff (``larry_web.llm``), as for the judge.
"""

import time
from dataclasses import dataclass, field, fields
from decimal import Decimal

from django.conf import settings

from annotations.models import Item, Project
from distillation import answer_text
from distillation.export import chat_record
from distillation.models import TeacherAnswer, TeacherSettings
from judging import replies
from judging.backends import (
    CONNECTION_CHECK_TIMEOUT_S,
    JudgeConfig,
    JudgeUnreachable,
    judge_connection_check,
    redact,
)
from larry_web import llm
from larry_web.llm import RateLimits, estimate_tokens

ErrorClass = TeacherAnswer.ErrorClass
# The most characters one token can stand for, as a bound: a reply longer than max_tokens times this was not held
# to max_tokens by its server. Real tokenizers' longest tokens are runs of spaces or of a repeated character (a few
# dozen characters at most); an answer averages about 4 characters a token.
CHARS_PER_TOKEN_MAX = 32
MAX_TOKENS_MAX = 65_536  # the most ``TeacherSettings.max_tokens`` may ask for
RESPONSE_MAX = MAX_TOKENS_MAX * CHARS_PER_TOKEN_MAX  # characters of a response stored, whatever a reply holds
ERROR_MAX = 2000

# A refusal written as an answer (``finish_reason`` "stop", no ``message.refusal``): a short answer (at most
# ``REFUSAL_MAX_CHARS``) that opens, after an optional apology or "As an AI...", with one of ``REFUSAL_CORES``
# followed by one of ``REFUSAL_VERBS`` ("I'm sorry, but I can't help with that.", "I cannot assist with this
# request.", "As an AI language model, I am unable to provide that information."). Deliberately narrow: an answer
# that merely mentions what it cannot do further on, or a long one, is kept. See ``looks_like_refusal``.
REFUSAL_MAX_CHARS = 500
REFUSAL_LEADS = (
    "as an ai language model",
    "as an ai assistant",
    "as an ai model",
    "as an ai",
    "i'm sorry",
    "i am sorry",
    "i apologize",
    "i apologise",
    "sorry",
    "unfortunately",
)
REFUSAL_CORES = (
    "i can't",
    "i cannot",
    "i can not",
    "i won't be able to",
    "i will not be able to",
    "i won't",
    "i will not",
    "i'm unable to",
    "i am unable to",
    "i'm not able to",
    "i am not able to",
    "i must decline to",
    "i must respectfully decline to",
)
REFUSAL_VERBS = (
    "help with",
    "help you with",
    "assist",
    "provide",
    "comply",
    "fulfil",
    "answer",
    "share",
    "do that",
    "do this",
    "support",
    "create",
    "write",
    "generate",
    "give",
    "engage",
    "complete",
    "discuss",
    "continue",
    "offer",
    "respond",
)


def looks_like_refusal(text: str) -> bool:
    """Whether an answer is a refusal in words: at most ``REFUSAL_MAX_CHARS`` characters, opening (case,
    curly apostrophes and leading quotes or markdown aside) with an optional ``REFUSAL_LEADS`` phrase, then
    ``REFUSAL_CORES`` and ``REFUSAL_VERBS`` ("I'm sorry, but I can't" + "help with"). Plain string checks,
    kept here only; the README's teacher section lists them."""
    t = " ".join(text.replace("\u2019", "'").lower().split()).lstrip("\"'*_#> ")
    if not t or len(t) > REFUSAL_MAX_CHARS:
        return False
    for lead in REFUSAL_LEADS:
        if t.startswith(lead):
            t = t[len(lead) :].lstrip(" ,.!:;-\u2014").removeprefix("but ").lstrip()
            break
    for core in REFUSAL_CORES:
        if t.startswith(core):
            rest = t[len(core) :].lstrip().removeprefix("be able to ")
            return rest.startswith(REFUSAL_VERBS)
    return False


class NoTeacher(ValueError):
    """The project has no teacher: neither its settings nor ``LARRY_TEACHER_*`` give a URL and a model."""


class TeacherUnreachable(RuntimeError):
    """The teacher did not answer a connection check; the message names the URL and the fault (never the key)."""


@dataclass(frozen=True)
class TeacherConfig:
    """Where the teacher is and how it is asked; ``api_key`` is sent to it and stored nowhere (not in the repr,
    not in a run's snapshot, redacted from every reply kept)."""

    base_url: str
    model: str
    api_key: str = field(repr=False)
    system_prompt: str = ""
    temperature: float = 0.7
    max_tokens: int = 1024
    ask_reasoning: bool = False
    max_in_flight: int = 8
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    price_in: Decimal = Decimal(0)
    price_out: Decimal = Decimal(0)

    def snapshot(self) -> dict:
        """What a run records (everything that determines the answers, and the prices; never the key, only
        whether there was one)."""
        return {
            "base_url": self.base_url,
            "model": self.model,
            "system_prompt": self.system_prompt,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "ask_reasoning": self.ask_reasoning,
            "max_in_flight": self.max_in_flight,
            "requests_per_minute": self.requests_per_minute,
            "tokens_per_minute": self.tokens_per_minute,
            "price_in_per_million": str(self.price_in),
            "price_out_per_million": str(self.price_out),
            "api_key_set": bool(self.api_key),  # whether a key went with it (``larry_web.work.run_api_key``)
        }


def teacher_config_for(project: Project) -> TeacherConfig:
    """The project's teacher: its ``TeacherSettings`` (defaults when it has none), an empty URL or model taken
    from ``LARRY_TEACHER_*``; an empty key from ``LARRY_TEACHER_API_KEY`` only when the URL is the environment's
    too (a key is sent only to the URL it was set for). Raises NoTeacher when no URL or no model is left."""
    row = TeacherSettings.objects.filter(project=project).first() or TeacherSettings(project=project)
    config = TeacherConfig(
        base_url=row.base_url or settings.LARRY_TEACHER_BASE_URL,
        model=row.model or settings.LARRY_TEACHER_MODEL,
        # The environment's key goes to the environment's URL only: a project's own URL gets its own key or none.
        api_key=row.api_key if row.base_url else (row.api_key or settings.LARRY_TEACHER_API_KEY),
        system_prompt=row.system_prompt,
        temperature=row.temperature,
        max_tokens=row.max_tokens,
        ask_reasoning=row.ask_reasoning,
        max_in_flight=row.max_in_flight,
        requests_per_minute=row.requests_per_minute,
        tokens_per_minute=row.tokens_per_minute,
        price_in=row.price_in,
        price_out=row.price_out,
    )
    if not config.base_url or not config.model:
        raise NoTeacher(
            f"project {project.slug} has no teacher: set its teacher settings (admin) or LARRY_TEACHER_BASE_URL "
            "and LARRY_TEACHER_MODEL"
        )
    return config


def teacher_connection_check(config: TeacherConfig, *, timeout_s: float = CONNECTION_CHECK_TIMEOUT_S) -> list[str]:
    """Ask the teacher for its model list (``GET <base_url>/models``), as the judge is asked
    (``judging.backends.judge_connection_check``: no redirect followed, so the key never goes elsewhere; a model
    it does not serve, a refused key, a timeout are faults). Returns the models it serves (``[]`` when it gives
    no OpenAI model list); raises TeacherUnreachable naming the URL and the fault."""
    try:
        return judge_connection_check(
            JudgeConfig(config.base_url, config.model, config.api_key), timeout_s=timeout_s, who="teacher"
        )
    except JudgeUnreachable as exc:
        raise TeacherUnreachable(str(exc)) from None


REASONING_REQUEST = (
    "Think the question through step by step inside <think>...</think> first; then, after </think>, write only "
    "the answer the user should read."
)


def messages_for(item: Item, run_settings: dict) -> list[dict[str, str]]:
    """The chat messages for one item: the system prompt (with the request to reason first, when the run asks
    for reasoning), then the user turn as the chat formats write it."""
    user = chat_record(prompt=item.prompt, context=item.context, response="")["messages"][0]["content"]
    system = run_settings.get("system_prompt") or ""
    if run_settings.get("ask_reasoning"):
        system = f"{system}\n\n{REASONING_REQUEST}".strip()
    return (
        [{"role": "system", "content": system}, {"role": "user", "content": user}]
        if system
        else [{"role": "user", "content": user}]
    )


@dataclass
class TeacherResult:
    """One item's outcome: ``response`` set when the teacher answered; else ``error_class`` and ``error``."""

    item_id: int
    response: str = ""
    reasoning: str = ""
    finish_reason: str = ""
    tokens_in: int | None = 0
    tokens_out: int | None = 0
    latency_ms: int = 0
    error_class: str = ""
    error: str = ""
    attempts: list[dict] = field(default_factory=list)
    answered_by: str = ""

    def storable(self) -> "TeacherResult":
        """Texts cut to size and cleaned of what PostgreSQL cannot store (a reply may hold anything)."""
        clean = replies.storable
        self.response = clean(self.response, RESPONSE_MAX)
        self.reasoning = clean(self.reasoning, answer_text.REASONING_MAX)
        if not self.error_class and answer_text.is_blank(self.response):  # empty once cleaned: no response
            self.response, self.error_class, self.error = "", ErrorClass.EMPTY, "the teacher's answer is empty"
        self.error = clean(self.error, ERROR_MAX)
        self.answered_by = clean(self.answered_by, 200)
        self.finish_reason = clean(self.finish_reason, 40)
        self.attempts = [{k: clean(v, 300) if isinstance(v, str) else v for k, v in a.items()} for a in self.attempts]
        return self


def read_answer(reply, result: TeacherResult, *, max_tokens: int | None = None) -> None:
    """Fill ``result`` from one reply of ``POST /chat/completions`` (its JSON, any value); never raises.

    ``max_tokens`` is what the request asked for: a reply whose ``usage.completion_tokens`` reached it was cut
    there (``truncated``), whatever its ``finish_reason`` says (some proxies and servers say "stop"), and one
    longer than ``max_tokens * CHARS_PER_TOKEN_MAX`` characters was not held to it (``invalid_reply``)."""
    if not isinstance(reply, dict):
        result.error_class, result.error = ErrorClass.INVALID_REPLY, "the reply is not a chat completion"
        return
    usage = reply.get("usage") if isinstance(reply.get("usage"), dict) else {}
    for name, key in (("tokens_in", "prompt_tokens"), ("tokens_out", "completion_tokens")):
        count = usage.get(key)
        ok = isinstance(count, int) and not isinstance(count, bool) and 0 <= count < 2**31
        setattr(result, name, count if ok else None)
    result.answered_by = reply.get("model") if isinstance(reply.get("model"), str) else ""
    choices = reply.get("choices")
    if reply.get("error") is not None or not isinstance(choices, list) or len(choices) != 1:
        result.error_class, result.error = ErrorClass.INVALID_REPLY, "the reply is not one choice without an error"
        return
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    content = message.get("content") if isinstance(message.get("content"), str) else ""
    reasoning = message.get("reasoning") or message.get("reasoning_content") or ""
    reasoning = reasoning if isinstance(reasoning, str) else ""
    finish = choice.get("finish_reason")
    result.finish_reason = finish if isinstance(finish, str) else ""
    limit = RESPONSE_MAX if max_tokens is None else min(RESPONSE_MAX, max_tokens * CHARS_PER_TOKEN_MAX)
    if message.get("tool_calls") or message.get("function_call") or finish in ("tool_calls", "function_call"):
        result.error_class = ErrorClass.INVALID_REPLY
        result.error = f"the teacher called a tool instead of answering (finish_reason={finish!r})"
    elif message.get("refusal"):
        result.error_class, result.error = ErrorClass.REFUSAL, f"the teacher refused: {str(message['refusal'])[:200]}"
    elif finish == "content_filter":
        result.error_class = ErrorClass.REFUSAL
        result.error = "the server's content filter stopped the answer (finish_reason=content_filter)"
    elif finish == "length":
        result.error_class = ErrorClass.TRUNCATED
        result.error = "the answer was cut off at max_tokens (finish_reason=length)"
    elif finish != "stop":
        result.error_class = ErrorClass.INVALID_REPLY
        result.error = f"the answer did not end normally (finish_reason={finish!r}, expected 'stop')"
    elif max_tokens is not None and result.tokens_out is not None and result.tokens_out >= max_tokens:
        result.error_class = ErrorClass.TRUNCATED
        result.error = (
            f"the answer used {result.tokens_out:,} completion tokens, all of max_tokens ({max_tokens:,}): cut "
            "off there, though its finish_reason says 'stop'"
        )
    elif len(content) > limit:
        result.error_class = ErrorClass.INVALID_REPLY
        result.error = (
            f"the answer is {len(content):,} characters long, over {CHARS_PER_TOKEN_MAX} characters for each of "
            "its max_tokens: its server ignored max_tokens"
        )
    if result.error_class:
        result.reasoning = reasoning
        return
    parts = answer_text.answer_parts(content, reasoning)
    result.response, result.reasoning, result.error_class, result.error = (
        parts.response,
        parts.reasoning,
        parts.error_class,
        parts.error,
    )
    if not result.error_class and looks_like_refusal(result.response):
        result.error_class = ErrorClass.REFUSAL
        result.error = f"the teacher refused in words: {result.response.strip()[:200]}"
        result.response = ""


async def ask_teacher(
    client, *, model: str, item: Item, run_settings: dict, limits: RateLimits | None = None
) -> TeacherResult:
    """Ask the teacher for one item's response; never raises: failures come back as ``error_class``/``error``.

    ``run_settings`` is the run's snapshot (``TeacherConfig.snapshot``). The
    ``openai`` client retries 429s, 5xx and timeouts with backoff; every try is
    noted in ``attempts``. A timeout leaves the tokens unknown (None).
    """
    started = time.perf_counter()
    result = TeacherResult(item.pk)
    token = llm.exchanges.set(result.attempts)
    messages = messages_for(item, run_settings)
    body = {
        "model": model,
        "messages": messages,
        "temperature": run_settings["temperature"],
        "max_tokens": run_settings["max_tokens"],
    }
    try:
        tokens = estimate_tokens(messages, run_settings["max_tokens"])
        reply, error_class, error = await llm.post_chat(
            client, body, limits=limits, tokens=tokens, server="teacher server"
        )
        if error_class:
            result.error_class, result.error = ErrorClass(error_class), error
            if result.error_class == ErrorClass.TIMEOUT:
                result.tokens_in = result.tokens_out = None
        else:
            read_answer(reply, result, max_tokens=run_settings["max_tokens"])
            if result.error_class and result.attempts and "status" in result.attempts[-1]:
                result.attempts[-1]["problem"] = result.error
    finally:
        llm.exchanges.reset(token)
    result.latency_ms = round((time.perf_counter() - started) * 1000)
    return result


def redact_result(result: TeacherResult, secret: str) -> TeacherResult:
    """``result`` with the API key replaced wherever a reply quoted it (``judging.backends.redact``)."""
    for name in (f.name for f in fields(result)):
        setattr(result, name, redact(getattr(result, name), secret))
    return result


def deadline_error(item_id: int, deadline_s: float | None) -> TeacherResult:
    return TeacherResult(
        item_id,
        error_class=ErrorClass.DEADLINE,
        error=f"deadline: no answer within the chunk's {deadline_s} s (LARRY_JUDGE_CHUNK_DEADLINE_S)",
        tokens_in=None,
        tokens_out=None,
        attempts=[{"error": "deadline", "detail": "cancelled at the chunk's deadline"}],
    )


def teach_window(config: TeacherConfig, source: llm.WorkSource, *, run_settings: dict, **options) -> llm.WindowOutcome:
    """``larry_web.llm.window`` on this thread's client loop, asking the teacher for each leased item, paced by
    the run's ``requests_per_minute``/``tokens_per_minute`` (``RateLimits``, per worker process); the
    client is kept for ``(base_url, api_key, LARRY_TEACHER_TIMEOUT_S, LARRY_JUDGE_MAX_RETRIES)``. ``options``
    are ``window``'s (``max_in_flight``, ``deadline_s``, ``grace_s``, ``renew_s``)."""
    shared = llm.thread_loop()
    client = shared.client(
        config.base_url,
        config.api_key,
        timeout_s=settings.LARRY_TEACHER_TIMEOUT_S,
        max_retries=settings.LARRY_JUDGE_MAX_RETRIES,
    )

    def ask(item: Item, limits: RateLimits | None):
        return ask_teacher(client, model=config.model, item=item, run_settings=run_settings, limits=limits)

    return llm.window(
        source,
        loop=shared.loop,
        ask=ask,
        finish=lambda result: redact_result(result, config.api_key),
        deadline_result=lambda item_id: deadline_error(item_id, options.get("deadline_s")),
        estimate=lambda item: estimate_tokens(messages_for(item, run_settings), run_settings["max_tokens"]),
        requests_per_minute=run_settings.get("requests_per_minute"),
        tokens_per_minute=run_settings.get("tokens_per_minute"),
        **options,
    )
