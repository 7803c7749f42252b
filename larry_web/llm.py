"""The client loop every LLM call of Larry goes through (judge runs now, teacher runs next): one long-lived
event loop per thread, its ``openai.AsyncOpenAI`` clients kept per server and settings, the record of every
HTTP exchange, and requests/tokens-per-minute limits.

What is asked and how a reply is read belongs to the caller (``judging.backends`` for verdicts,
``distillation.teacher`` for the teacher's answers); this module knows only OpenAI-compatible servers,
and the sliding window (``window``) that keeps requests in flight over a run's leased work rows.
"""

import asyncio
import atexit
import contextvars
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

# The HTTP exchanges of the request being made in this asyncio task: a caller sets a list here, and
# every try the ``openai`` client makes (its own retries included) is noted in it.
exchanges: contextvars.ContextVar[list[dict] | None] = contextvars.ContextVar("larry_judge_exchanges", default=None)
MAX_EXCHANGES_KEPT = 20


def causes(exc: BaseException):
    """``exc`` and the exceptions it was raised from or while handling, once each, newest first."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def transport_fault(exc: BaseException) -> str:
    """The class of an exception raised while talking to the server: ``refused`` (a connection refused),
    ``connection`` (another network fault: DNS, reset, TLS), or ``timeout``.

    The aiohttp transport reports a refused connection as a connect
    *timeout* (``ConnectTimeout`` from ``ClientConnectorError``), so the
    chain of causes is searched for the real one.
    """
    import aiohttp

    chain = list(causes(exc))
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        return "refused"
    if any(isinstance(e, aiohttp.ClientConnectorError | aiohttp.ServerDisconnectedError) for e in chain):
        return "connection"
    if any(isinstance(e, TimeoutError) or "Timeout" in type(e).__name__ for e in chain):
        return "timeout"
    return "connection"


def classify_exception(exc: BaseException, *, server: str = "judge server") -> tuple[str, str]:
    """``(error class, message)`` for an exception from the ``openai`` client, after its own retries; the
    message names ``server`` ("judge server", "teacher server").

    ``RateLimitError`` (429) → ``rate_limited``; ``InternalServerError``
    (5xx) → ``server_error``; a redirect (3xx, never followed: ``openai_client``) → ``client_error``, its message
    starting "redirect:" and naming where it pointed; another ``APIStatusError`` (4xx: a bad key, an
    unknown model, a prompt over the context) → ``client_error``; a timeout
    or connection fault → ``transport_fault``'s class.
    """
    import openai

    name = type(exc).__name__
    if isinstance(exc, openai.APIStatusError) and 300 <= exc.status_code < 400:
        location = exc.response.headers.get("location", "")[:300]
        return "client_error", (
            f"redirect: HTTP {exc.status_code} from the {server} to {location!r}, not followed (a chat call follows "
            "no redirect: the request would go elsewhere, or arrive as a GET without its prompt); set the URL it "
            "points to if that is the server"
        )
    if isinstance(exc, openai.RateLimitError):
        return "rate_limited", f"rate limited: HTTP 429 from the {server} ({name}: {exc})"
    if isinstance(exc, openai.InternalServerError):
        return "server_error", f"server error: HTTP {exc.status_code} from the {server} ({name}: {exc})"
    if isinstance(exc, openai.APIStatusError):
        return "client_error", f"client error: HTTP {exc.status_code} from the {server} ({name}: {exc})"
    fault = transport_fault(exc)
    cause = next((e for e in causes(exc) if e is not exc), None)
    detail = f"{type(cause).__name__}: {cause}" if cause is not None else f"{name}: {exc}"
    what = {
        "refused": f"refused: the {server} refused the connection",
        "timeout": f"timeout: the {server} did not answer in time",
        "connection": f"connection: the {server} could not be reached",
    }[fault]
    return fault, f"{what} ({detail})"


def unreadable(exc: Exception) -> tuple[str, str]:
    """``(error class, message)`` for an exception the ``openai`` client let through: a transport fault
    (aiohttp's or httpx's own) or a body that could not be read as JSON (``invalid_reply``). The message names
    the type and the first words only: some exceptions' repr carries the request, and its Authorization header."""
    import aiohttp

    if isinstance(exc, aiohttp.ClientError | OSError) or type(exc).__module__.startswith(("httpx", "httpcore")):
        fault = transport_fault(exc)
        return fault, f"{fault}: the reply could not be read ({type(exc).__name__}: {str(exc)[:200]})"
    return "invalid_reply", f"the reply's body is not a JSON chat completion ({type(exc).__name__}: {str(exc)[:200]})"


