"""The client loop every LLM call of Larry goes through (judge runs now, teacher runs next): one long-lived
event loop per thread, its ``openai.AsyncOpenAI`` clients kept per server and settings, the record of every
HTTP exchange, and requests/tokens-per-minute limits.

What is asked and how a reply is read belongs to the caller (``judging.backends`` for verdicts); this
module knows only OpenAI-compatible servers.
"""

import asyncio
import atexit
import contextvars
import os
import threading
from collections import OrderedDict

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
    429/5xx/timeouts with backoff, each try waiting at most ``timeout_s`` seconds.

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
        http_client=_recording_client_class()(),
    )


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
