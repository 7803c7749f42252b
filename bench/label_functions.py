"""Benchmark: 100,000 responses x 50 label functions of mixed kinds, on one core.

Compares Larry's RuleSet (RE2 sets and an Aho-Corasick automaton per field)
with a naive loop that runs each rule on each text with Python's ``re`` in
the same run. The naive loop takes minutes on 100,000 items, so it runs on
the first --naive-items items and its time is scaled linearly (it is linear
in items by construction); its answers are compared with the RuleSet's on
those items. Also checks that time grows linearly with items x rules, and
times a catastrophic-backtracking pattern.

Usage (from the project folder, after ``make test`` or ``make demo`` made .venv):

    .venv/bin/python bench/label_functions.py [--items 100000] [--naive-items 10000]

Texts are the responses and prompts of ../shared/data/*.jsonl when present
(cycled up to --items), else of examples/support_copilot.jsonl. The last line
of output is one JSON object with the figures (seconds, naive_seconds,
speedup_vs_naive_re, ...).
"""

import argparse
import json
import os
import random
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

from judging.label_functions import PII_PATTERNS, Rule, RuleSet, luhn_valid, validate_params  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"


def load_items(n: int) -> tuple[list[dict], str]:
    files = sorted(SHARED.glob("*.jsonl")) or [ROOT / "examples" / "support_copilot.jsonl"]
    base = []
    for path in files:
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                record = json.loads(line)
                base.append({key: record.get(key) or "" for key in ("prompt", "context", "response", "task_type")})
    random.Random(0).shuffle(base)
    return [base[i % len(base)] for i in range(n)], ", ".join(p.name for p in files)


def make_rules() -> list[Rule]:
    """50 rules of every kind, about as a busy project would have them."""
    rng = random.Random(1)
    competitors = ["Dropbox", "Google Drive", "OneDrive", "Box", "iCloud", "pCloud", "Mega", "Sync.com"]
    competitors += [f"Competitor{i:04d}" for i in range(2000)]
    regexes = [
        r"as an AI (?:language )?model",
        r"\bI (?:cannot|can't|am unable to) (?:help|assist)",
        r"\bguarantee[sd]?\b",
        r"https?://\S+",
        r"\b\d{3}-\d{2}-\d{4}\b",
        r"lorem ipsum",
        r"\b(?:click here|buy now|limited offer)\b",
        r"(a+)+$",
        r"\b(?:always|never) (?:works|fails)\b",
        r"\$\d{4,}",
        r"(?:TODO|FIXME|XXX)",
        r"\bin conclusion\b",
        r"\b(?:kill|hate)\b",
        r"[!?]{3,}",
        r"\b(?:\w+\s+){60,}\w+\.",
    ]
    rules = [Rule(f"regex-{i}", "regex", {"pattern": p}) for i, p in enumerate(regexes)]
    rules.append(Rule("competitors", "keywords", {"keywords": competitors}))
    for i in range(9):
        words = rng.sample(
            [
                "refund",
                "lawsuit",
                "cheap",
                "scam",
                "password",
                "diagnosis",
                "prescription",
                "invest",
                "crypto",
                "bet",
                "casino",
                "weapon",
                "hack",
                "leak",
                "secret",
                "free",
            ],
            5,
        )
        rules.append(Rule(f"keywords-{i}", "keywords", {"keywords": words}))
    for i, (low, high, unit) in enumerate(
        [
            (20, None, "chars"),
            (None, 8000, "chars"),
            (3, None, "words"),
            (None, 1200, "words"),
            (10, 5000, "chars"),
            (None, 300, "words"),
            (50, None, "chars"),
            (2, 2000, "words"),
        ]
    ):
        rules.append(Rule(f"length-{i}", "length", {"min": low, "max": high, "unit": unit}))
    for i, phrases in enumerate([["thank"], ["please", "sorry"], ["the"], ["acme"], ["http"], ["because", "since"]]):
        rules.append(Rule(f"must-{i}", "must_contain", {"phrases": phrases, "mode": "any"}))
    for i, types in enumerate([["email"], ["phone"], ["card"], ["email", "phone", "card"], ["email", "card"]]):
        rules.append(Rule(f"pii-{i}", "pii", {"types": types}))
    for i in range(3):
        rules.append(Rule(f"json-{i}", "json", {"require_object": bool(i)}, task_types=("structured",)))
    for i, (words, prompt) in enumerate([(5, 20), (3, 10), (8, 40)]):
        rules.append(Rule(f"curt-{i}", "curt", {"max_words": words, "min_prompt_words": prompt}))
    assert len(rules) == 50, len(rules)
    return rules


