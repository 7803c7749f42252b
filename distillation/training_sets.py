"""Training-set snapshots: which decided items go in, written how, frozen and hashed.

A snapshot is built in one pass over the selected items (streamed, in
batches): each item becomes one row of text in the chosen format, or an entry
in the report saying why it could not be written. Rows are stored as the exact
text that will be downloaded, so a download months later gives the same bytes.

The formats and how each writes a row are ``distillation.formats`` (a
registry keyed by format). DPO rows need a partner: *chosen* is an accepted
response (an SME's correction wins over the original) or an SME's correction
of a rejected response; *rejected* is always a student's response (an item
imported, not a teacher's answer) the gate rejected: for a correction of a
student's response, the response it corrects; for an accepted response, and
for an SME's correction of a teacher's rejected answer, a rejected response
to the same prompt and context from any of the student's items of the
project, whatever the filters (they choose the chosen side). A teacher's
answer the gate did not accept is written in no format, on neither side of
a pair (only an SME's correction of it may be chosen). Pairing is one-to-one
within a prompt and context, so no rejected response is used twice while
another is unused: corrections of student responses first take the
responses they correct (two corrections of the same text both pair with
it); then each teacher answer (accepted, or its correction) takes the
rejected response of the item it answers, while that is free; then the
other accepted responses (the student's own, and teacher answers whose own
partner was taken), ordered by ``sha256(seed, text)``, take the remaining
distinct rejected responses, ordered the same way, one each (never one
equal to the chosen text). A
prompt thus gives at most as many pairs as it has distinct rejected
responses; an accepted item left without a partner (the prompt has no
rejected response, or all are taken) cannot be written and is listed in the
report with why. The pairs depend only on the content and the seed.

Order and hash: rows are ordered within a split by the sha256 of their text,
and an item goes to validation when ``sha256(seed, row hash)`` falls under
``validation_fraction``; so the same content with the same options always
gives the same file and the same sha256, whatever the item ids or dates.
"""

import hashlib
import logging
import os
import socket
import uuid
from collections import defaultdict, deque
from collections.abc import Iterator
from dataclasses import dataclass

from django.conf import settings
from django.db import DatabaseError, InterfaceError, connection, transaction
from django.db.models import Count, Exists, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Now
from django.utils import timezone
from rest_framework import serializers

from annotations.models import Adjudication, Item, Project, Review
from distillation.formats import Candidate, content_sha256, file_header, refusal, terminator, write_row
from distillation.models import TrainingSet, TrainingSetRow
from distillation.serializers import TrainingSetOptions
from judging.certify import ASSUMPTIONS as CERTIFICATE_ASSUMPTIONS
from judging.models import NO_POLICY, GateDecision, JudgeRun, LabelFunction, Verdict
from judging.selectors import (
    certification_current,
    certification_staleness,
    certification_unapplied,
    gating_policy,
)

logger = logging.getLogger(__name__)

WRITE_BATCH = 1000
READ_CHUNK = 2000
DOWNLOAD_BUFFER = 256 * 1024
SPLITS = (TrainingSetRow.Split.TRAIN, TrainingSetRow.Split.VALIDATION)


class TrainingSetError(ValueError):
    """The options of a training set are not usable (a filter names an unknown judge run, say)."""