async def post_chat(
    client, body: dict, *, limits: "RateLimits | None" = None, tokens: int = 0, server: str = "judge server"
) -> tuple[Any, str, str]:
    """Send one ``POST /chat/completions`` (``body`` as is) and return ``(reply JSON, "", "")``, or ``(None,
    error class, message)`` when it failed after the client's own retries (429s, 5xx and timeouts, with
    backoff and jitter: ``classify_exception``) or its body could not be read (``unreadable``). Never raises.
    First waits for ``limits`` (a request of ``tokens``, ``estimate_tokens``), when given.

    ``client.post`` (the openai client's documented way to send a body as is) rather than
    ``chat.completions.create``: the same request, retries and error handling, without create()'s per-call
    walk over the typed params (~3 ms of CPU per request). ``cast_to=object`` gives the reply's JSON as is:
    building a ChatCompletion model from it cost ~0.2 ms more.
    """
    import openai

    if limits is not None:
        await limits.wait(tokens)
    try:
        return await client.post("/chat/completions", cast_to=object, body=body), "", ""
    except openai.OpenAIError as exc:
        return None, *classify_exception(exc, server=server)
    except Exception as exc:  # a body the client could not read: not JSON, not UTF-8, cut short...
        return None, *unreadable(exc)


def _recording_client_class():
    """``openai.DefaultAioHttpClient`` that notes each HTTP exchange (status, or the transport fault) in
    ``exchanges``, so the record shows every retry the ``openai`` client made on its own."""
    from openai import DefaultAioHttpClient

    class RecordingAioHttpClient(DefaultAioHttpClient):
        async def send(self, request, **kwargs):
            log = exchanges.get()
            try:
                response = await super().send(request, **kwargs)
            except Exception as exc:
                if log is not None and len(log) < MAX_EXCHANGES_KEPT:
                    log.append({"error": transport_fault(exc), "detail": str(exc)[:300]})
                raise
            if log is not None and len(log) < MAX_EXCHANGES_KEPT:
                log.append({"status": response.status_code})
            return response

    return RecordingAioHttpClient


def openai_client(base_url: str, api_key: str, *, timeout_s: float, max_retries: int):
    """An ``openai.AsyncOpenAI`` client for the server; its own retries (``max_retries``) cover
    429/5xx/timeouts with backoff, each try waiting at most ``timeout_s`` seconds. It follows no redirect (the
    openai client's default would): after a 302 the POST would go on as a GET without its prompt, to whatever
    host the reply names, and that host's answer would be read as the server's (``classify_exception`` says
    "redirect").

    Its HTTP transport is aiohttp (``openai[aiohttp]``) rather than the
    default httpx: with 64 requests in flight httpx's connection-pool
    bookkeeping cost about 1 ms of CPU per request more, which bounded a
    worker's throughput (docs/PERFORMANCE.md, "Judge throughput").
    """
    from openai import AsyncOpenAI

    return AsyncOpenAI(
        base_url=base_url,
        api_key=api_key or "not-needed",
        timeout=timeout_s,
        max_retries=max_retries,
        http_client=_recording_client_class()(follow_redirects=False),
    )


def cost(run_config: dict, tokens_in: int, tokens_out: int) -> Decimal:
    """What ``tokens_in`` prompt and ``tokens_out`` completion tokens cost at the prices a run recorded
    (``run_config["price_in_per_million"]``/``["price_out_per_million"]``, decimal strings; absent: 0)."""
    price_in = Decimal(run_config.get("price_in_per_million", "0"))
    price_out = Decimal(run_config.get("price_out_per_million", "0"))
    return (tokens_in * price_in + tokens_out * price_out) / 1_000_000


