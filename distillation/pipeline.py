"""The main job end to end: import, sample, SME labels, judge, rules, gate, export, report (the top of the chain).

``make demo`` runs it through ``manage.py demo``. The file's prior human
labels play the SMEs: only the sampled items' labels are imported as SME
reviews; the others are held back and used only to measure the judge.
"""

import hashlib
import json
from pathlib import Path

from django.db import transaction
from django.utils.text import slugify

from annotations.importers import detect_format, given_id, import_items, iter_records
from annotations.models import Decision, Project
from annotations.queue import in_sme_queue, queue_add
from annotations.selectors import ground_truth
from annotations.services import prior_labels_import, sample_for_review
from distillation.export import iter_chat_jsonl
from distillation.jsonl import escape_unicode_line_breaks
from distillation.models import TrainingSet, TrainingSetRow
from distillation.training_sets import iter_file, training_set_build
from judging.estimate import accepted_set_precision
from judging.metrics import agreement
from judging.models import JudgeRun, LabelFunction, Verdict
from judging.runs import Progress, judge_and_wait
from judging.selectors import certificate_held_back, funnel, run_agreement
from judging.services import (
    certification_set,
    gating_policy_set,
    label_function_save,
    label_functions_apply,
    project_regate_now,
)

# Example label functions: rules SMEs commonly ask for.
EXAMPLE_RULES = [
    {
        "name": "curt",
        "kind": "curt",
        "params": {"max_words": 5, "min_prompt_words": 15},
        "reason": "curt: a few words to a long question",
    },
    {
        "name": "recommends a competitor",
        "kind": "keywords",
        "params": {"keywords": ["Dropbox", "Google Drive", "OneDrive", "Box.com"]},
        "reason": "recommends a competitor",
    },
    {
        "name": "personal data",
        "kind": "pii",
        "params": {"types": ["phone", "card"]},
        "reason": "leaks a phone or card number",
    },
    {
        "name": "personal e-mail address",
        "kind": "regex",
        "params": {"pattern": r"[a-z0-9._%+-]+@(?:gmail|yahoo|outlook|hotmail)\.com", "case_sensitive": False},
        "reason": "leaks a personal e-mail address",
    },
    {
        "name": "AI disclaimer",
        "kind": "regex",
        "params": {"pattern": r"as an AI (?:language )?model", "case_sensitive": False},
        "reason": "boilerplate 'as an AI model' disclaimer",
    },
]

BROWSER_QUEUE = 20  # items queued for review in the browser, beyond the labelled sample


def rules_install_examples(project: Project) -> None:
    """Create the example label functions in the project (existing names are left alone); the caller re-gates."""
    for rule in EXAMPLE_RULES:
        if not project.label_functions.filter(name=rule["name"]).exists():
            label_function_save(rule=LabelFunction(project=project, **rule), regate=False)


def read_labels(path: Path, label_field: str = "human_label") -> dict[str, str]:
    """``{external_id: label}`` for the file's rows with an accept/reject label (ids read as the import reads
    them: stripped of surrounding white space)."""
    labels = {}
    with path.open("rb") as stream:
        for _, record, _ in iter_records(stream, detect_format(path.name)):
            if not record:
                continue
            ext = given_id(record)
            label = str(record.get(label_field) or "").strip().lower()
            if ext is not None and label in Decision.values:
                labels[str(ext)] = label
    return labels