def selected_items(project: Project, fmt: str, filters: dict) -> QuerySet[Item]:
    """The items a training set of ``fmt`` draws from, after ``filters``, in item order.

    Chat, Alpaca, ShareGPT and CSV take the accepted set (a teacher's accepted
    answers included); reasoning rows the accepted items that carry
    reasoning; DPO also takes rejected items that an SME corrected (for a
    teacher's answer only the correction is written, never the answer); judge
    rows take every accepted item and every rejected student item (a
    teacher's answer the gate did not accept is in no format). Pending items
    (a teacher's answer no judge has decided, a prompt without a response)
    are never taken. ``filters`` keys (all
    optional): ``source_models``, ``task_types`` (lists of strings),
    ``judge_run`` (a run id: items it judged), ``created_after``,
    ``created_before`` (ISO dates or datetimes, on the item's import time).
    Raises TrainingSetError for a judge run not in the project.
    """
    items = Item.objects.filter(project=project)
    accepted = Q(gate_decision__outcome=GateDecision.Outcome.ACCEPT)
    rejected = Q(gate_decision__outcome=GateDecision.Outcome.REJECT)
    if fmt == TrainingSet.Format.JUDGE:
        # A teacher's answer the gate did not accept is never exported, not even as a "reject" row.
        items = items.filter(accepted | (rejected & Q(answers__isnull=True)))
    elif fmt == TrainingSet.Format.DPO:
        corrected = Review.objects.filter(item=OuterRef("pk")).exclude(corrected_response="")
        items = items.filter(accepted | (rejected & Exists(corrected)))
    elif fmt == TrainingSet.Format.REASONING:
        items = items.filter(accepted).exclude(reasoning="")
    else:
        items = items.filter(accepted)
    if filters.get("source_models"):
        items = items.filter(source_model__in=filters["source_models"])
    if filters.get("task_types"):
        items = items.filter(task_type__in=filters["task_types"])
    if filters.get("judge_run") is not None:
        if not JudgeRun.objects.filter(project=project, pk=filters["judge_run"]).exists():
            raise TrainingSetError(f"filters.judge_run: no judge run {filters['judge_run']} in this project")
        items = items.filter(verdicts__run_id=filters["judge_run"]).exclude(verdicts__verdict="")
    if filters.get("created_after"):
        items = items.filter(created_at__gte=filters["created_after"])
    if filters.get("created_before"):
        items = items.filter(created_at__lt=filters["created_before"])
    return items.order_by("id")


def _candidates(items: QuerySet[Item], fmt: str) -> Iterator[Candidate]:
    latest = ("-updated_at", "-id")
    reviews = Review.objects.filter(item=OuterRef("pk"))
    items = items.annotate(
        corrected=Subquery(reviews.exclude(corrected_response="").order_by(*latest).values("corrected_response")[:1])
    )
    columns = [
        "id",
        "external_id",
        "prompt",
        "context",
        "response",
        "corrected",
        "source_model",
        "task_type",
        "gate_decision__outcome",
        "gate_decision__basis",
        "gate_decision__vetoed",
        "gate_decision__reasons",
        "reasoning",
        "answers__response",
    ]
    if fmt == TrainingSet.Format.JUDGE:
        agreeing = reviews.filter(decision=OuterRef("gate_decision__basis_decision")).order_by(*latest)
        items = items.annotate(
            judge_rationale=Subquery(
                Verdict.objects.filter(item=OuterRef("pk"), run=OuterRef("gate_decision__judge_run")).values(
                    "rationale"
                )[:1]
            ),
            adjudication_reason=Subquery(Adjudication.objects.filter(item=OuterRef("pk")).values("reason")[:1]),
            sme_comment=Subquery(agreeing.exclude(comment="").values("comment")[:1]),
            sme_reason=Subquery(agreeing.exclude(reason="").values("reason")[:1]),
        )
        columns += ["judge_rationale", "adjudication_reason", "sme_comment", "sme_reason"]
    for row in items.values_list(*columns).iterator(chunk_size=READ_CHUNK):
        candidate = Candidate(*row[:12])
        candidate.reasoning, candidate.answered_response = row[12], row[13]
        if fmt == TrainingSet.Format.JUDGE:
            judge_rationale, adjudication_reason, sme_comment, sme_reason = row[14:]
            if candidate.vetoed:
                candidate.rationale = "Rejected by rule: " + "; ".join(candidate.reasons)
            elif candidate.basis in (GateDecision.Basis.JUDGE, GateDecision.Basis.TIER):
                candidate.rationale = judge_rationale or ""
            else:
                candidate.rationale = adjudication_reason or sme_comment or sme_reason or ""
        yield candidate