def estimate_tokens(messages: list[dict], max_tokens: int) -> int:
    """What one request counts against a tokens/minute limit, estimated before it is sent.

    The characters of every message (system prompt, few-shot pairs, the item,
    and on a repair attempt the first reply and the repair request) divided
    by 4, plus ``max_tokens``, the most the reply may use. Characters / 4 is a
    rough count of English tokens; adding the whole ``max_tokens`` rather than
    the reply's real length keeps the estimate on the high side.
    """
    return sum(len(m.get("content") or "") for m in messages) // 4 + max_tokens


class RateLimits:
    """Requests/minute and tokens/minute limits shared by the concurrent requests of one call (a judge chunk).

    ``None`` means unlimited. Both are leaky buckets from ``aiolimiter``.
    Requests are spaced evenly, one every 60 / ``requests_per_minute``
    seconds, with no burst. Tokens (``estimate_tokens``) drain a bucket that
    holds one second's budget, or the largest request of the chunk when that
    is bigger, and refills at ``tokens_per_minute`` / 60 per second; a
    request larger than the bucket (a repair attempt can be) waits for a full
    bucket and empties it. Each call (one chunk) has its
    own buckets, which start able to send one bucketful at once; as a bucket
    holds one request or one second's tokens, chunks judged one after another
    overshoot by at most that. Chunks judged at the same time by other worker
    processes have their own buckets: the limits are per worker process.
    """

    def __init__(self, *, requests_per_minute: int | None, tokens_per_minute: int | None, largest_request: int = 0):
        from aiolimiter import AsyncLimiter

        self.requests = AsyncLimiter(1, 60 / requests_per_minute) if requests_per_minute else None
        self.tokens = None
        if tokens_per_minute:
            capacity = max(tokens_per_minute / 60, largest_request, 1)
            self.tokens = AsyncLimiter(capacity, capacity * 60 / tokens_per_minute)

    async def wait(self, tokens: int) -> None:
        """Return once one more request of ``tokens`` (estimated) may be sent."""
        if self.requests is not None:
            await self.requests.acquire()
        if self.tokens is not None:
            await self.tokens.acquire(min(tokens, self.tokens.max_rate))


class WorkSource:
    """What ``window`` works on and where its results go: the leased work rows of one run.

    Every method is synchronous (it uses the database) and is called while
    the event loop is paused, never from a running loop; ``judging.tasks``
    implements it over ``services.judge_work_lease`` and friends, ``distillation.tasks`` over the teacher's.
    """

    def lease(self, limit: int) -> tuple[list, int]:
        """Lease up to ``limit`` items: ``(items, rows others hold)``; ``([], 0)`` means no work is left."""
        raise NotImplementedError

    def renew(self, item_ids: list[int]) -> bool:
        """Renew the lease on ``item_ids``; False when the run no longer runs (cancelled): start nothing more."""
        raise NotImplementedError

    def release(self, item_ids: list[int]) -> None:
        """Give leased items back unjudged, for any worker to take at once."""
        raise NotImplementedError

    def store(self, results: list) -> None:
        """Store results (and end their items' work) in one transaction."""
        raise NotImplementedError


@dataclass
class WindowOutcome:
    """What one ``window`` call did: results stored, and whether it stopped at its deadline (items left
    for another task) or because the run was cancelled."""

    judged: int = 0
    stopped_at_deadline: bool = False
    cancelled: bool = False