def run_main_job(
    *,
    data: Path,
    out: Path,
    fraction: float = 0.2,
    seed: int = 0,
    target: float = 0.9,
    delta: float = 0.05,
    progress: Progress,
) -> dict:
    """Run the whole pipeline on ``data`` into a fresh project; write ``out/accepted.jsonl`` and ``out/report.json``.

    Returns the report: ``{"data", "project", "judge", "waiting_for_smes", "import", "sme_labels",
    "held_back_labels", "funnel", "agreement": {"sme_unseen", "held_back_human_labels"}, "estimate"
    (``estimate.accepted_set_precision``), "certificate" (the ``Certification`` fields and its ``result``, or None
    when the judge could not judge), "held_back" (``selectors.certificate_held_back``), "export",
    "training_set"}``. When the local judge cannot train (too few SME labels, or of one kind only), the job
    still finishes: ``judge.status`` is ``failed`` with the reason in ``judge.error``, the items without
    SME ground truth stay pending and are queued for SME review (``waiting_for_smes``), and what the SMEs
    decided is exported. An LLM judge's failed run raises RuntimeError.
    The training set is a chat snapshot with 10 % held out for validation,
    written as ``out/training-set-train.jsonl`` and ``-validation.jsonl``.
    ``sme_unseen`` compares the judge with SME labels it did not train on;
    ``held_back_human_labels`` with the file's labels of items outside the
    SME sample, which never entered the database as reviews.
    """
    slug = slugify(data.stem)[:50] or "demo"
    Project.objects.filter(slug=slug).delete()
    project = Project.objects.create(slug=slug, name=f"Demo: {data.name}")
    progress(f"importing {data}")
    with data.open("rb") as stream:
        report = import_items(
            project=project,
            stream=stream,
            fmt=detect_format(data.name),
            import_labels=False,
            progress=lambda rows: progress(f"importing: {rows} rows read"),
        )
    if report.fatal:
        raise ValueError(f"{data}: {report.fatal}")
    if not project.items.exists():
        shown = "; ".join(f"line {e.line}: {e.reason}" for e in report.errors[:3])
        raise ValueError(
            f"{data}: no item imported: every one of its {len(report.errors)} non-blank lines was refused"
            + (f" ({shown}{'; ...' if len(report.errors) > 3 else ''})" if shown else "")
        )
    sample_for_review(project=project, fraction=fraction, seed=seed)
    labels = read_labels(data)
    queued = set(project.items.filter(in_sme_queue()).values_list("external_id", flat=True))
    sme_labels = {ext: label for ext, label in labels.items() if ext in queued}
    held_back = {ext: label for ext, label in labels.items() if ext not in queued}
    prior_labels_import(project=project, labels=sme_labels)
    progress(f"{len(sme_labels)} SME labels imported for {len(queued)} sampled items")
    # A few more queued items without labels, so the review screen has work to show.
    sample_for_review(project=project, n=len(queued) + BROWSER_QUEUE, seed=seed + 1)
    with transaction.atomic():
        rules_install_examples(project)
    label_functions_apply(project=project)
    run = judge_and_wait(project, progress)
    waiting_for_smes = 0
    certification = None
    if run.status == JudgeRun.Status.FINISHED:
        # Whoever runs the demo chooses its one run as the gating policy (logged, with no user).
        gating_policy_set(project=project, tiers=[(run, None)])
        progress(f"gating policy: run {run.pk} decides the items without SME ground truth")
        certification = certification_set(project=project, target=target, delta=delta)
        progress(
            f"certificate: {certification.certified} judge accepts certified at precision ≥ {target:g} "
            f"with confidence {1 - delta:g}"
        )
    else:
        if run.backend != JudgeRun.Backend.LOCAL:
            raise RuntimeError(f"judge run {run.pk} failed: {run.error}")
        # Too few SME labels (or of one kind only) to train on: what the SMEs decided still goes out, the rest
        # waits for them.
        truth = ground_truth(project=project)
        undecided = [pk for pk in project.items.values_list("id", flat=True) if pk not in truth]
        queue_add(project=project, item_ids=undecided)
        waiting_for_smes = len(undecided)
        progress(
            f"the local judge cannot train yet: {run.error}. "
            + (
                f"The {waiting_for_smes} items without SME ground truth stay pending and are queued for SME "
                "review; label more of them and run the judge again."
                if waiting_for_smes
                else "Every item has SME ground truth, so there is nothing left for it to judge."
            )
        )
    project_regate_now(project=project)  # here, recorded: the certificate is applied before the exports

    out.mkdir(parents=True, exist_ok=True)
    digest, lines = hashlib.sha256(), 0
    with (out / "accepted.jsonl").open("wb") as fh:
        for line in iter_chat_jsonl(project):
            fh.write(line)
            digest.update(line)
            lines += 1
    progress("building a training-set snapshot")
    training_set = TrainingSet.objects.create(
        project=project, name="demo", format=TrainingSet.Format.CHAT, validation_fraction=0.1, seed=seed
    )
    training_set = training_set_build(training_set_id=training_set.pk)
    snapshot_paths = {}
    for split in TrainingSetRow.Split.values:
        snapshot_paths[split] = out / f"training-set-{split}.jsonl"
        with snapshot_paths[split].open("wb") as fh:
            for chunk in iter_file(training_set, split):
                fh.write(chunk)
    verdicts = dict(Verdict.objects.filter(run=run).exclude(verdict="").values_list("item__external_id", "verdict"))
    held_pairs = [(label, verdicts[ext]) for ext, label in held_back.items() if ext in verdicts]
    result = {
        "data": str(data),
        "project": project.slug,
        "judge": {
            "run": run.pk,
            "backend": run.backend,
            "name": run.judge_label,
            "status": run.status,
            "error": run.error,
            "config": run.config,
            "tokens_in": run.tokens_in,
            "tokens_out": run.tokens_out,
        },
        "waiting_for_smes": waiting_for_smes,
        "import": report.as_dict() | {"errors": report.as_dict()["errors"][:50]},
        "sme_labels": len(sme_labels),
        "held_back_labels": len(held_back),
        "funnel": funnel(project),
        "agreement": {
            "sme_unseen": run_agreement(run),
            "held_back_human_labels": agreement([t for t, _ in held_pairs], [v for _, v in held_pairs]),
        },
        "estimate": accepted_set_precision(project),
        "certificate": _certificate_report(certification),
        "held_back": certificate_held_back(certification) if certification else {"pending": 0, "queued": 0},
        "export": {"path": str(out / "accepted.jsonl"), "lines": lines, "sha256": digest.hexdigest()},
        "training_set": {
            "id": training_set.pk,
            "format": training_set.format,
            "status": training_set.status,
            "rows_train": training_set.rows_train,
            "rows_validation": training_set.rows_validation,
            "duplicates": training_set.duplicates,
            "sha256": training_set.sha256,
            "files": {
                split: {"path": str(path), **training_set.files[split]} for split, path in snapshot_paths.items()
            },
        },
    }
    # Not JSON lines, but read with line-oriented tools all the same, and it holds project text (the judge prompt).
    (out / "report.json").write_text(
        escape_unicode_line_breaks(json.dumps(result, indent=2, ensure_ascii=False)) + "\n"
    )
    return result


def _certificate_report(certification) -> dict | None:
    """The report's view of a ``Certification``: its fields and the certificate's ``result``; None for none."""
    if certification is None:
        return None
    fields = ("id", "target", "delta", "threshold", "method", "n", "n_labelled", "bound", "certified", "policy")
    return {name: getattr(certification, name) for name in fields} | {
        "design": certification.design,
        "result": certification.result,
    }