def _group_key(prompt: str, context: str) -> str:
    return hashlib.sha256(f"{prompt}\x1f{context}".encode()).hexdigest()


def _rejected_pool(project: Project) -> dict[str, set[str]]:
    """The student's rejected responses per (prompt, context), distinct: DPO's rejected side. A teacher's
    rejected answer (an item that ``answers`` another) is no student response and is left out."""
    pool: dict[str, set[str]] = defaultdict(set)
    rows = Item.objects.filter(
        project=project, gate_decision__outcome=GateDecision.Outcome.REJECT, answers__isnull=True
    )
    for prompt, context, response in rows.values_list("prompt", "context", "response").iterator(chunk_size=READ_CHUNK):
        pool[_group_key(prompt, context)].add(response)
    return pool


def _rank(seed: int, text: str) -> str:
    return hashlib.sha256(f"{seed}\x1f{text}".encode()).hexdigest()


def _dpo_pairs(candidates: list[Candidate], pool: dict[str, set[str]], seed: int) -> dict[int, tuple[str | None, str]]:
    """``{item_id: (rejected response, "")}`` for every candidate that gets a DPO pair, ``(None, why not)`` for
    the others: one-to-one within a prompt group, as the module docstring says."""
    groups: dict[str, list[Candidate]] = defaultdict(list)
    for candidate in candidates:
        groups[_group_key(candidate.prompt, candidate.context)].append(candidate)
    pairs: dict[int, tuple[str | None, str]] = {}
    for key, members in groups.items():
        used = set()
        for candidate in members:
            # A student's rejected response an SME corrected: the correction pairs with what it corrects. (A
            # teacher's rejected answer is no student response: its correction pairs as an accepted one does.)
            if candidate.outcome == GateDecision.Outcome.REJECT and not candidate.is_teacher_answer:
                if candidate.best_response == candidate.response:
                    pairs[candidate.item_id] = None, "the SME correction equals the rejected response"
                else:
                    pairs[candidate.item_id] = candidate.response, ""
                    used.add(candidate.response)
        free = deque(sorted(pool.get(key, set()) - used, key=lambda text: _rank(seed, text)))
        accepted = [c for c in members if c.item_id not in pairs]
        # A teacher's answer first takes the rejected response it was written for, while that is free.
        for candidate in sorted(accepted, key=lambda c: (_rank(seed, c.best_response), c.item_id)):
            own = candidate.answered_response
            if own is not None and own in free and own != candidate.best_response:
                pairs[candidate.item_id] = own, ""
                free.remove(own)
        accepted = [c for c in accepted if c.item_id not in pairs]
        for candidate in sorted(accepted, key=lambda c: (_rank(seed, c.best_response), c.item_id)):
            chosen = candidate.best_response
            # The first free response that is not the chosen text itself (free texts are distinct: one at most is).
            if free and free[0] != chosen:
                pairs[candidate.item_id] = free.popleft(), ""
                continue
            if len(free) > 1:
                pairs[candidate.item_id] = free[1], ""
                del free[1]
                continue
            partners = len(pool.get(key, set()) - {chosen})
            pairs[candidate.item_id] = (
                None,
                (
                    f"each rejected response to the same prompt and context pairs once, and all {partners} are taken"
                    if partners
                    else "no rejected response to the same prompt and context"
                ),
            )
    return pairs


def _split_of(content_sha256: str, seed: int, validation_fraction: float) -> str:
    draw = int(hashlib.sha256(f"{seed}:{content_sha256}".encode()).hexdigest()[:13], 16) / 16**13
    return TrainingSetRow.Split.VALIDATION if draw < validation_fraction else TrainingSetRow.Split.TRAIN


