"""The main job end to end: the funnel adds up, the export parses, agreement is on unseen labels."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from annotations.models import Review
from annotations.queue import in_sme_queue
from distillation.pipeline import read_labels, run_main_job
from judging import gate
from judging.models import GateDecision, Verdict
from tests.services import SHARED_DATA, require

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "support_copilot.jsonl"


def assert_valid_chat_jsonl(path: Path) -> int:
    """Every line is ``{"messages": [user, assistant]}`` with non-empty string contents; returns the count."""
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        record = json.loads(line)
        assert list(record) == ["messages"], f"line {number}"
        roles = [m["role"] for m in record["messages"]]
        assert roles == ["user", "assistant"], f"line {number}: {roles}"
        assert all(isinstance(m["content"], str) and m["content"] for m in record["messages"]), f"line {number}"
    return len(lines)


def assert_funnel_adds_up(funnel: dict) -> None:
    assert funnel["imported"] == funnel["accepted"] + funnel["rejected"] + funnel["pending"]
    assert funnel["accepted"] == funnel["accepted_before_rules"] - funnel["vetoed_accepts"]
    assert funnel["by_sme"] == funnel["sme_reviewed"] and funnel["undecided"] == 0
    # Queued: the SME sample, 20 more left for review in the browser, and the judge's accepts the certificate
    # does not cover (pending, some of them among those 20).
    assert funnel["sme_reviewed"] + 20 <= funnel["sme_queued"] <= funnel["sme_reviewed"] + 20 + funnel["pending"]


def assert_certificate_reported(report: dict) -> None:
    """The certificate the demo chose is in the report: certified items at its threshold, or the reason for none."""
    certificate = report["certificate"]
    assert (certificate["target"], certificate["delta"]) == (0.9, 0.05)
    assert certificate["n_labelled"] <= report["sme_labels"]
    if certificate["threshold"] is None:
        assert certificate["certified"] == 0 and certificate["result"]["reason"]
    else:
        assert certificate["bound"] >= 0.9 and certificate["certified"] > 0
        assert certificate["certified"] <= report["funnel"]["accepted"]


def test_the_main_job_on_the_example_file(transactional_db, tmp_path):
    report = run_main_job(data=EXAMPLE, out=tmp_path, fraction=0.5, seed=0, progress=lambda message: None)
    funnel = report["funnel"]
    assert_funnel_adds_up(funnel)
    assert funnel["imported"] == 60 and funnel["sme_reviewed"] == 30 and funnel["judged"] == 60
    assert funnel["vetoed_total"] > 0  # the example has competitor, curt and PII answers
    assert_certificate_reported(report)
    pending = GateDecision.objects.filter(outcome=gate.Outcome.PENDING)
    assert pending.count() == funnel["pending"] and not pending.exclude(in_sme_queue("item_id")).exists()
    assert assert_valid_chat_jsonl(tmp_path / "accepted.jsonl") == funnel["accepted"] == report["export"]["lines"]
    assert json.loads((tmp_path / "report.json").read_text()) == report
    # Only the sampled items' labels became SME reviews; the rest were held back.
    labels = read_labels(EXAMPLE)
    assert Review.objects.count() == report["agreement"]["sme_unseen"]["n"] == 30
    assert report["agreement"]["held_back_human_labels"]["n"] == len(labels) - 30
    # Each SME item's verdict came from a model that did not train on its label.
    sme_items = Review.objects.values_list("item_id", flat=True)
    rationales = Verdict.objects.filter(item_id__in=sme_items).values_list("rationale", flat=True)
    assert all("out-of-fold" in r for r in rationales)
    assert report["judge"]["name"] == "local classifier tfidf-logreg (not an LLM)"
    # The estimate: the accepted set's precision, with an interval or a note saying why there is none.
    accepted = report["estimate"]["accepted"]
    assert accepted["size"] == funnel["accepted"] and accepted["unrecorded"] == 0  # the SME sample is a draw
    assert accepted["ppi"] is not None or any("needed" in note or "Every" in note for note in accepted["notes"])
    # The training-set snapshot: both splits are valid chat JSONL and hold the whole accepted set.
    snapshot = report["training_set"]
    train, validation = (Path(snapshot["files"][split]["path"]) for split in ("train", "validation"))
    assert hashlib.sha256(train.read_bytes()).hexdigest() == snapshot["files"]["train"]["sha256"]
    rows = assert_valid_chat_jsonl(train) + assert_valid_chat_jsonl(validation)
    assert rows == snapshot["rows_train"] + snapshot["rows_validation"] == funnel["accepted"] - snapshot["duplicates"]
    assert hashlib.sha256(train.read_bytes() + validation.read_bytes()).hexdigest() == snapshot["sha256"]


def test_rerunning_the_main_job_gives_the_same_export(transactional_db, tmp_path):
    first = run_main_job(data=EXAMPLE, out=tmp_path / "1", fraction=0.5, progress=lambda message: None)
    second = run_main_job(data=EXAMPLE, out=tmp_path / "2", fraction=0.5, progress=lambda message: None)
    assert first["export"]["sha256"] == second["export"]["sha256"]
    assert first["training_set"]["sha256"] == second["training_set"]["sha256"]


@pytest.mark.shared_data
def test_make_demo_on_the_real_halueval_file(tmp_path):
    """``manage.py demo`` as ``make demo`` runs it, on embedded defaults (SQLite, local judge, no broker)."""
    require("shared_data")
    data = SHARED_DATA / "halueval_general.jsonl"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL")}
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'demo.sqlite3'}"
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    result = subprocess.run(
        [sys.executable, "manage.py", "demo", "--data", str(data), "--out", str(tmp_path / "out")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    funnel = report["funnel"]
    assert_funnel_adds_up(funnel)
    assert funnel["imported"] == 4007 and funnel["sme_reviewed"] == 801
    assert_certificate_reported(report)
    assert "Certificate for precision ≥ 0.900 with 95.0% confidence" in result.stdout
    assert assert_valid_chat_jsonl(tmp_path / "out" / "accepted.jsonl") == funnel["accepted"]
    unseen, held_back = report["agreement"]["sme_unseen"], report["agreement"]["held_back_human_labels"]
    assert unseen["n"] == 801 and held_back["n"] == 4007 - 801
    assert f"(n=801): agreement {unseen['accuracy']:.3f} (always-the-commoner-label baseline" in result.stdout
    assert f"Cohen's kappa {unseen['cohen_kappa']:.3f}" in result.stdout
    assert "Judge: local classifier tfidf-logreg (not an LLM)" in result.stdout
    snapshot = report["training_set"]
    assert f"/api/projects/{report['project']}/training-sets/{snapshot['id']}/download/?split=train" in result.stdout
    assert f"sha256 {snapshot['files']['train']['sha256']}" in result.stdout
    token = result.stdout.split("API token of user 'demo': ")[1].split()[0]
    assert f"Authorization: Token {token}" in result.stdout  # the same token as in the printed curl
    # Better than chance on labels it never saw.
    assert unseen["cohen_kappa"] > 0 and held_back["cohen_kappa"] > 0


def test_the_main_job_finishes_when_the_local_judge_cannot_train_yet(transactional_db, tmp_path):
    """96 items, one of them rejected: a 10 % SME sample holds at most one reject, too few to train on."""
    data = tmp_path / "lopsided.jsonl"
    rows = [
        {
            "id": f"q{i}",
            "prompt": f"Question {i}?",
            "response": f"Answer {i}.",
            "human_label": "reject" if i == 7 else "accept",
        }
        for i in range(96)
    ]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL")}
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'demo.sqlite3'}"
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    result = subprocess.run(
        [sys.executable, "manage.py", "demo", "--data", str(data), "--out", str(tmp_path / "out"), "--fraction", "0.1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "the local judge cannot train yet: the local classifier needs at least 2 accepted and 2 rejected" in (
        result.stderr
    )
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    funnel = report["funnel"]
    assert report["judge"]["status"] == "failed" and "at least 2 accepted" in report["judge"]["error"]
    assert funnel["imported"] == 96 and funnel["sme_reviewed"] == 10 and funnel["judged"] == 0
    assert funnel["pending"] == report["waiting_for_smes"] == 86 and funnel["sme_queued"] == 96
    # What the SMEs decided is the only thing decided; what they accepted is exported, nothing else.
    assert funnel["accepted"] + funnel["rejected"] == 10 and funnel["accepted"] >= 9
    assert assert_valid_chat_jsonl(tmp_path / "out" / "accepted.jsonl") == funnel["accepted"]
    assert "The judge could not judge" in result.stdout and "86 items wait for SME review" in result.stdout


def test_the_main_job_on_a_file_with_no_good_line_says_every_line_was_refused(transactional_db, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "p"}\nnot json\n\n')
    with pytest.raises(ValueError, match=r"no item imported: every one of its 2 non-blank lines was refused \(line 1"):
        run_main_job(data=data, out=tmp_path / "out", progress=lambda message: None)


def test_a_tiny_file_still_gets_an_sme_item(transactional_db, tmp_path):
    data = tmp_path / "tiny.jsonl"
    data.write_text(
        "".join(
            json.dumps({"id": f"t{i}", "prompt": "p?", "response": f"r{i}", "human_label": "accept"}) + "\n"
            for i in range(4)
        )
    )
    report = run_main_job(data=data, out=tmp_path / "out", fraction=0.1, progress=lambda message: None)
    assert report["sme_labels"] == 1
