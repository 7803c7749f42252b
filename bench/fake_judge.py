"""A lean OpenAI-compatible judge server for the benchmarks: canned verdicts after a fixed latency, little CPU.

Usage: ``python bench/fake_judge.py --latency-ms 200`` prints ``port <n>``
once it listens on 127.0.0.1, then serves until stopped (SIGTERM).

Every ``POST .../chat/completions`` gets, after ``--latency-ms``, the same
chat completion: an ``accept`` verdict in JSON, as vLLM's server would send it
(HTTP/1.1, keep-alive, Content-Length framing). It never reads the request
body beyond its length, so its CPU per request is a few tens of
microseconds: the benchmark measures Larry, not this server.
``tests/judge_server.py`` is the server for tests (faults, recorded requests);
this one has none of that.
"""

import argparse
import asyncio
import json
import signal

BODY = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": "bench-judge",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": json.dumps({"verdict": "accept", "rationale": "the benchmark server said accept"}),
                    "refusal": None,
                },
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 40, "completion_tokens": 12, "total_tokens": 52},
    }
).encode()
OK = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(BODY)) + BODY
NOT_FOUND_BODY = b'{"error": {"message": "not found"}}'
NOT_FOUND = (
    b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(NOT_FOUND_BODY)
) + NOT_FOUND_BODY


class _Connection(asyncio.Protocol):
    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.buffer = b""
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        loop = asyncio.get_running_loop()
        # Requests on one connection are answered in order: each waits the same latency.
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            path = head.split(" ", 2)[1] if head.count(" ") >= 2 else ""
            reply = OK if head.startswith("POST ") and path.endswith("/chat/completions") else NOT_FOUND
            loop.call_later(self.latency, self._send, reply)

    def _send(self, reply: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(reply)


async def serve(latency: float, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Connection(latency), "127.0.0.1", port, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"port {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-ms", type=float, default=200)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(serve(args.latency_ms / 1000, args.port))


if __name__ == "__main__":
    main()