def window(
    source: WorkSource,
    *,
    loop: asyncio.AbstractEventLoop,
    ask: Callable[[Any, RateLimits | None], Awaitable[Any]],
    finish: Callable[[Any], Any],
    deadline_result: Callable[[int], Any],
    estimate: Callable[[Any], int],
    requests_per_minute: int | None = None,
    tokens_per_minute: int | None = None,
    max_in_flight: int,
    deadline_s: float | None = None,
    grace_s: float = 0.0,
    renew_s: float = 10.0,
    flush_items: int | None = None,
    flush_s: float = 0.2,
) -> WindowOutcome:
    """Keep ``max_in_flight`` requests open, refilled from leased work as each reply arrives (a sliding window).

    Items are leased from ``source`` in batches (up to twice ``max_in_flight``
    held at once: in flight, or waiting for a slot) and each is sent as one
    call of ``ask(item, limits)`` (a coroutine that never raises and returns
    the item's result, which has ``item_id``), its result passed through
    ``finish`` (the caller's redaction); results are stored in small batches as they arrive,
    once ``flush_items`` are waiting (default: an eighth of the window, at
    least 1, at most 50) or the oldest has waited ``flush_s`` seconds, and
    the window is refilled only while at most four such batches are
    unstored: so a process that dies has at most the window plus four
    batches sent and not stored (the window alone when it is under 16, where
    every result is stored at once). The
    leases on every held item are renewed every ``renew_s`` seconds (the
    heartbeat that tells a live worker from a dead one).

    Synchronous: it runs ``loop`` (not running yet, with ``client`` made on
    it) until a reply arrives or a tick passes, then does its database work
    (``source``) on this thread, with the loop paused, and runs it again; so
    no database call is made from a running event loop, and the requests in
    flight wait (in their sockets' buffers) only for a short write.

    With ``deadline_s`` (seconds from now) no request starts after it; open
    ones get ``grace_s`` more and are then cancelled. Held items not judged
    by then are released for another task, except when this call did
    nothing at all: then they end as ``deadline_result(item_id)`` errors, so that a judge that
    never answers cannot loop for ever. When every row is done or held by
    others, the call waits for those leases (a dead worker's run out) before
    it returns. ``requests_per_minute``/``tokens_per_minute`` pace this call's
    requests (``RateLimits``; a request's tokens are ``estimate(item)``).
    """
    rpm, tpm = requests_per_minute, tokens_per_minute
    limits: RateLimits | None = None
    outcome = WindowOutcome()
    clock = time.monotonic
    stop_at = None if deadline_s is None else clock() + deadline_s
    if flush_items is None:
        flush_items = max(1, min(50, max_in_flight // 8))
    # Sent and not stored yet (in flight, or answered and waiting to be written) stays at most this many: the
    # window alone when every result is stored at once, else room for a few batches, so that a batch waiting
    # to be written (the event loop paused) does not keep the window from refilling.
    most_unstored = max_in_flight if flush_items == 1 else max_in_flight + 4 * flush_items
    waiting: deque = deque()  # leased, not started
    in_flight: dict[asyncio.Future, int] = {}
    finished: deque[asyncio.Future] = deque()  # answered, not read yet
    results: list = []  # read, not stored yet
    state = {"stopping": False, "no_work_left": False}
    retry_lease_at = 0.0
    batch_at = last_renew = clock()  # when the oldest result not stored yet arrived; the last renewal

    async def make_event():
        return asyncio.Event()

    wake = loop.run_until_complete(make_event())

    def may_start() -> bool:
        return (
            bool(waiting)
            and not state["stopping"]
            and len(in_flight) < max_in_flight
            and len(in_flight) + len(finished) + len(results) < most_unstored
            and (stop_at is None or clock() < stop_at)
        )

    def start_one() -> None:
        item = waiting.popleft()
        task = loop.create_task(ask(item, limits))
        task.add_done_callback(on_done)
        in_flight[task] = item.pk

    def on_done(task: asyncio.Future) -> None:
        # On the event loop: refill the freed slot at once; wake the synchronous side only when it has
        # something to do (a batch to store, leases to take, nothing left in flight).
        if in_flight.pop(task, None) is None:
            return
        finished.append(task)
        while may_start():
            start_one()
        if (
            len(finished) + len(results) >= flush_items
            or (len(waiting) < max_in_flight and not state["no_work_left"])
            or not in_flight
        ):
            wake.set()

    async def pause(timeout: float) -> None:
        wake.clear()
        try:
            await asyncio.wait_for(wake.wait(), timeout)
        except TimeoutError:
            pass

    def flush() -> None:
        nonlocal results
        if results:
            outcome.judged += len(results)
            source.store(results)
            results = []

    def held() -> list[int]:
        return [item.pk for item in waiting] + list(in_flight.values())

    try:
        while True:
            if finished and not results:
                batch_at = clock()
            while finished:
                results.append(finish(finished.popleft().result()))
            now = clock()
            if stop_at is not None and now >= stop_at and not state["stopping"]:
                state["stopping"], outcome.stopped_at_deadline = True, True
            # Store before refilling, so what a dead process sent and did not store stays within the bound.
            if len(results) >= flush_items or (results and now - batch_at >= flush_s):
                flush()
            # Lease more while fewer than the window wait for a slot (up to twice the window held).
            if (
                not state["stopping"]
                and not state["no_work_left"]
                and now >= retry_lease_at
                and len(waiting) < max_in_flight
            ):
                leased, others = source.lease(2 * max_in_flight - len(waiting) - len(in_flight))
                if leased:
                    waiting.extend(leased)
                    if limits is None and (rpm or tpm):
                        largest = max(estimate(it) for it in leased)
                        limits = RateLimits(requests_per_minute=rpm, tokens_per_minute=tpm, largest_request=largest)
                elif others:
                    retry_lease_at = now + min(1.0, renew_s)  # others hold the rest: look again for expired ones
                else:
                    state["no_work_left"] = True
            while may_start():
                start_one()
            if now - last_renew >= renew_s and held():
                last_renew = now
                if not source.renew(held()):
                    state["stopping"], outcome.cancelled = True, True
            if not in_flight and (state["stopping"] or (state["no_work_left"] and not waiting)):
                break
            # Run the requests until there is something to do, or the next flush/renew/lease/deadline tick.
            timeout = max(0.0, batch_at + flush_s - now) if results else min(flush_s, renew_s)
            if not in_flight:
                timeout = min(timeout, max(0.01, retry_lease_at - now))
            if state["stopping"] and stop_at is not None:
                if now >= stop_at + grace_s:
                    break
                timeout = min(timeout, stop_at + grace_s - now)
            elif stop_at is not None:
                timeout = min(timeout, max(0.0, stop_at - now))
            if not finished:
                loop.run_until_complete(pause(timeout))
        # Past the grace: what is still open is cancelled; held items go back, or end as deadline errors
        # when this call judged nothing at all.
        while finished:
            results.append(finish(finished.popleft().result()))
        unfinished = held()
        if unfinished:
            if outcome.judged == 0 and not results and outcome.stopped_at_deadline:
                results.extend(deadline_result(item_id) for item_id in unfinished)
            else:
                source.release(unfinished)
        flush()
    finally:
        open_tasks = list(in_flight)
        in_flight.clear()  # their callbacks now do nothing
        for task in open_tasks:
            task.cancel()
        if open_tasks:
            loop.run_until_complete(asyncio.gather(*open_tasks, return_exceptions=True))
    return outcome


class ClientLoop:
    """A long-lived event loop for one thread, and the LLM clients made on it, one per server and settings.

    A worker process makes request after request, chunk after chunk; with one
    loop and one client per server for all of them, the client's start-up (an
    SSL context, ~40 ms) and its keep-alive connections serve every chunk
    instead of one each. Clients are kept for ``(base_url, api_key,
    timeout_s, max_retries)``, the ``KEEP`` most recently used. Get this
    thread's with ``thread_loop()``.
    """

    KEEP = 4

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.clients: OrderedDict[tuple, object] = OrderedDict()

    def client(self, base_url: str, api_key: str, *, timeout_s: float, max_retries: int):
        """The ``openai_client`` for these settings, made on this loop the first time they are asked for."""
        key = (base_url, api_key, timeout_s, max_retries)
        if key in self.clients:
            self.clients.move_to_end(key)
        else:
            self.clients[key] = openai_client(base_url, api_key, timeout_s=timeout_s, max_retries=max_retries)
            while len(self.clients) > self.KEEP:
                _key, oldest = self.clients.popitem(last=False)
                self.loop.run_until_complete(oldest.close())
        return self.clients[key]

    def run(self, coroutine):
        """Run ``coroutine`` on this loop to completion and return its result."""
        return self.loop.run_until_complete(coroutine)

    def close(self) -> None:
        for client in self.clients.values():
            self.loop.run_until_complete(client.close())
        self.clients.clear()
        self.loop.close()


_this_thread = threading.local()


def thread_loop() -> ClientLoop:
    """This thread's ``ClientLoop``, made on first use (and anew in a forked child process); closed at exit."""
    current = getattr(_this_thread, "client_loop", None)
    if current is None or _this_thread.pid != os.getpid():
        current = _this_thread.client_loop = ClientLoop()
        _this_thread.pid = os.getpid()
        atexit.register(current.close)
    return current
