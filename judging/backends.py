"""Judge backends: an OpenAI-compatible chat server (vLLM), or the local classifier.

Which one judges a project: the endpoint a run names (a cascade tier's), else
the project's default ``JudgeEndpoint``, else ``LARRY_JUDGE_BASE_URL``/
``LARRY_JUDGE_MODEL`` from the environment, else the local classifier trained
on the project's SME labels (``judge_config_for``).
"""

import asyncio
import time
from dataclasses import dataclass, field, fields
from decimal import Decimal
from typing import TYPE_CHECKING

import numpy as np
from django.conf import settings

from annotations.models import Item, Project
from judging import calibration, prompts, replies
from judging.models import JudgeEndpoint
from judging.replies import VERDICT_SCHEMA
from larry_web import llm
from larry_web.llm import RateLimits, estimate_tokens

if TYPE_CHECKING:  # scikit-learn is imported where the local classifier runs, not by every process that starts
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "verdict", "strict": True, "schema": VERDICT_SCHEMA}}

LOCAL_MODEL_NAME = "tfidf-logreg"


@dataclass(frozen=True)
class JudgeConfig:
    """Where the judge is: ``base_url`` empty means the local classifier.

    ``api_key`` is sent to the judge and nowhere else: it is left out of the
    repr (so of tracebacks and logs), of run snapshots (``run_config``) and of
    everything stored from a reply (``redact``).
    """

    base_url: str
    model: str
    api_key: str = field(repr=False)
    max_in_flight: int = 32
    price_in: Decimal = Decimal(0)  # per million prompt tokens
    price_out: Decimal = Decimal(0)  # per million completion tokens
    endpoint_id: int | None = None  # the JudgeEndpoint row, None for the environment's judge or the local one

    @property
    def is_local(self) -> bool:
        return not self.base_url


def judge_config_for(project: Project, endpoint=None) -> JudgeConfig:
    """Where and how to judge: ``endpoint`` (a ``JudgeEndpoint`` of ``project``) when given, else the project's
    default endpoint, else ``LARRY_JUDGE_*`` from the environment (prices 0), whose empty base URL means the
    local classifier. Raises ValueError when ``endpoint`` belongs to another project."""
    if endpoint is None:
        endpoint = JudgeEndpoint.objects.filter(project=project, is_default=True).first()
    elif endpoint.project_id != project.pk:
        raise ValueError(f"endpoint {endpoint.pk} belongs to another project than {project.slug}")
    if endpoint is not None:
        return JudgeConfig(
            endpoint.base_url,
            endpoint.model,
            endpoint.api_key,
            max_in_flight=endpoint.max_in_flight,
            price_in=endpoint.price_in,
            price_out=endpoint.price_out,
            endpoint_id=endpoint.pk,
        )
    return JudgeConfig(
        settings.LARRY_JUDGE_BASE_URL,
        settings.LARRY_JUDGE_MODEL,
        settings.LARRY_JUDGE_API_KEY,
        max_in_flight=settings.LARRY_JUDGE_MAX_IN_FLIGHT,
    )


class JudgeUnreachable(RuntimeError):
    """The judge endpoint did not answer a connection check; the message names the URL and the fault."""


CONNECTION_CHECK_TIMEOUT_S = 5.0


