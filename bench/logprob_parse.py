"""Benchmark: reading P(accept) from one judge reply's token log-probabilities (``judging.logprobs``).

A reply as vLLM or the OpenAI API sends it with ``logprobs: true, top_logprobs: K``: the verdict JSON with a
rationale of about 30 words, one token per word or punctuation mark (about 80 tokens), each with K
alternatives; the verdict's value split in two tokens (``acc`` + ``ept``). Times
``logprobs.reply_confidence`` alone (the extra work per reply; ``replies.read_reply`` already parsed the
verdict) over many repetitions, best of several rounds, on one core.

Usage (from the project folder):

    .venv/bin/python bench/logprob_parse.py [--top-logprobs 5] [--replies 20000] [--rounds 5]

The last line of output is one JSON object: ``us_per_reply`` (best round), ``median_us_per_reply``,
``tokens``, ``top_logprobs``, and what the longer body costs to decode (``json_decode_us_with_logprobs``,
``json_decode_us_without``, ``body_bytes_*``).
"""

import argparse
import json
import math
import os
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "larry_web.settings")

import django  # noqa: E402

django.setup()

from judging.logprobs import reply_confidence  # noqa: E402

RATIONALE = (
    "The answer states the Plus price correctly as four dollars a month, and it cites the context for "
    "version history, but it omits the Team plan's limit that the user asked about."
)


def crafted_reply(k: int) -> dict:
    content = json.dumps({"verdict": "accept", "rationale": RATIONALE})
    pieces = re.findall(r"\w+|\s+|[^\w\s]+", content)
    at = pieces.index("accept")
    pieces[at : at + 1] = ["acc", "ept"]
    entries = []
    for i, piece in enumerate(pieces):
        alternatives = [(piece, 0.9)] + [(f"alt{j}", 0.09 / k) for j in range(k - 1)]
        if i == at:
            alternatives = [("acc", 0.6), ("a", 0.1), ("rej", 0.2), ("r", 0.05), (" ", 0.03)][:k]
        top = [{"token": t, "logprob": math.log(p), "bytes": list(t.encode())} for t, p in alternatives[:k]]
        entries.append(
            {"token": piece, "logprob": top[0]["logprob"], "bytes": list(piece.encode()), "top_logprobs": top}
        )
    return {
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "logprobs": {"content": entries},
                "finish_reason": "stop",
            }
        ]
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top-logprobs", type=int, default=5)
    parser.add_argument("--replies", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    # Parsed JSON, as the openai client hands it over (cast_to=object): a fresh copy per reply would time
    # json.loads too, which read_reply's caller pays anyway.
    reply = json.loads(json.dumps(crafted_reply(args.top_logprobs)))
    confidence = reply_confidence(reply, "accept")
    assert confidence is not None and 0 < confidence < 1, confidence
    rounds = []
    for _ in range(args.rounds):
        started = time.perf_counter()
        for _ in range(args.replies):
            reply_confidence(reply, "accept")
        rounds.append((time.perf_counter() - started) / args.replies * 1e6)
    # What asking for log-probabilities also costs: a longer body for the client to decode.
    body = json.dumps(reply).encode()
    bare = json.loads(body)
    del bare["choices"][0]["logprobs"]
    bare_body = json.dumps(bare).encode()
    decode = {}
    for name, data in (("with", body), ("without", bare_body)):
        best = math.inf
        for _ in range(args.rounds):
            started = time.perf_counter()
            for _ in range(args.replies // 10):
                json.loads(data)
            best = min(best, (time.perf_counter() - started) / (args.replies // 10) * 1e6)
        decode[name] = best
    tokens = len(reply["choices"][0]["logprobs"]["content"])
    print(f"{tokens} tokens, top_logprobs {args.top_logprobs}, P(accept) = {confidence:.4f}")
    print(f"per reply: best {min(rounds):.1f} us, median {statistics.median(rounds):.1f} us over {args.rounds} rounds")
    print(
        f"decoding the reply's JSON: {decode['with']:.1f} us with log-probabilities ({len(body):,} bytes), "
        f"{decode['without']:.1f} us without ({len(bare_body):,} bytes)"
    )
    figures = {
        "us_per_reply": round(min(rounds), 2),
        "median_us_per_reply": round(statistics.median(rounds), 2),
        "tokens": tokens,
        "top_logprobs": args.top_logprobs,
        "json_decode_us_with_logprobs": round(decode["with"], 2),
        "json_decode_us_without": round(decode["without"], 2),
        "body_bytes_with_logprobs": len(body),
        "body_bytes_without": len(bare_body),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
