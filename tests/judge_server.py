"""A small OpenAI-compatible chat server on 127.0.0.1 for tests (not a mock of the client).

It answers ``POST /v1/chat/completions`` like vLLM's server: a chat
completion whose message content is the verdict JSON. The verdict is
``reject`` when the user message contains ``WRONG``, else ``accept``.
Markers in the response text pick a fault:

| marker | reply |
| --- | --- |
| ``[fenced]`` | the JSON inside a Markdown code fence |
| ``[garbage]`` | text that is not JSON, also when asked to repair it |
| ``[garbage-once]`` | text that is not JSON, then a verdict when asked to repair it |
| ``[refusal]`` | a refusal (``message.refusal``) |
| ``[truncated]`` | ``finish_reason: "length"`` with half a JSON object |
| ``[http500]`` | HTTP 500 every time |
| ``[429-once]`` | HTTP 429 with ``Retry-After: 1`` the first time, then a verdict |
| ``[slow-once]`` | an answer after ``server.httpd.slow_s`` (3 s) the first time, then at once |
| ``[no-choices]`` | a chat completion with an empty ``choices`` list |
| ``[html]`` | HTTP 200 with an HTML page, not JSON (as a misconfigured proxy might send) |
| ``[echo-auth]`` | HTTP 401 whose error message quotes the request's ``Authorization`` header |
| ``[dup-key]`` | an object whose ``verdict`` is ``reject``, then again ``accept`` (a repeated key) |
| ``[no-rationale]`` | ``{"verdict": "accept"}``: a required field missing |
| ``[extra-key]`` | an accept with a key the schema does not allow |
| ``[prose-accept]`` | prose that rejects, quoting an example accept object |
| ``[think-draft]`` | a ``<think>`` block holding a draft accept, and nothing after it |
| ``[content-filter]`` | ``finish_reason: "content_filter"`` with an accept as content |
| ``[think]`` | a valid verdict after a ``<think>…</think>`` block (a reasoning model without a parser) |
| ``[reasoning-field]`` | a valid verdict with the reasoning in ``message.reasoning_content`` (vLLM's parser) |
| ``[no-usage]`` | a valid verdict with no ``usage`` block |
| ``[bad-json-body]`` | HTTP 200, ``application/json``, a body that is not JSON |
| ``[not-utf8]`` | HTTP 200, ``application/json``, a body with a byte that is not UTF-8 |
| ``[length-lie]`` | a ``Content-Length`` shorter than the body |
| ``[nul]`` | an accept whose rationale and model name hold NUL (U+0000) and a lone surrogate |
| ``[huge-tokens]`` | an accept whose usage says 10^12 prompt tokens |
| ``[huge-content]`` | an accept with a rationale of 100,000 characters |
| ``[two-choices]`` | two choices, an accept and a reject |
| ``[index-1]`` | one choice, an accept, at index 1 |
| ``[error-beside]`` | ``"object": "error"`` and an ``error`` beside an accept choice |

Log-probabilities: a request with ``"logprobs": true`` gets ``choices[0].logprobs.content`` as the
OpenAI API sends it, one entry per token with its ``top_logprobs`` (``top_logprobs`` of the request,
most likely first). At the verdict's first letter the accept tokens hold P(accept) x 0.95 of the mass,
the reject tokens (1 - P(accept)) x 0.95, a white-space token 0.03, so the normalised P(accept) is
exactly P(accept): 0.9 for an accept, 0.1 for a reject, or ``[p-accept=0.37]`` (any decimal). A marker
naming the model asked for, ``[baby p-accept=0.37]``, sets both the verdict (accept at 0.5 or more) and
P(accept) for that model only, so one server can play several judges with different errors. Other
tokens have logprob -0.001 and themselves as their only alternative. Markers pick the tokenisation:

| marker | at the verdict's position |
| --- | --- |
| (none) | ``accept`` / ``reject`` after a `` "`` token; alternatives the two words |
| ``[lp-split]`` | ``acc`` + ``ept`` / ``rej`` + ``ect``; alternatives ``acc``, ``a`` (60/40 % of |
| | the accept mass), ``rej``, ``r`` (70/30 % of the reject mass) |
| ``[lp-glued]`` | `` "accept`` / `` "reject`` (quote and space glued on); alternatives also |
| | ``"Accept`` / ``"REJECT`` (case, 20 % of each mass) and `` "`` (neither) |
| ``[lp-one-class]`` | only the chosen word's tokens listed (its mass 0.9), then `` `` 0.01 and ``\n`` 0.005 |
| ``[lp-contradict]`` | the token says the other word than the content |
| ``[lp-none]`` | no ``logprobs`` at all, though asked for |

Every fault above but ``[garbage-once]`` is answered again to the repair request.

A request without ``response_format`` (a judge's always has the verdict schema) is a teacher's: it gets free
text, ``Answer <8 hex of the user message>: Plus costs $4 a month.``, with usage (prompt
tokens = characters / 4, 20 completion tokens). ``[http500]``, ``[429-once]``, ``[slow-once]`` and ``down``
apply as above; markers in the prompt pick the rest:

| marker | teacher reply |
| --- | --- |
| ``[t-bad]`` | an answer holding ``WRONG`` (so this server, judging it, rejects it) |
| ``[t-reasoning]`` | the answer, with ``message.reasoning_content`` (vLLM's reasoning parser) |
| ``[t-think]`` | a ``<think>…</think>`` block, then the answer (no reasoning parser) |
| ``[t-length]`` | half the answer, ``finish_reason: "length"`` |
| ``[t-refusal]`` | ``message.refusal``, no content |
| ``[t-filter]`` | the answer, ``finish_reason: "content_filter"`` |
| ``[t-empty]`` | empty content |
``server.httpd.answer_model`` (when set) is the ``model`` the replies name, as
a server serving another model than the one asked for would.
``latency`` (seconds) delays every answer, as a busy GPU would. Every
request body is kept in ``server.requests``, its arrival time in
``server.request_times`` and its ``Authorization`` header in
``server.authorizations``, for assertions. The item judged is the last user
message (few-shot examples come before it), or the one before a repair request; set
``server.httpd.down = True`` to answer 503 to everything.
"""