def _lineage(training_set: TrainingSet, items: QuerySet[Item]) -> dict:
    ids = items.order_by().values("id")
    basis = {
        row["gate_decision__basis"]: row["n"]
        for row in items.order_by().values("gate_decision__basis").annotate(n=Count("id"))
    }
    runs = JudgeRun.objects.filter(pk__in=items.order_by().values("gate_decision__judge_run")).order_by("id")
    policy = gating_policy(training_set.project)
    reviews = Review.objects.filter(item_id__in=ids)
    return {
        "format": training_set.format,
        "filters": training_set.filters,
        "seed": training_set.seed,
        "validation_fraction": training_set.validation_fraction,
        "dedupe": training_set.dedupe,
        "system_prompt_sha256": hashlib.sha256(training_set.system_prompt.encode()).hexdigest(),
        "decided_by": {
            "sme": basis.get(GateDecision.Basis.SME, 0),
            "judge": basis.get(GateDecision.Basis.JUDGE, 0) + basis.get(GateDecision.Basis.TIER, 0),
            "rules_only": basis.get(GateDecision.Basis.NONE, 0),
        },
        "gating_policy": policy.snapshot() if policy else {},
        "vetoed": items.filter(gate_decision__vetoed=True).count(),
        "reviews": {
            "sme": reviews.filter(origin=Review.Origin.UI).count(),
            "imported": reviews.filter(origin=Review.Origin.IMPORT).count(),
            "adjudications": Adjudication.objects.filter(item_id__in=ids).count(),
        },
        "judge_runs": [{"id": run.pk, "judge": run.judge_label, "config": run.config} for run in runs],
        "label_functions": [
            {"id": rule.pk, "name": rule.name, "version": rule.version, "reason": rule.reason}
            for rule in LabelFunction.objects.filter(project=training_set.project, active=True).order_by("id")
        ],
        "certificate": snapshot_certificate(training_set.project, policy.label if policy else NO_POLICY),
    }


def snapshot_certificate(project, policy_now: str) -> dict:
    """The accepted set's certificate as a snapshot records it (lineage and report): ``{"certified": bool,
    "statement", "target", "delta", "bound", "threshold", "items_certified", "method", "sme_labels": {"n" at the
    threshold, "n_labelled" used, "design": {...}}, "gating_policy" (when certified), "gating_policy_now",
    "policy_changed_since", "changed_since" (``selectors.certification_staleness``: SME labels, policy and
    calibration changed since it was computed, whether that voids it, and a statement; a void certificate is
    ``certified`` False: the gate certifies nothing), "certified_at", "certification",
    "assumptions"}``; without a certificate only
    ``certified`` False, the statement and the assumptions a certificate would rest on."""
    c = certification_current(project)
    if c is None:
        return {
            "certified": False,
            "statement": "No certificate: no lead has set a precision target for the accepted set.",
            "gating_policy_now": policy_now,
            "assumptions": list(CERTIFICATE_ASSUMPTIONS),
        }
    since = certification_staleness(c)
    if since["void"]:
        statement = f"Nothing certified now: {since['void_reason']}"
    elif c.threshold is None:
        statement = (
            f"Nothing certified: {c.result.get('reason', '')} The gate leaves every judge accept pending for the SMEs."
        )
    else:
        statement = (
            f"Precision at least {c.target:g} with confidence {1 - c.delta:g} for the {c.certified} judge-accepted "
            f"items of P(accept) >= {c.threshold:g} (lower bound {c.bound:.3f}, from {c.n} SME labels). The gate "
            "leaves a judge's accepts below the threshold pending for the SMEs."
        )
    return {
        "certified": c.threshold is not None and not since["void"],
        "statement": statement,
        "target": c.target,
        "delta": c.delta,
        "bound": c.bound,
        "threshold": c.threshold,
        "items_certified": c.certified,
        "method": c.method,
        "sme_labels": {"n": c.n, "n_labelled": c.n_labelled, "design": c.design},
        "gating_policy": c.policy,
        "gating_policy_now": policy_now,
        "policy_changed_since": c.policy != policy_now,
        "changed_since": {key: value for key, value in since.items() if key not in ("labels_used", "policy_now")},
        "certified_at": c.created_at.isoformat(),
        "certification": c.pk,
        "assumptions": c.result.get("assumptions", list(CERTIFICATE_ASSUMPTIONS)),
    }


