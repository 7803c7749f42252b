"""bench/vs_label_studio.py: summary ratios from fixed per-round figures, the memory count, the unlabelled rows."""

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import vs_label_studio as bench


def rnd(import_s, item_p50_ms, export_items_per_s, idle_rss_mb, submit_p95_ms, **more):
    return {
        "database": "x",
        "import_s": import_s,
        "item_p50_ms": item_p50_ms,
        "export_items_per_s": export_items_per_s,
        "idle_rss_mb": idle_rss_mb,
        "submit_p95_ms": submit_p95_ms,
        **more,
    }


def test_the_ratios_are_of_the_medians_over_rounds_speed_larry_over_label_studio():
    rounds = {
        # medians: import 9 s, item 160 ms, export 700 items/s, 270 MB
        "label_studio": [rnd(9, 150, 700, 260, 80), rnd(8, 160, 600, 270, 90), rnd(12, 170, 800, 280, 85)],
        # medians: import 3 s, item 40 ms, export 21,000 items/s (later 14,000), 540 MB, submit p95 60 ms
        "larry_pg": [
            rnd(3, 40, 21_000, 540, 60, export_items_per_s_later=14_000),
            rnd(2, 30, 20_000, 530, 50, export_items_per_s_later=7_000),
            rnd(4, 50, 30_000, 550, 70, export_items_per_s_later=70_000),
        ],
        # one round only: its own figures
        "larry_sqlite": [rnd(4.5, 20, 70_000, 135, 45)],
    }
    summary = bench.summarize(rounds)
    assert summary["import_gated_ratio"] == pytest.approx(9 / 3)
    assert summary["review_item_p50_ratio"] == pytest.approx(160 / 40)
    assert summary["export_items_ratio"] == pytest.approx(21_000 / 700)
    assert summary["export_items_ratio_later"] == pytest.approx(14_000 / 700)
    assert summary["idle_rss_ratio"] == pytest.approx(540 / 270)
    assert summary["submit_p95_ms"] == 60
    assert summary["import_gated_ratio_sqlite"] == pytest.approx(2)
    assert summary["review_item_p50_ratio_sqlite"] == pytest.approx(8)
    assert summary["export_items_ratio_sqlite"] == pytest.approx(100)
    assert summary["idle_rss_ratio_sqlite"] == pytest.approx(0.5)
    assert "export_items_ratio_later_sqlite" not in summary  # no later export in its rounds
    assert summary["submit_p95_ms_sqlite"] == 45
    assert summary["ranges"]["larry_pg"]["import_s"] == [2, 4]
    assert summary["medians"]["label_studio"]["import_s"] == 9
    assert "import_gated_ratio_vs_ls_postgresql" not in summary


def test_the_memory_of_a_process_tree_counts_its_children():
    child = subprocess.Popen([sys.executable, "-c", "import time; b = bytearray(64 << 20); time.sleep(30)"])
    try:
        for _ in range(100):  # until the child holds its 64 MB
            alone, _ = bench.memory_mb([child.pid])
            if alone > 64:
                break
            subprocess.run(["sleep", "0.05"])
        tree = bench.process_tree([child.pid])
        assert tree == [child.pid]
        rss, pss = bench.memory_mb(tree)
        assert rss > 64 and pss > 0
        ours = bench.process_tree([bench.os.getpid()])
        assert child.pid in ours and bench.memory_mb(ours)[0] > rss
    finally:
        child.kill()
        child.wait()


def test_every_kth_row_loses_its_prior_label_and_nothing_else(tmp_path):
    path = tmp_path / "items.jsonl"
    rows = [{"id": f"i{i}", "prompt": "p", "response": "r", "human_label": "accept"} for i in range(25)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert bench.unlabel(path, 10) == 3
    back = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [i for i, r in enumerate(back) if "human_label" not in r] == [0, 10, 20]
    assert [r["id"] for r in back] == [r["id"] for r in rows]
