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

``latency`` (seconds) delays every answer, as a busy GPU would. Every
request body is kept in ``server.requests`` for assertions; set
``server.httpd.down = True`` to answer 503 to everything.
"""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as vLLM's server

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        self.server.requests.append(body)
        if not self.path.endswith("/chat/completions"):
            return self._send(404, {"error": {"message": "not found"}})
        user = body["messages"][1]["content"]  # the item; later messages are a repair request
        repairing = len(body["messages"]) > 2
        if self.server.latency:
            time.sleep(self.server.latency)
        if self.server.down:
            return self._send(503, {"error": {"message": "the test server is down"}})
        if "[http500]" in user:
            return self._send(500, {"error": {"message": "injected fault"}})
        with self.server.lock:
            self.server.seen[user] = seen = self.server.seen.get(user, 0) + 1
        if "[429-once]" in user and seen == 1:
            return self._send(429, {"error": {"message": "slow down"}}, headers={"Retry-After": "1"})
        if "[slow-once]" in user and seen == 1:
            time.sleep(self.server.slow_s)  # past the client's timeout
        verdict = "reject" if "WRONG" in user else "accept"
        content = json.dumps({"verdict": verdict, "rationale": f"the test server said {verdict}"})
        finish, refusal = "stop", None
        if "[fenced]" in user:
            content = f"```json\n{content}\n```"
        elif "[garbage]" in user or ("[garbage-once]" in user and not repairing):
            content = "I think this answer is fine."
        elif "[refusal]" in user:
            content, refusal = None, "I can't help with that."
        elif "[truncated]" in user:
            content, finish = content[: len(content) // 2], "length"
        self._send(
            200,
            {
                "id": "chatcmpl-test",
                "object": "chat.completion",
                "created": 0,
                "model": body.get("model", ""),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content, "refusal": refusal},
                        "finish_reason": finish,
                    }
                ],
                "usage": {
                    "prompt_tokens": len(user) // 4,
                    "completion_tokens": 12,
                    "total_tokens": len(user) // 4 + 12,
                },
            },
        )

    def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class JudgeServer:
    """Start with ``JudgeServer().start()``; ``base_url`` ends in ``/v1``; ``stop()`` when done."""

    def __init__(self, latency: float = 0.0) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.requests = []
        self.httpd.down = False  # answer 503 to everything while True
        self.httpd.latency = latency
        self.httpd.seen, self.httpd.lock, self.httpd.slow_s = {}, threading.Lock(), 3.0
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    @property
    def requests(self) -> list[dict]:
        return self.httpd.requests

    def start(self) -> "JudgeServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