def judge_connection_check(
    config: JudgeConfig, *, timeout_s: float = CONNECTION_CHECK_TIMEOUT_S, who: str = "judge"
) -> list[str]:
    """Ask an OpenAI-compatible endpoint for its model list (``GET <base_url>/models``) before judging with it
    (or teaching: ``who`` names the role in the message, "judge" or "teacher"); returns the models it serves
    (``[]`` when it gave no OpenAI model list, and for the local classifier).

    Raises JudgeUnreachable naming the URL and what went wrong: the
    connection refused, no answer within ``timeout_s`` seconds, the name not
    found, a redirect (never followed: the API key would go to another
    address), 401/403 (the API key), a server error (5xx), or a model list
    (OpenAI's ``{"data": [{"id": ...}]}``) without the run's model. An
    endpoint that answers anything else (even 404: it has no model list) is
    taken as reachable. The local classifier (no URL) needs no check. The key
    is sent as a bearer token and never appears in the message.
    """
    import httpx2 as httpx  # the HTTP client the openai package uses

    if config.is_local:
        return []
    url = config.base_url.rstrip("/") + "/models"
    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    problem, served = "", []
    try:
        response = httpx.get(url, headers=headers, timeout=timeout_s, follow_redirects=False)
    except httpx.TimeoutException:
        problem = f"no answer within {timeout_s:g} s (timeout)"
    except httpx.ConnectError as exc:
        text = str(exc)
        if "refused" in text.lower():
            problem = "connection refused (is the server running, on this port?)"
        elif "name" in text.lower() and ("resolution" in text.lower() or "known" in text.lower()):
            problem = f"the host name could not be resolved ({text[:200]})"
        else:
            problem = f"could not connect ({text[:200]})"
    except (httpx.HTTPError, OSError, ValueError) as exc:  # a reset connection, a URL it cannot use
        problem = f"{type(exc).__name__}: {str(exc)[:200]}"
    else:
        problem, served = _model_list_problem(response, config.model)
    if problem:
        message = f"The {who} at {config.base_url} did not answer: {problem}."
        raise JudgeUnreachable(redact(message, config.api_key))
    return served


def _model_list_problem(response, model: str) -> tuple[str, list[str]]:
    """What is wrong with the answer to ``GET /models`` for using ``model`` ("" when nothing is), and the
    models it lists (``[]`` when it gave no OpenAI model list)."""
    code = response.status_code
    if 300 <= code < 400:
        where = response.headers.get("location", "")[:200]
        return f"HTTP {code}: it redirects to {where!r}; give the address it redirects to as the base URL", []
    if code in (401, 403):
        return f"HTTP {code}: the server refused the API key", []
    if code >= 500 and code != 501:
        return f"HTTP {code}: the server is failing ({response.text[:200]})", []
    if code != 200:
        return "", []  # it answered (a server without a model list, say)
    try:
        served = [entry["id"] for entry in response.json()["data"] if isinstance(entry.get("id"), str)]
    except (ValueError, KeyError, TypeError, AttributeError):
        return "", []  # not an OpenAI model list: nothing to compare
    if model and served and model not in served:
        return f"it does not serve the model {model[:200]!r} (it serves: {', '.join(served[:10])[:300]})", served
    return "", served


def build_messages(item: Item, prefix: list[dict[str, str]]) -> list[dict[str, str]]:
    """The chat messages for one item: ``prefix`` (system prompt and few-shot pairs, see
    ``prompts.prefix_messages``), then the item as the last user message."""
    return [*prefix, prompts.item_message(item)]


SEED = 0
MAX_TOKENS = 512


def run_config(
    config: JudgeConfig,
    *,
    system_prompt: str,
    rubric_version: int,
    few_shot: list[dict],
    max_in_flight: int,
    requests_per_minute: int | None,
    tokens_per_minute: int | None,
) -> dict:
    """The snapshot stored on a run: everything that determines an LLM judge's output, and its pacing.

    Output: base URL, model, prompt template, rubric version, the exact
    system prompt and its sha256, temperature, max tokens, seed, response
    format, how many alternatives are asked for with each reply token's
    log-probability (``top_logprobs``; 0: none, see ``logprob_options``),
    and the few-shot examples (``few_shot_item_ids`` in the order shown, and
    ``few_shot_examples``: ``[{"item_id", "verdict", "rationale"}]``, the
    replies shown for them). Pacing (does not change verdicts):
    ``max_in_flight``, ``requests_per_minute``, ``tokens_per_minute`` (None: unlimited).
    """
    return {
        "base_url": config.base_url,
        "model": config.model,
        "api_key_set": bool(config.api_key),  # never the key: whether one went (``larry_web.work.run_api_key``)
        "prompt_template": prompts.PROMPT_TEMPLATE,
        "rubric_version": rubric_version,
        "system_prompt_sha256": prompts.sha256(system_prompt),
        "system_prompt": system_prompt,
        "temperature": 0.0,
        "max_tokens": MAX_TOKENS,
        "seed": SEED,
        "response_format": "json_schema",
        "few_shot_item_ids": [example["item_id"] for example in few_shot],
        "few_shot_examples": few_shot,
        "max_in_flight": max_in_flight,
        "requests_per_minute": requests_per_minute,
        "tokens_per_minute": tokens_per_minute,
        "top_logprobs": settings.LARRY_JUDGE_TOP_LOGPROBS,
    }


