"""Requests/minute and tokens/minute limits pace the concurrent requests of a chunk (the test server's timestamps)."""

import asyncio
import time

import pytest

from judging.models import JudgeSettings
from judging.services import judge_settings_save
from larry_web.llm import RateLimits, estimate_tokens
from tests.conftest import make_items, use_judge

TOLERANCE_S = 0.05  # timer and thread scheduling slack on a busy machine


@pytest.fixture
def llm_project(project, judge_server):
    use_judge(project, judge_server.base_url, max_in_flight=32)  # concurrency alone would send everything at once
    return project


def test_a_requests_per_minute_limit_spaces_the_requests_of_a_chunk(llm_project, judge_server, start_run):
    judge_settings_save(judge_settings=JudgeSettings(project=llm_project, requests_per_minute=120))
    make_items(llm_project, [f"answer {i}" for i in range(6)])
    run = start_run(llm_project)
    assert run.status == "finished" and run.items_done == 6 and run.config["requests_per_minute"] == 120
    times = sorted(judge_server.request_times)
    assert len(times) == 6
    # 120/min: one request every 0.5 s, so the k-th arrives at least k * 0.5 s after the first. (Compared with
    # the first, not the one before: on a busy machine one arrival can be late and the next on time.)
    since_first = [t - times[0] for t in times]
    assert all(since_first[k] >= k * 0.5 - TOLERANCE_S for k in range(6)), since_first
    assert times[-1] - times[0] < 2.5 + 1.0  # paced, not stalled


def test_without_limits_the_requests_of_a_chunk_go_out_together(llm_project, judge_server, start_run):
    make_items(llm_project, [f"answer {i}" for i in range(6)])
    run = start_run(llm_project)
    assert run.config["requests_per_minute"] is None and run.config["tokens_per_minute"] is None
    times = sorted(judge_server.request_times)
    assert times[-1] - times[0] < 1.0  # against 2.5 s at 120/min


def test_a_tokens_per_minute_limit_admits_no_more_than_the_bucket_allows(llm_project, judge_server, start_run):
    make_items(llm_project, [f"answer {i}: " + "word " * 400 for i in range(6)])  # about 2,000 chars each
    tokens_per_minute = 120_000  # 2,000 a second
    judge_settings_save(judge_settings=JudgeSettings(project=llm_project, tokens_per_minute=tokens_per_minute))
    run = start_run(llm_project)
    assert run.items_done == 6
    estimates = [estimate_tokens(body["messages"], body["max_tokens"]) for body in judge_server.requests]
    assert all(1000 < e < 1500 for e in estimates), estimates
    # A leaky bucket of capacity C refilled at r tokens/s admits at most C + r*t tokens in t seconds,
    # so the requests after the first burst must wait: the last one no sooner than (total - C) / r.
    rate = tokens_per_minute / 60
    capacity = max(rate, max(estimates))
    times = sorted(judge_server.request_times)
    assert times[-1] - times[0] >= (sum(estimates) - capacity) / rate - TOLERANCE_S
    assert times[-1] - times[0] < (sum(estimates) - capacity) / rate + 1.5


def test_the_limiter_counts_estimated_tokens_and_clamps_a_request_larger_than_its_bucket():
    async def admit(limits, amounts):
        started, seen = time.monotonic(), []
        for amount in amounts:
            await limits.wait(amount)
            seen.append(time.monotonic() - started)
        return seen

    limits = RateLimits(requests_per_minute=None, tokens_per_minute=60_000, largest_request=500)  # 1,000/s, C=1,000
    seen = asyncio.run(admit(limits, [1000, 5000, 500]))
    assert seen[0] < TOLERANCE_S  # a full bucket
    assert 1.0 - TOLERANCE_S <= seen[1] < 1.0 + 0.3  # 5,000 counts as the whole bucket: wait for it to drain
    assert 1.5 - TOLERANCE_S <= seen[2] < 1.5 + 0.3
    assert estimate_tokens([{"content": "x" * 400}, {"content": None}], 512) == 100 + 512


def test_the_limits_are_explained_where_staff_set_them():
    help_texts = {f.name: str(f.help_text) for f in JudgeSettings._meta.get_fields() if hasattr(f, "help_text")}
    assert "per worker process" in help_texts["requests_per_minute"]
    assert "per worker process" in help_texts["tokens_per_minute"]
    assert "/ 4 plus the reply's max tokens" in help_texts["tokens_per_minute"]