import hashlib
import json
import math
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REPAIR_START = "Your reply was not a valid verdict"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as vLLM's server

    def log_message(self, *args):
        pass

    def do_GET(self):
        """``GET .../models`` (what Larry's connection check asks): the model list (``served_models``; empty by
        default, as this server plays any model asked for), or ``models_status``; ``redirect_to`` answers 302."""
        with self.server.lock:
            self.server.model_lists += 1
        if not self.path.endswith("/models"):
            return self._send(404, {"error": {"message": "not found"}})
        if self.server.down or self.server.models_status != 200:
            status = 503 if self.server.down else self.server.models_status
            return self._send(status, {"error": {"message": f"the test server answers {status}"}})
        if self.server.redirect_to:
            self.send_response(302)
            self.send_header("Location", self.server.redirect_to)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        models = [{"id": name, "object": "model"} for name in self.server.served_models]
        return self._send(200, {"object": "list", "data": models})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        with self.server.lock:
            self.server.requests.append(body)
            self.server.request_times.append(time.monotonic())
            self.server.authorizations.append(self.headers.get("Authorization", ""))
        if not self.path.endswith("/chat/completions"):
            return self._send(404, {"error": {"message": "not found"}})
        # The item is the last user message, or the one before it when the last asks for a repair;
        # earlier user/assistant pairs are few-shot examples.
        users = [m["content"] for m in body["messages"] if m["role"] == "user"]
        repairing = users[-1].startswith(REPAIR_START)
        user = users[-2] if repairing else users[-1]
        if self.server.latency:
            time.sleep(self.server.latency)
        if self.server.down:
            return self._send(503, {"error": {"message": "the test server is down"}})
        if "[echo-auth]" in user:  # as a careless proxy might answer
            message = f"invalid credentials: {self.headers.get('Authorization', '')}"
            return self._send(401, {"error": {"message": message}})
        if "[http500]" in user:
            return self._send(500, {"error": {"message": "injected fault"}})
        with self.server.lock:
            self.server.seen[user] = seen = self.server.seen.get(user, 0) + 1
        if "[429-once]" in user and seen == 1:
            return self._send(429, {"error": {"message": "slow down"}}, headers={"Retry-After": "1"})
        if "[slow-once]" in user and seen == 1:
            time.sleep(self.server.slow_s)  # past the client's timeout
        if "[no-choices]" in user:
            return self._send(200, {"id": "chatcmpl-test", "object": "chat.completion", "choices": []})
        raw = {
            "[bad-json-body]": b"{not json",
            "[not-utf8]": b'{"id": "x", "choices": [\xff]}',
        }
        for marker, data in raw.items():
            if marker in user:
                return self._send(200, data)
        if "[length-lie]" in user:
            data = json.dumps({"id": "x", "choices": [], "detail": "x" * 200}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data) // 2))
            self.end_headers()
            self.wfile.write(data)
            return None
        if "[html]" in user:
            return self._send(200, b"<html><body>Bad gateway, sort of</body></html>", content_type="text/html")
        if "response_format" not in body:  # not a judge's request (it always asks for the verdict schema)
            return self._send(200, _teacher_reply(body, user, self.server.answer_model))
        verdict = "reject" if "WRONG" in user else "accept"
        per_model = re.search(rf"\[{re.escape(str(body.get('model', '')))} p-accept=([0-9.]+)\]", user)
        if per_model:
            verdict = "accept" if float(per_model.group(1)) >= 0.5 else "reject"
            user = f"[p-accept={per_model.group(1)}] {user}"
        content = json.dumps({"verdict": verdict, "rationale": f"the test server said {verdict}"})
        finish, refusal, message_extra, usage = "stop", None, {}, True
        if "[dup-key]" in user:
            content = '{"verdict": "reject", "rationale": "it is wrong", "verdict": "accept"}'
        elif "[no-rationale]" in user:
            content = '{"verdict": "accept"}'
        elif "[extra-key]" in user:
            content = '{"verdict": "accept", "rationale": "fine", "confidence": 0.99}'
        elif "[prose-accept]" in user:
            content = (
                "I must reject this. An acceptable answer would look like "
                '{"verdict": "accept", "rationale": "it states the price correctly"}'
            )
        elif "[think-draft]" in user:
            content = '<think>Draft: {"verdict": "accept", "rationale": "looks fine"} but wait, the price</think>'
        elif "[content-filter]" in user:
            finish = "content_filter"
        elif "[think]" in user:
            content = f"<think>The price is $4, as the context says.</think>\n{content}"
        elif "[reasoning-field]" in user:
            message_extra = {"reasoning_content": "The price is $4, as the context says."}
        elif "[no-usage]" in user:
            usage = False
        elif "[nul]" in user:
            content = json.dumps({"verdict": verdict, "rationale": "fine\u0000 and \ud800 too"})
        elif "[huge-content]" in user:
            content = json.dumps({"verdict": verdict, "rationale": "fine " * 20_000})
        elif "[fenced]" in user:
            content = f"```json\n{content}\n```"
        elif "[garbage]" in user or ("[garbage-once]" in user and not repairing):
            content = "I think this answer is fine."
        elif "[refusal]" in user:
            content, refusal = None, "I can't help with that."
        elif "[truncated]" in user:
            content, finish = content[: len(content) // 2], "length"
        reply = {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": 0,
            "model": self.server.answer_model or body.get("model", ""),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": refusal, **message_extra},
                    "finish_reason": finish,
                }
            ],
        }
        if body.get("logprobs") and isinstance(content, str) and "[lp-none]" not in user:
            reply["choices"][0]["logprobs"] = {"content": _logprobs(content, user, body.get("top_logprobs") or 0)}
        if usage:
            reply["usage"] = {
                "prompt_tokens": 10**12 if "[huge-tokens]" in user else len(user) // 4,
                "completion_tokens": 12,
                "total_tokens": len(user) // 4 + 12,
            }
        if "[nul]" in user:
            reply["model"] = "judge\u0000model"
        if "[two-choices]" in user:
            other = json.dumps({"verdict": "reject", "rationale": "no"})
            reply["choices"].append(
                {"index": 1, "message": {"role": "assistant", "content": other}, "finish_reason": "stop"}
            )
        elif "[index-1]" in user:
            reply["choices"][0]["index"] = 1
        elif "[error-beside]" in user:
            reply.update(object="error", error={"message": "overloaded", "type": "server_error"})
        self._send(200, reply)

    def _send(
        self, status: int, payload: dict | bytes, headers: dict | None = None, content_type: str = "application/json"
    ) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