def logprob_options(run_settings: dict) -> dict:
    """The request fields that ask for token log-probabilities, from the run's ``top_logprobs`` (0, or
    absent in runs made before it was recorded: none asked for): ``{"logprobs": True, "top_logprobs": K}``
    or ``{}``. Verdicts get their confidence from them (``logprobs.verdict_confidence``)."""
    k = run_settings.get("top_logprobs") or 0
    return {"logprobs": True, "top_logprobs": k} if k else {}


REDACTED = "[redacted]"
# Shorter "keys" (vLLM's placeholder "EMPTY", a test's "x") are no secret, and replacing them would blank
# ordinary words in rationales.
REDACT_MIN_LENGTH = 8


def redact(value, secret: str):
    """``value`` (a string, or lists and dicts of them) with every occurrence of ``secret`` (the judge's API
    key) replaced by ``[redacted]``; other values are returned as they are.

    A server or proxy may quote the request's ``Authorization`` header in an
    error ("invalid credentials: Bearer sk-..."), which would then be stored
    and shown on the run page; the ``openai`` client's messages quote the
    server's body as is.
    """
    if len(secret) < REDACT_MIN_LENGTH:
        return value
    if isinstance(value, str):
        return value.replace(secret, REDACTED)
    if isinstance(value, list):
        return [redact(v, secret) for v in value]
    if isinstance(value, dict):
        return {redact(k, secret): redact(v, secret) for k, v in value.items()}
    return value


@dataclass
class JudgeResult:
    """One item's outcome: ``verdict`` empty and ``error`` (with ``error_class``) set when judging failed.

    ``tokens_in``/``tokens_out`` are None when a reply had no usage block
    (unknown, not zero); ``attempts`` lists every HTTP exchange (see
    ``Verdict.attempts``); ``raw_reply`` is the last reply's content, capped
    at ``replies.RAW_REPLY_MAX`` characters.
    """

    item_id: int
    verdict: str = ""
    rationale: str = ""
    tokens_in: int | None = 0
    tokens_out: int | None = 0
    latency_ms: int = 0
    error: str = ""
    confidence: float | None = None
    error_class: str = ""
    reasoning: str = ""
    raw_reply: str = ""
    attempts: list[dict] = field(default_factory=list)
    answered_by: str = ""

    def storable(self) -> "JudgeResult":
        """This result with every text cut to its column's size and cleaned of what PostgreSQL cannot store
        (NUL, lone surrogates): a judge's reply may hold anything."""
        clean = replies.storable
        self.rationale = clean(self.rationale, RATIONALE_MAX)
        self.reasoning = clean(self.reasoning, replies.REASONING_MAX)
        self.raw_reply = clean(self.raw_reply, replies.RAW_REPLY_MAX)
        self.error = clean(self.error, ERROR_MAX)
        self.answered_by = clean(self.answered_by, 200)
        self.attempts = [
            {k: clean(v, 300) if isinstance(v, str) else v for k, v in attempt.items()} for attempt in self.attempts
        ]
        return self

    def add_tokens(self, reading: "replies.Reading") -> None:
        """Count a reply's tokens; once one reply did not say, the item's count is unknown (None)."""
        self.tokens_in = (
            None if self.tokens_in is None or reading.tokens_in is None else self.tokens_in + reading.tokens_in
        )
        self.tokens_out = (
            None if self.tokens_out is None or reading.tokens_out is None else self.tokens_out + reading.tokens_out
        )