def _hash_files(training_set: TrainingSet) -> tuple[dict, str, int]:
    """One pass over the stored rows: per split rows, bytes and sha256, and the whole download's."""
    header, ends = file_header(training_set.format), terminator(training_set.format)
    whole = hashlib.sha256(header)
    per_split = {split: {"rows": 0, "bytes": len(header), "hash": hashlib.sha256(header)} for split in SPLITS}
    for split, line in _ordered_rows(training_set).values_list("split", "line").iterator(chunk_size=READ_CHUNK):
        data = (line + ends).encode()
        part = per_split[split]
        part["rows"] += 1
        part["bytes"] += len(data)
        part["hash"].update(data)
        whole.update(data)
    files = {
        split: {"rows": part["rows"], "bytes": part["bytes"], "sha256": part["hash"].hexdigest()}
        for split, part in per_split.items()
    }
    size = len(header) + sum(part["bytes"] - len(header) for part in files.values())
    return files, whole.hexdigest(), size


def _ordered_rows(training_set: TrainingSet, split: str | None = None) -> QuerySet[TrainingSetRow]:
    rows = TrainingSetRow.objects.filter(training_set=training_set)
    if split:
        rows = rows.filter(split=split)
    return rows.order_by("split", "content_sha256", "id")


class ClaimLost(RuntimeError):
    """Another build attempt holds the set now (this one's lease ran out, or the set was deleted)."""


@dataclass
class _Claim:
    """A build attempt's hold on a ``building`` set: every write goes through ``update``, which checks it."""

    training_set_id: int
    token: str

    def update(self, **fields) -> None:
        """Write ``fields`` on the set and renew the lease, if this attempt still holds it; else raise ClaimLost.

        Inside a transaction the set's row stays locked until commit, so no other attempt can take the set
        over between this check and the writes that follow it in the same transaction.
        """
        held = TrainingSet.objects.filter(
            pk=self.training_set_id, claimed_by=self.token, status=TrainingSet.Status.BUILDING
        )
        if not held.update(**{"claimed_until": _lease_end(), **fields}):
            raise ClaimLost(f"training set {self.training_set_id} is no longer held by {self.token}")


def _lease_end():
    # The database's clock, not the worker's: workers on several machines compare the same times.
    return Now() + timezone.timedelta(seconds=settings.LARRY_TRAINING_SET_LEASE_S)


def _claim(training_set_id: int) -> _Claim | None:
    """Claim a ``building`` set that no live attempt holds (none ever did, or its lease ran out), and delete
    the rows an earlier attempt left; None when the set is built, failed, gone, or held by a live attempt."""
    claim = _Claim(training_set_id, f"{socket.gethostname()[:100]}/{os.getpid()}/{uuid.uuid4().hex[:12]}")
    with transaction.atomic():
        claimed = (
            TrainingSet.objects.filter(pk=training_set_id, status=TrainingSet.Status.BUILDING)
            .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lte=Now()))
            .update(claimed_by=claim.token, claimed_until=_lease_end(), items_done=0)
        )
        if not claimed:
            return None
        TrainingSetRow.objects.filter(training_set_id=training_set_id).delete()
    return claim


def _write(claim: _Claim, batch: list[TrainingSetRow], items_done: int) -> None:
    with transaction.atomic():
        claim.update(items_done=items_done)
        TrainingSetRow.objects.bulk_create(batch)


def _refuse_unapplied_certificate(project: Project, certification_id: int | None) -> None:
    """Raise TrainingSetError when the certificate in force is not applied yet by the gate
    (``selectors.certification_unapplied``), or is not ``certification_id`` (the one in force when the build
    began: one chosen since may hold back rows already written)."""
    if unapplied := certification_unapplied(project):
        raise TrainingSetError(f"{unapplied} Snapshot again once it has.")
    now = certification_current(project)
    if (now.pk if now else None) != certification_id:
        raise TrainingSetError(
            "A new certificate was chosen while the snapshot was built; snapshot again once the gate has applied it."
        )