_PIECES = re.compile(r"\w+|\s+|[^\w\s]+")
_VALUE = re.compile(r'"verdict":\s*"(accept|reject)')
_P_ACCEPT = re.compile(r"\[p-accept=([0-9.]+)\]")


def _entry(token: str, alternatives: list[tuple[str, float]], k: int) -> dict:
    """One ``logprobs.content`` entry: ``alternatives`` are ``(token, probability)``, the chosen one among them."""
    listed = sorted(alternatives, key=lambda pair: -pair[1])[:k]
    chosen = dict(alternatives)[token]
    top = [{"token": t, "logprob": math.log(p), "bytes": list(t.encode())} for t, p in listed]
    return {"token": token, "logprob": math.log(chosen), "bytes": list(token.encode()), "top_logprobs": top}


def _plain(text: str, k: int) -> list[dict]:
    return [_entry(piece, [(piece, math.exp(-0.001))], k) for piece in _PIECES.findall(text)]


def _logprobs(content: str, user: str, k: int) -> list[dict]:
    """Crafted ``logprobs.content`` for ``content`` (see the module docstring's table)."""
    match = _VALUE.search(content)
    if match is None:
        return _plain(content, k)
    word = match.group(1)
    other = "reject" if word == "accept" else "accept"
    marked = _P_ACCEPT.search(user)
    p_accept = float(marked.group(1)) if marked else (0.9 if word == "accept" else 0.1)
    mass = {"accept": p_accept * 0.95, "reject": (1 - p_accept) * 0.95}
    start, end = match.start(1), match.end(1)
    head, tail = content[:start], content[end:]
    if "[lp-split]" in user:
        share = {"accept": (("acc", 0.6), ("a", 0.4)), "reject": (("rej", 0.7), ("r", 0.3))}
        alternatives = [(t, mass[w] * f) for w in ("accept", "reject") for t, f in share[w]] + [(" ", 0.03)]
        chosen = [
            _entry(word[:3], alternatives, k),
            _entry(word[3:], [(word[3:], math.exp(-0.001))], k),
        ]
        return _plain(head, k) + chosen + _plain(tail, k)
    if "[lp-glued]" in user:
        glue = ' "'
        head = head[: -len(glue)] if head.endswith(glue) else head
        alternatives = [
            (glue + "accept", mass["accept"] * 0.8),
            ('"Accept', mass["accept"] * 0.2),
            (glue + "reject", mass["reject"] * 0.8),
            ('"REJECT', mass["reject"] * 0.2),
            (glue, 0.03),
        ]
        return [*_plain(head, k), _entry(glue + word, alternatives, k), *_plain(tail, k)]
    if "[lp-one-class]" in user:
        alternatives = [(word, 0.9), (" ", 0.01), ("\n", 0.005)]
        return [*_plain(head, k), _entry(word, alternatives, k), *_plain(tail, k)]
    alternatives = [("accept", mass["accept"]), ("reject", mass["reject"]), (" ", 0.03)]
    token = other if "[lp-contradict]" in user else word
    return [*_plain(head, k), _entry(token, alternatives, k), *_plain(tail, k)]