RATIONALE_MAX = 16 * 1024
ERROR_MAX = 2000


def openai_client(config: JudgeConfig):
    """The judge's ``larry_web.llm.openai_client``: ``LARRY_JUDGE_TIMEOUT_S`` per try, ``LARRY_JUDGE_MAX_RETRIES``."""
    return llm.openai_client(
        config.base_url,
        config.api_key,
        timeout_s=settings.LARRY_JUDGE_TIMEOUT_S,
        max_retries=settings.LARRY_JUDGE_MAX_RETRIES,
    )


REPAIR_PROMPT = (
    "Your reply was not a valid verdict ({problem}). Reply again with only the JSON object "
    '{{"verdict": "accept" or "reject", "rationale": "<one or two sentences>"}} and nothing else.'
)


async def judge_with_openai(
    client,
    *,
    model: str,
    item: Item,
    prefix: list[dict[str, str]],
    run_settings: dict,
    limits: RateLimits | None = None,
) -> JudgeResult:
    """Ask the server for one verdict; never raises: failures come back as ``error`` and ``error_class``.

    ``prefix`` is the system prompt and the few-shot pairs (``prompts.prefix_messages``);
    ``run_settings`` is the run's snapshot (``run_config``). Each request
    (the first and a repair) first waits for ``limits``, when given.
    A coroutine, so that one worker keeps many requests in flight (see
    ``judge_many``). Transport faults (429 with Retry-After, 5xx, timeouts, dropped
    connections) are retried by the ``openai`` client with exponential
    backoff and jitter; every try is on the record (``attempts``). A reply is
    read strictly (``replies.read_reply``); one that is not a verdict (not
    exactly one JSON object valid against the schema, cut off at
    ``max_tokens``) gets one repair attempt: the reply and a request for the
    bare JSON object are sent back. A refusal (``message.refusal``,
    ``finish_reason`` "content_filter") is not asked again. If the repair
    fails too, the item ends with ``error`` and no verdict. Tokens and
    latency add up over both attempts.
    """
    started = time.perf_counter()
    result = JudgeResult(item.pk)
    token = llm.exchanges.set(result.attempts)
    messages = build_messages(item, prefix)
    try:
        for attempt in (1, 2):
            body = {
                "model": model,
                "messages": messages,
                "temperature": run_settings["temperature"],
                "max_tokens": run_settings["max_tokens"],
                "seed": run_settings["seed"],
                "response_format": RESPONSE_FORMAT,
                **logprob_options(run_settings),
            }
            tokens = estimate_tokens(messages, run_settings["max_tokens"])
            reply, error_class, error = await llm.post_chat(client, body, limits=limits, tokens=tokens)
            if error_class:
                result.error_class, result.error = replies.ErrorClass(error_class), error
                if result.error_class == replies.ErrorClass.TIMEOUT:
                    result.tokens_in = result.tokens_out = None  # the server may have worked on it: unknown
                break
            try:
                reading = replies.read_reply(reply)
            except Exception as exc:  # read_reply never raises; should it, the item fails, not the chunk
                result.error_class, result.error = replies.ErrorClass.INVALID_REPLY, f"unreadable reply ({exc!r:.200})"
                break
            result.add_tokens(reading)
            result.answered_by = reading.model or result.answered_by
            result.raw_reply = reading.content
            result.reasoning = reading.reasoning
            if reading.verdict is not None:
                result.verdict, result.rationale = reading.verdict.verdict, reading.verdict.rationale
                result.confidence = reading.confidence
                result.error, result.error_class = "", ""
                break
            if result.attempts and "status" in result.attempts[-1]:
                result.attempts[-1]["problem"] = reading.problem
            result.error_class = reading.error_class
            result.error = reading.problem if attempt == 1 else f"{reading.problem} (after one repair attempt)"
            if not reading.repairable:
                break
            messages = [
                *messages,
                {"role": "assistant", "content": reading.content[: replies.RAW_REPLY_MAX]},
                {"role": "user", "content": REPAIR_PROMPT.format(problem=reading.problem[:500])},
            ]
    finally:
        llm.exchanges.reset(token)
    if not result.attempts and result.error:
        result.attempts.append({"error": result.error_class, "detail": result.error})
    result.latency_ms = round((time.perf_counter() - started) * 1000)
    return result.storable()