def _build(training_set: TrainingSet, claim: _Claim) -> None:
    fmt, seed = training_set.format, training_set.seed
    # Never ship judge accepts a certificate holds back: refuse before and after selecting the rows.
    started = certification_current(training_set.project)
    _refuse_unapplied_certificate(training_set.project, started.pk if started else None)
    items = selected_items(training_set.project, fmt, training_set.filters)
    claim.update(items_selected=items.count())
    candidates = _candidates(items, fmt)
    pool, pairs = {}, {}
    if fmt == TrainingSet.Format.DPO:
        # Pairs are formed within a prompt group, whatever the item order: the selection is held in memory.
        pool, candidates = _rejected_pool(training_set.project), list(candidates)
        pairs = _dpo_pairs(candidates, pool, seed)
        claim.update()
    first_of: dict[str, str] = {}
    duplicates, unwritable, batch = [], [], []
    selected = 0
    rows_by_split = {split: 0 for split in SPLITS}
    for candidate in candidates:
        selected += 1
        if selected % WRITE_BATCH == 0:
            _write(claim, batch, selected)
            batch = []
        rejected = ""
        if fmt == TrainingSet.Format.DPO:
            rejected, problem = pairs[candidate.item_id]
            if rejected is None:
                unwritable.append({"external_id": candidate.external_id, "reason": problem})
                continue
        if problem := refusal(fmt, candidate):
            unwritable.append({"external_id": candidate.external_id, "reason": problem})
            continue
        line = write_row(fmt, candidate, system_prompt=training_set.system_prompt, rejected=rejected)
        digest = content_sha256(fmt, candidate, line)
        if training_set.dedupe and digest in first_of:
            duplicates.append({"external_id": candidate.external_id, "duplicate_of": first_of[digest]})
            continue
        first_of.setdefault(digest, candidate.external_id)
        split = _split_of(digest, seed, training_set.validation_fraction)
        rows_by_split[split] += 1
        batch.append(
            TrainingSetRow(
                training_set=training_set,
                split=split,
                content_sha256=digest,
                item_id=candidate.item_id,
                external_id=candidate.external_id,
                line=line,
            )
        )
    _write(claim, batch, selected)
    files, sha256, size = _hash_files(training_set)
    claim.update()
    _refuse_unapplied_certificate(training_set.project, started.pk if started else None)
    lineage = _lineage(training_set, items)
    if fmt == TrainingSet.Format.DPO:
        lineage["dpo_rejected_responses"] = sum(len(responses) for responses in pool.values())
    # Ready only if this attempt still holds the set: then no other attempt has touched its rows.
    claim.update(
        items_selected=selected,
        items_done=selected,
        rows_train=rows_by_split[TrainingSetRow.Split.TRAIN],
        rows_validation=rows_by_split[TrainingSetRow.Split.VALIDATION],
        duplicates=len(duplicates),
        unwritable=len(unwritable),
        report={"duplicates": duplicates, "unwritable": unwritable, "certificate": lineage["certificate"]},
        lineage=lineage,
        files=files,
        sha256=sha256,
        size_bytes=size,
        status=TrainingSet.Status.READY,
        finished_at=Now(),
        claimed_until=None,
    )