def _teacher_reply(body: dict, user: str, answer_model: str) -> dict:
    """A teacher's chat completion for ``user`` (see the module docstring's teacher table)."""
    digest = hashlib.sha256(user.encode()).hexdigest()[:8]
    content = f"Answer {digest}: Plus costs $4 a month."
    finish, refusal, extra = "stop", None, {}
    if "[t-bad]" in user:
        content = f"Answer {digest}: WRONG."
    if "[t-reasoning]" in user:
        extra = {"reasoning_content": f"Thought {digest}: the price is in the context."}
    elif "[t-think]" in user:
        content = f"<think>Thought {digest}: the price is in the context.</think>\n{content}"
    elif "[t-length]" in user:
        content, finish = content[: len(content) // 2], "length"
    elif "[t-refusal]" in user:
        content, refusal = None, "I can't help with that."
    elif "[t-filter]" in user:
        finish = "content_filter"
    elif "[t-empty]" in user:
        content = ""
    return {
        "id": "chatcmpl-teacher",
        "object": "chat.completion",
        "created": 0,
        "model": answer_model or body.get("model", ""),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": refusal, **extra},
                "finish_reason": finish,
            }
        ],
        "usage": {"prompt_tokens": len(user) // 4, "completion_tokens": 20, "total_tokens": len(user) // 4 + 20},
    }


class JudgeServer:
    """Start with ``JudgeServer().start()``; ``base_url`` ends in ``/v1``; ``stop()`` when done."""

    def __init__(self, latency: float = 0.0, port: int = 0) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        self.httpd.requests, self.httpd.request_times = [], []  # bodies, and when each arrived (time.monotonic)
        self.httpd.authorizations = []  # each request's Authorization header
        self.httpd.down = False  # answer 503 to everything while True
        self.httpd.latency = latency
        self.httpd.seen, self.httpd.lock, self.httpd.slow_s = {}, threading.Lock(), 3.0
        self.httpd.answer_model = ""
        self.httpd.model_lists, self.httpd.models_status = 0, 200  # GET /models: how many, and the status given
        self.httpd.served_models, self.httpd.redirect_to = [], ""
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    @property
    def requests(self) -> list[dict]:
        return self.httpd.requests

    @property
    def authorizations(self) -> list[str]:
        return self.httpd.authorizations

    @property
    def request_times(self) -> list[float]:
        """``time.monotonic()`` at each request's arrival, in the order of ``requests``."""
        return self.httpd.request_times

    def start(self) -> "JudgeServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


if __name__ == "__main__":  # a stand-in judge and teacher to try the flows by hand (see the README)
    import argparse

    parser = argparse.ArgumentParser(description="Serve the test judge/teacher on 127.0.0.1 until Ctrl-C.")
    parser.add_argument("--port", type=int, default=8012)
    server = JudgeServer(port=parser.parse_args().port)
    print(f"a test judge and teacher (not a model) at {server.base_url}; Ctrl-C stops it", flush=True)
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        server.httpd.server_close()