class NaiveRules:
    """Each rule on its own with Python's re, one rule after another: the baseline to beat."""

    def __init__(self, rules: list[Rule]):
        self.checks = []
        for rule in rules:
            p = validate_params(rule.kind, rule.params)
            if rule.kind == "regex":
                check = self._search(re.compile(p["pattern"], 0 if p["case_sensitive"] else re.IGNORECASE))
            elif rule.kind == "keywords":
                words = "|".join(re.escape(w) for w in p["keywords"])
                check = self._search(re.compile(rf"\b(?:{words})\b", re.IGNORECASE))
            elif rule.kind == "must_contain":
                compiled = [re.compile(re.escape(x), re.IGNORECASE) for x in p["phrases"]]
                check = self._must(compiled, p["mode"])
            elif rule.kind == "pii":
                check = self._pii([(t, re.compile(PII_PATTERNS[t])) for t in p["types"]])
            elif rule.kind == "length":
                check = self._length(p)
            elif rule.kind == "json":
                check = self._json(p)
            else:
                check = self._curt(p)
            self.checks.append((rule.key, rule.task_types, check))

    @staticmethod
    def _search(compiled):
        return lambda text, item: compiled.search(text) is not None

    @staticmethod
    def _must(compiled, mode):
        def check(text, item):
            found = [c.search(text) is not None for c in compiled]
            return not any(found) if mode == "any" else not all(found)

        return check

    @staticmethod
    def _pii(compiled):
        def check(text, item):
            for kind, c in compiled:
                for m in c.finditer(text):
                    if kind != "card" or luhn_valid("".join(ch for ch in m.group() if ch.isdigit())):
                        return True
            return False

        return check

    @staticmethod
    def _length(p):
        measure = len if p["unit"] == "chars" else (lambda t: len(t.split()))
        return lambda text, item: (
            (p["min"] is not None and measure(text) < p["min"]) or (p["max"] is not None and measure(text) > p["max"])
        )

    @staticmethod
    def _json(p):
        def check(text, item):
            try:
                value = json.loads(text)
            except ValueError:
                return True
            return p["require_object"] and not isinstance(value, dict)

        return check

    @staticmethod
    def _curt(p):
        return lambda text, item: (
            len(text.split()) <= p["max_words"] and len(item["prompt"].split()) >= p["min_prompt_words"]
        )

    def rejections(self, item) -> list:
        text = item["response"]
        return [
            key
            for key, task_types, check in self.checks
            if (not task_types or item["task_type"] in task_types) and check(text, item)
        ]


def timed(engine, items) -> tuple[float, list]:
    started = time.perf_counter()
    results = [engine.rejections(item) for item in items]
    return time.perf_counter() - started, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument(
        "--naive-items", type=int, default=10_000, help="items for the naive loop, whose time is scaled to --items"
    )
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    items, source = load_items(args.items)
    rules = make_rules()
    print(f"{len(items)} items from {source}; {len(rules)} rules; one core", flush=True)

    # Median of three passes, each with a freshly compiled RuleSet (cold RE2 DFA caches): the machine is noisy.
    passes = []
    for _ in range(3):
        compile_started = time.perf_counter()
        rule_set = RuleSet(rules)
        compile_s = time.perf_counter() - compile_started
        elapsed, ours = timed(rule_set, items)
        passes.append(elapsed)
    seconds = statistics.median(passes)
    shown = ", ".join(f"{p:.2f}" for p in passes)
    print(f"RuleSet: {seconds:.2f} s (passes {shown}; {compile_s * 1000:.0f} ms to compile)", flush=True)

    naive_items = items[: min(args.naive_items, len(items))]
    naive_s, naive = timed(NaiveRules(rules), naive_items)
    naive_seconds = naive_s * len(items) / len(naive_items)
    same = sum(sorted(a) == sorted(b) for a, b in zip(ours, naive, strict=False)) / len(naive)
    print(f"naive per-rule re loop: {naive_s:.2f} s on {len(naive_items)} items; same answers on {same:.4f}")

    # Linearity: cost per (item x rule) at several sizes, in one run.
    scaling = {}
    for n, k in ((len(items) // 4, 50), (len(items) // 2, 50), (len(items), 25)):
        s, _ = timed(RuleSet(rules[:k]), items[:n])
        scaling[f"{n}x{k}"] = s / (n * k) * 1e6
    scaling[f"{len(items)}x50"] = seconds / (len(items) * 50) * 1e6
    print("microseconds per item x rule: " + ", ".join(f"{key}: {v:.3f}" for key, v in scaling.items()))

    # A catastrophic-backtracking pattern under RE2: time grows linearly with the text.
    hostile = RuleSet([Rule("hostile", "regex", {"pattern": "(a+)+$"})])
    backtracking = {}
    for n in (100_000, 1_000_000):
        text = {"response": "a" * n + "!"}
        started = time.perf_counter()
        hostile.rejections(text)
        backtracking[n] = (time.perf_counter() - started) * 1000
    python_re = {}
    for n in (18, 20, 22):
        started = time.perf_counter()
        re.search("(a+)+$", "a" * n + "!")
        python_re[n] = (time.perf_counter() - started) * 1000
    print(
        f"(a+)+$ under RE2: {backtracking[100_000]:.1f} ms on 100 kB, {backtracking[1_000_000]:.1f} ms on 1 MB; "
        f"Python re: {python_re[18]:.0f} / {python_re[20]:.0f} / {python_re[22]:.0f} ms on 18 / 20 / 22 characters"
    )

    print(
        json.dumps(
            {
                "benchmark": "label_functions",
                "items": len(items),
                "rules": len(rules),
                "seconds": round(seconds, 3),
                "seconds_passes": [round(p, 3) for p in passes],
                "compile_ms": round(compile_s * 1000, 1),
                "naive_seconds": round(naive_seconds, 3),
                "naive_items_measured": len(naive_items),
                "speedup_vs_naive_re": round(naive_seconds / seconds, 1),
                "same_answers_as_naive": round(same, 4),
                "us_per_item_rule": {k: round(v, 4) for k, v in scaling.items()},
                "linearity_spread": round(max(scaling.values()) / min(scaling.values()), 2),
                "re2_backtracking_ms_100k": round(backtracking[100_000], 2),
                "re2_backtracking_ms_1m": round(backtracking[1_000_000], 2),
                "python_re_backtracking_ms_22": round(python_re[22], 1),
            }
        )
    )


if __name__ == "__main__":
    main()