def training_set_build(*, training_set_id: int) -> TrainingSet:
    """Build a training set that is still ``building``, unless another attempt holds it; returns the set.

    A set already built or failed is left as it is. The build first claims
    the set with a conditional UPDATE (``TrainingSet.claimed_by``), for a
    lease of ``LARRY_TRAINING_SET_LEASE_S`` seconds that it renews with every
    batch of rows it writes, each in one transaction with the renewal. So a
    second delivery of the task while the first attempt runs finds the set
    held and returns it still ``building`` (the caller may look again when
    ``claimed_until`` has passed); an attempt whose worker died is taken over
    once its lease has run out, its rows deleted first; and an attempt that
    finds its claim gone (it stalled past its lease) stops without touching
    anything. Progress shows in ``items_done`` of ``items_selected``. On any
    other error nothing of the rows stays, and the set is marked ``failed``
    with the error (a TrainingSetError's message names the option at fault);
    nothing is raised. Raises TrainingSet.DoesNotExist for an unknown id.
    """
    claim = _claim(training_set_id)
    if claim is not None:
        # Not one transaction, so that the progress shows; the set is not downloadable until ``ready``.
        try:
            _build(TrainingSet.objects.select_related("project").get(pk=training_set_id), claim)
        except ClaimLost:
            logger.warning("training set %s was taken over or deleted; %s stops", training_set_id, claim.token)
        except Exception as exc:
            # Recorded on the set, where its owner looks (API and admin), and logged in full for operators.
            _record_failure(training_set_id, claim, exc)
            if not isinstance(exc, TrainingSetError):
                logger.exception("building training set %s failed", training_set_id)
    return TrainingSet.objects.select_related("project").get(pk=training_set_id)


def _record_failure(training_set_id: int, claim: "_Claim", exc: Exception) -> None:
    """Mark the set failed with the error and drop its rows, if this attempt still holds it.

    The error may have struck in the middle of a query (Celery's soft time limit is a signal): the
    connection can then be left inside a transaction it cannot leave, so on a database error the failure
    is written again on a fresh connection.
    """

    def write() -> None:
        with transaction.atomic():
            failed = TrainingSet.objects.filter(
                pk=training_set_id, claimed_by=claim.token, status=TrainingSet.Status.BUILDING
            ).update(
                status=TrainingSet.Status.FAILED,
                error=f"{type(exc).__name__}: {exc}"[:5000],
                finished_at=Now(),
                claimed_until=None,
            )
            if failed:
                TrainingSetRow.objects.filter(training_set_id=training_set_id).delete()

    try:
        write()
    except (DatabaseError, InterfaceError):
        connection.close()
        write()


def claim_seconds_left(training_set: TrainingSet) -> float:
    """Seconds until the lease of the attempt building ``training_set`` runs out (0 when none holds it)."""
    if training_set.claimed_until is None:
        return 0.0
    return max(0.0, (training_set.claimed_until - timezone.now()).total_seconds())


def iter_file(training_set: TrainingSet, split: str | None = None) -> Iterator[bytes]:
    """The bytes of a built training set (one split, or both: train then validation), streamed in ~256 KB pieces.

    The whole download's sha256 is ``training_set.sha256``; a split's is in
    ``training_set.files[split]["sha256"]``.
    """
    ends = terminator(training_set.format)
    buffer, size = [file_header(training_set.format)], 0
    lines = _ordered_rows(training_set, split).values_list("line", flat=True).iterator(chunk_size=READ_CHUNK)
    for line in lines:
        data = (line + ends).encode()
        buffer.append(data)
        size += len(data)
        if size >= DOWNLOAD_BUFFER:
            yield b"".join(buffer)
            buffer, size = [], 0
    yield b"".join(buffer)


def training_set_create(*, project: Project, options: dict, user=None) -> TrainingSet:
    """Validate ``options`` (a dict, see TrainingSetOptions), create the snapshot and build it after commit.

    Raises rest_framework's ValidationError with per-field messages for bad
    options. The build runs as a Celery task (in-process without a broker);
    the set is ``building`` until then.
    """
    data = TrainingSetOptions(data=options)
    data.is_valid(raise_exception=True)
    filters = data.validated_data["filters"]
    if filters.get("judge_run") and not JudgeRun.objects.filter(project=project, pk=filters["judge_run"]).exists():
        raise serializers.ValidationError({"filters": {"judge_run": [f"no judge run {filters['judge_run']} here"]}})
    training_set = TrainingSet.objects.create(project=project, created_by=user, **data.validated_data)
    from distillation.tasks import build_training_set

    transaction.on_commit(lambda: build_training_set.delay(training_set.pk))
    return training_set