async def judge_many(
    config: JudgeConfig,
    items: list[Item],
    *,
    prefix: list[dict[str, str]],
    run_settings: dict,
    max_in_flight: int,
    client=None,
    deadline_s: float | None = None,
    grace_s: float = 0.0,
) -> list[JudgeResult]:
    """Judge ``items`` with at most ``max_in_flight`` requests open at once, so vLLM's continuous batching is fed.

    With ``deadline_s`` (seconds from now), no request starts after it;
    requests open then get ``grace_s`` seconds more to finish (they are paid
    for already) and are cancelled after that. Only the items finished by
    then have a result: the caller judges the rest later. Without a
    deadline, every item has a result, in order.

    The run's ``requests_per_minute`` and ``tokens_per_minute`` (in
    ``run_settings``; missing or None: unlimited) pace all these requests
    together (``RateLimits``): the limits hold per call, that is per chunk,
    per worker process. ``client`` (an ``openai_client`` made on the running
    event loop, see ``JudgeLoop``) is used and left open; without one a
    client is made for this call and closed after it. Should anything raise,
    no request of this call outlives it.
    """
    if client is None:
        async with openai_client(config) as own_client:
            return await judge_many(
                config,
                items,
                prefix=prefix,
                run_settings=run_settings,
                max_in_flight=max_in_flight,
                client=own_client,
                deadline_s=deadline_s,
                grace_s=grace_s,
            )

    gate = asyncio.Semaphore(max_in_flight)
    rpm, tpm = run_settings.get("requests_per_minute"), run_settings.get("tokens_per_minute")
    limits = None
    if rpm or tpm:
        largest = max(
            (estimate_tokens(build_messages(it, prefix), run_settings["max_tokens"]) for it in items), default=0
        )
        limits = RateLimits(requests_per_minute=rpm, tokens_per_minute=tpm, largest_request=largest)

    loop = asyncio.get_running_loop()
    stop_at = None if deadline_s is None else loop.time() + deadline_s

    async def one(item: Item) -> JudgeResult | None:
        async with gate:
            if stop_at is not None and loop.time() >= stop_at:
                return None  # past the deadline: left for a later chunk
            return await judge_with_openai(
                client, model=config.model, item=item, prefix=prefix, run_settings=run_settings, limits=limits
            )

    tasks = [asyncio.ensure_future(one(item)) for item in items]
    try:
        if deadline_s is None:
            results = list(await asyncio.gather(*tasks))
        else:
            await asyncio.wait(tasks, timeout=deadline_s + grace_s)
            finished = [task.result() for task in tasks if task.done() and not task.cancelled()]
            results = [result for result in finished if result is not None]
    finally:
        pending = [task for task in tasks if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
    for result in results:  # whatever the server said, the key is stored nowhere
        _redact_result(result, config.api_key)
    return results


def _redact_result(result: JudgeResult, secret: str) -> JudgeResult:
    if len(secret) >= REDACT_MIN_LENGTH:
        for name in (f.name for f in fields(result)):
            setattr(result, name, redact(getattr(result, name), secret))
    return result


def judge_window(
    config: JudgeConfig,
    source: llm.WorkSource,
    *,
    loop: asyncio.AbstractEventLoop,
    client,
    prefix: list[dict[str, str]],
    run_settings: dict,
    max_in_flight: int,
    **options,
) -> llm.WindowOutcome:
    """``larry_web.llm.window`` judging each leased item with ``judge_with_openai`` (the same retries, repair
    and reply reading as ``judge_many``), paced by the run's requests/tokens-per-minute limits; results are
    redacted of the API key, and items a chunk could not judge at all by its deadline end as ``deadline``
    errors. ``options`` are ``window``'s (``deadline_s``, ``grace_s``, ``renew_s``, ``flush_items``,
    ``flush_s``)."""

    def ask(item: Item, limits: RateLimits | None):
        return judge_with_openai(
            client, model=config.model, item=item, prefix=prefix, run_settings=run_settings, limits=limits
        )

    return llm.window(
        source,
        loop=loop,
        ask=ask,
        finish=lambda result: _redact_result(result, config.api_key),
        deadline_result=lambda item_id: _deadline_error(item_id, options.get("deadline_s")),
        estimate=lambda item: estimate_tokens(build_messages(item, prefix), run_settings["max_tokens"]),
        requests_per_minute=run_settings.get("requests_per_minute"),
        tokens_per_minute=run_settings.get("tokens_per_minute"),
        max_in_flight=max_in_flight,
        **options,
    )


def _deadline_error(item_id: int, deadline_s: float | None) -> JudgeResult:
    return JudgeResult(
        item_id,
        error=f"deadline: no reply within the chunk's {deadline_s} s (LARRY_JUDGE_CHUNK_DEADLINE_S)",
        error_class="deadline",
        tokens_in=None,  # requests were sent and cancelled: what they cost is unknown
        tokens_out=None,
        attempts=[{"error": "deadline", "detail": "cancelled at the chunk's deadline"}],
    )


class JudgeLoop:
    """The judge's calls on this thread's shared ``larry_web.llm.ClientLoop`` (its event loop and clients).

    A worker process judges chunk after chunk; with one loop and one client
    per judge server for all of them, the client's start-up and its
    keep-alive connections serve every chunk instead of one each. The judge's
    clients are kept for ``(base_url, api_key, LARRY_JUDGE_TIMEOUT_S,
    LARRY_JUDGE_MAX_RETRIES)``. Get this thread's with ``judge_loop()``.
    """

    def __init__(self, shared: llm.ClientLoop) -> None:
        self.shared = shared

    def client(self, config: JudgeConfig):
        return self.shared.client(
            config.base_url,
            config.api_key,
            timeout_s=settings.LARRY_JUDGE_TIMEOUT_S,
            max_retries=settings.LARRY_JUDGE_MAX_RETRIES,
        )

    def judge_many(self, config: JudgeConfig, items: list[Item], **options) -> list[JudgeResult]:
        """``judge_many`` on this loop with its client for ``config``; same arguments, run to completion."""
        return self.shared.run(judge_many(config, items, client=self.client(config), **options))

    def judge_window(self, config: JudgeConfig, source: llm.WorkSource, **options) -> llm.WindowOutcome:
        """``judge_window`` on this loop with its client for ``config``."""
        return judge_window(config, source, loop=self.shared.loop, client=self.client(config), **options)


def judge_loop() -> JudgeLoop:
    """The judge on this thread's ``larry_web.llm.thread_loop()`` (made on first use, and anew in a forked child
    process; closed at exit)."""
    return JudgeLoop(llm.thread_loop())


class NotEnoughLabels(ValueError):
    """The local classifier needs labels of both kinds to learn from."""


def _texts(items: list[Item]) -> list[str]:
    return [f"{it.prompt}\n\n{it.context}\n\n{it.response}" for it in items]


def local_vectorizer() -> "TfidfVectorizer":
    """The local classifier's features: tf-idf of word 1- and 2-grams (sublinear tf), at most 100,000 of them."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1, max_features=100_000)


def local_model(seed: int) -> "LogisticRegression":
    """The local classifier's model on ``local_vectorizer`` features: L2 logistic regression, classes balanced."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=4.0, class_weight="balanced", max_iter=2000, random_state=seed)


def _classifier(seed: int):
    from sklearn.pipeline import make_pipeline

    return make_pipeline(local_vectorizer(), local_model(seed))


def judge_with_local_classifier(
    items: list[Item], truth: dict[int, str], *, seed: int = 0, teacher: dict[int, str] | None = None
) -> tuple[list[JudgeResult], dict]:
    """Judge every item with a tf-idf + logistic-regression model trained on SME labels, and on a teacher's
    verdicts when given (distillation: a big judge labels thousands of items, the SMEs hundreds).

    ``truth`` is SME ground truth ``{item_id: "accept"|"reject"}``; ``teacher`` a finished judge run's verdicts
    in the same shape. The training labels are the SME labels of ``items``, and the teacher's verdicts on the
    other items: where both exist, the SME label wins. Every item with a training label gets an out-of-fold
    verdict from stratified k-fold cross-fitting (k = min(5, size of the smaller class)), so no verdict comes
    from a model that saw that item's label (its agreement with the SMEs is measured on every SME item, and
    with the teacher on every item the teacher judged). Every other item is judged by the model of one fold,
    fold ``fold_key(item) mod k``: a model that saw the labels of the other folds only, as for a labelled item of that
    fold. So SME-labelled and unlabelled items get their P(accept) from the same k models in the same
    proportions, and their (P(accept), SME label) pairs are exchangeable, as the estimate, the certificate and
    the tier thresholds assume; a model fit on all labels would judge the unlabelled items better than the SME
    items that vouch for it (``bench/judge_quality.py``).
    Returns (results, info): ``info`` = ``{"folds", "train_accept", "train_reject", "seed", "sme_labels",
    "teacher_labels", "teacher_overruled"}`` (``teacher_overruled``: teacher verdicts on SME items that the
    SME label contradicted). Raises NotEnoughLabels with fewer than 2 training labels of either kind.
    """
    from sklearn.model_selection import StratifiedKFold

    teacher = teacher or {}
    labels = {
        it.pk: truth[it.pk] if it.pk in truth else teacher[it.pk] for it in items if it.pk in truth or it.pk in teacher
    }
    sme_labels = sum(1 for it in items if it.pk in truth)
    labelled = [it for it in items if it.pk in labels]
    y = np.array([labels[it.pk] == "accept" for it in labelled], dtype=int)
    n_accept, n_reject = int(y.sum()), int(len(y) - y.sum())
    if min(n_accept, n_reject) < 2:
        source = "SME reviews" if not teacher else "labels (SME reviews and the teacher run's verdicts)"
        raise NotEnoughLabels(
            f"the local classifier needs at least 2 accepted and 2 rejected {source}; "
            f"this project has {n_accept} accepted and {n_reject} rejected"
        )
    folds = min(5, n_accept, n_reject)
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    labelled_texts = _texts(labelled)
    rest = [it for it in items if it.pk not in labels]
    rest_texts = _texts(rest)
    rest_fold = np.array([calibration.fold_key(it.external_id) % folds for it in rest], dtype=int)
    p_oof, p_rest = np.empty(len(labelled)), np.empty(len(rest))
    for k, (train, test) in enumerate(cv.split(labelled_texts, y)):
        model = _classifier(seed).fit([labelled_texts[i] for i in train], y[train])
        p_oof[test] = model.predict_proba([labelled_texts[i] for i in test])[:, 1]
        mine = np.flatnonzero(rest_fold == k)
        if mine.size:
            p_rest[mine] = model.predict_proba([rest_texts[i] for i in mine])[:, 1]
    results = []
    hows = ["out-of-fold"] * len(labelled) + [f"cross-fitted: the model of fold {k + 1} of {folds}" for k in rest_fold]
    for it, p, how in zip(labelled + rest, np.concatenate([p_oof, p_rest]), hows, strict=True):
        verdict = "accept" if p >= 0.5 else "reject"
        results.append(
            JudgeResult(it.pk, verdict, f"P(accept)={p:.2f} from {LOCAL_MODEL_NAME} ({how})", confidence=float(p))
        )
    info = {
        "folds": folds,
        "train_accept": n_accept,
        "train_reject": n_reject,
        "seed": seed,
        "sme_labels": sme_labels,
        "teacher_labels": len(labels) - sme_labels,
        "teacher_overruled": sum(
            1 for it in items if it.pk in truth and teacher.get(it.pk, truth[it.pk]) != truth[it.pk]
        ),
    }
    return results, info
