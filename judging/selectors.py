"""Reads for the judging app: the gating policy, funnel, agreement, few-shot examples, label-function analytics."""

import random
import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime

from django.conf import settings
from django.db.models import Count, Max, Prefetch, Q
from django.utils import timezone

from annotations.models import Adjudication, Project, Review, ReviewChange
from annotations.queue import in_sme_queue
from annotations.selectors import ground_truth
from annotations.statistics import cohen_kappa_bootstrap_ci, wilson_interval
from judging import gate
from judging.label_functions import first_match
from judging.metrics import agreement
from judging.models import (
    NO_POLICY,
    Certification,
    GateDecision,
    GatingPolicy,
    GatingPolicyChange,
    JudgeRun,
    JudgeWork,
    LabelFunction,
    PolicyTier,
    RegateRequest,
    RuleHit,
    Verdict,
)
from larry_web import work


def gating_policy(project: Project) -> GatingPolicy | None:
    """The project's gating policy in force, its tiers (with their runs) prefetched; None when no lead has
    chosen one: then no judge decides, only SME ground truth and the rules (``services.gating_policy_set``)."""
    return (
        GatingPolicy.objects.filter(project=project)
        .select_related("updated_by")
        .prefetch_related(Prefetch("tiers", queryset=PolicyTier.objects.select_related("run")))
        .first()
    )


def tier_runs(tier: PolicyTier) -> list[int]:
    """The ids of the runs whose verdicts a tier of the gating policy reads: its own run, then the finished runs
    that extend it to items added since (``services.judge_run_extend``: the same judge, prompt and few-shot
    examples, calibrated on the same SME labels), oldest first."""
    extensions = JudgeRun.objects.filter(status=JudgeRun.Status.FINISHED, config__extends=tier.run_id).order_by("id")
    return [tier.run_id, *extensions.values_list("id", flat=True)]


def policy_verdicts(
    project: Project, *, policy: GatingPolicy | None = None, item_ids: list[int] | None = None
) -> dict[int, tuple[PolicyTier, str]]:
    """``{item_id: (tier, verdict)}`` for the items some tier of the project's gating policy decides
    (``gate.tier_verdict``: the first tier, in order, whose verdict's calibrated certainty clears its threshold);
    ``{}`` without a policy. Tiers that decide nothing are skipped. Pass ``policy`` when already read."""
    policy = policy if policy is not None else gating_policy(project)
    if policy is None:
        return {}
    # A tier's run decides only while finished (a run in force cannot be resumed; this holds whatever happened).
    tiers = [tier for tier in policy.tiers.all() if tier.decides and tier.run.status == JudgeRun.Status.FINISHED]
    nothing = gate.TierVerdict(None, None, None)
    by_item: dict[int, list] = defaultdict(lambda: [nothing] * len(tiers))
    for index, tier in enumerate(tiers):
        rows = Verdict.objects.filter(run_id__in=tier_runs(tier)).exclude(verdict="")
        if item_ids is not None:
            rows = rows.filter(item_id__in=item_ids)
        for item_id, verdict, p in rows.values_list("item_id", "verdict", "confidence_calibrated").iterator(
            chunk_size=2000
        ):
            by_item[item_id][index] = gate.TierVerdict(verdict, p, tier.threshold)
    decided = {}
    for item_id, says in by_item.items():
        found = gate.tier_verdict(says)
        if found is not None:
            decided[item_id] = (tiers[found[0]], found[1])
    return decided


def policy_certainty(project: Project, *, policy: GatingPolicy | None = None) -> dict[int, float]:
    """``{item_id: certainty}``: the highest calibrated certainty in its own verdict (``gate.verdict_certainty``)
    any of the policy's tiers has on the item (items with no calibrated verdict are left out); ``{}`` without a
    policy. Orders the SME queue."""
    policy = policy if policy is not None else gating_policy(project)
    if policy is None:
        return {}
    run_ids = [run_id for tier in policy.tiers.all() for run_id in tier_runs(tier)]
    best: dict[int, float] = {}
    rows = (
        Verdict.objects.filter(run_id__in=run_ids, confidence_calibrated__isnull=False)
        .exclude(verdict="")
        .values_list("item_id", "verdict", "confidence_calibrated")
    )
    for item_id, verdict, p in rows.iterator(chunk_size=2000):
        best[item_id] = max(best.get(item_id, 0.0), gate.verdict_certainty(verdict, p))
    return best


def funnel(project: Project) -> dict:
    """Counts along the pipeline, from the gate's stored decisions, and the gating policy in force.

    ``imported`` = ``accepted + rejected + pending``; ``accepted`` =
    ``accepted_before_rules - vetoed_accepts``. ``judged`` counts items with a
    verdict (not an error) from some run of the gating policy, ``judge_errors``
    items with only errors from them; ``policy`` names the policy in force
    (``GatingPolicy.label``, or ``NO_POLICY``); ``by_tier`` is ``[{"tier", "decided"}]``, the items each tier of the
    policy in force decided, in tier order (before rules: a vetoed item counts for the tier that decided it).
    """
    items = project.items
    policy = gating_policy(project)
    run_ids = [tier.run_id for tier in policy.tiers.all()] if policy else []
    Outcome, Basis = GateDecision.Outcome, GateDecision.Basis
    decisions = GateDecision.objects.filter(item__project=project).aggregate(
        accepted=Count("id", filter=Q(outcome=Outcome.ACCEPT)),
        rejected=Count("id", filter=Q(outcome=Outcome.REJECT)),
        pending=Count("id", filter=Q(outcome=Outcome.PENDING)),
        by_sme=Count("id", filter=Q(basis=Basis.SME)),
        by_judge=Count("id", filter=Q(basis__in=[Basis.JUDGE, Basis.TIER])),
        accepted_before_rules=Count("id", filter=Q(basis_decision=Outcome.ACCEPT)),
        vetoed_total=Count("id", filter=Q(vetoed=True)),
        vetoed_accepts=Count("id", filter=Q(vetoed=True, basis_decision=Outcome.ACCEPT)),
    )
    imported = items.count()
    tier_counts = {
        (tier, run_id): n
        for tier, run_id, n in GateDecision.objects.filter(item__project=project, tier__isnull=False)
        .values_list("tier", "judge_run_id")
        .annotate(n=Count("id"))
        .order_by()
    }
    by_tier = (
        [{"tier": t.tier, "decided": tier_counts.get((t.tier, t.run_id), 0)} for t in policy.tiers.all()]
        if policy
        else []
    )
    verdicts = Verdict.objects.filter(run_id__in=run_ids)
    judged = set(verdicts.exclude(verdict="").values_list("item_id", flat=True)) if run_ids else set()
    failed = set(verdicts.filter(verdict="").values_list("item_id", flat=True)) if run_ids else set()
    return {
        "imported": imported,
        "sme_queued": items.filter(in_sme_queue()).count(),
        "sme_reviewed": len(ground_truth(project=project)),
        "judged": len(judged),
        "judge_errors": len(failed - judged),
        "undecided": imported - sum(decisions[k] for k in ("accepted", "rejected", "pending")),
        "policy": policy.label if policy else NO_POLICY,
        "by_tier": by_tier,
        **decisions,
    }


def gating_policy_candidates(project: Project) -> list[dict]:
    """Every finished run of the project as a candidate for the gating policy, newest first:
    ``[{"run", "agreement": run_agreement(..., interval=True), "confidence": run_confidence_report(...),
    "in_policy": bool}]`` (Cohen's kappa with its 95 % bootstrap interval, on the ``n`` SME-labelled items
    the run judged; the calibration of its confidence: ECE and AUROC with their n; see ``metrics`` and
    ``calibration``)."""
    policy = gating_policy(project)
    in_policy = {tier.run_id for tier in policy.tiers.all()} if policy else set()
    truth = ground_truth(project=project)
    return [
        {
            "run": run,
            "agreement": run_agreement(run, truth, interval=True),
            "confidence": run_confidence_report(run, truth=truth),
            "in_policy": run.pk in in_policy,
        }
        for run in JudgeRun.objects.filter(project=project, status=JudgeRun.Status.FINISHED).order_by("-id")
    ]


def runs_across_time(project: Project, *, candidates: list[dict] | None = None) -> list[dict]:
    """The project's finished runs in the order they finished (oldest first; by id where the time is equal):
    ``[{"run", "agreement": run_agreement(..., interval=True), "sent": verdict rows (items sent to the judge,
    errors included)}]``, for the chart of agreement and cost across runs. Pass ``gating_policy_candidates``'s
    rows as ``candidates`` when already read: their agreement is reused, not computed again."""
    if candidates is None:
        truth = ground_truth(project=project)
        runs = JudgeRun.objects.filter(project=project, status=JudgeRun.Status.FINISHED)
        candidates = [{"run": run, "agreement": run_agreement(run, truth, interval=True)} for run in runs]
    sent = dict(
        Verdict.objects.filter(run_id__in=[c["run"].pk for c in candidates])
        .values_list("run_id")
        .annotate(n=Count("id"))
        .order_by()
    )
    rows = [{"run": c["run"], "agreement": c["agreement"], "sent": sent.get(c["run"].pk, 0)} for c in candidates]
    return sorted(rows, key=lambda row: (row["run"].finished_at or row["run"].created_at, row["run"].pk))


def few_shot_examples(project: Project, *, count: int, seed: int, pinned: Sequence[str] = ()) -> list[dict]:
    """Up to ``count`` items with SME ground truth to show the judge as worked examples, drawn reproducibly.

    ``pinned`` external ids come first, in their order (those without SME
    ground truth now, or not in the project, are left out); the rest are
    drawn. The draw makes the whole set half accepted and half rejected (the
    odd one accepted) when the ground truth has enough of each, else the
    other label fills in; with ``random.Random(seed)`` over the item ids in
    order, the same ground truth, pins and seed always give the same
    examples in the same order (the drawn ones shuffled).
    Returns ``[{"item_id", "verdict", "rationale"}]``: the rationale is the
    comment of an SME review that agrees with the ground truth (or a lead's
    adjudication reason) when there is one, else a sentence naming the
    decision and its reject reason. Fewer than ``count`` when the project has
    fewer labelled items; ``[]`` for ``count`` 0.
    """
    if count <= 0:
        return []
    truth = ground_truth(project=project)
    pinned_ids = dict(project.items.filter(external_id__in=list(pinned)).values_list("external_id", "id"))
    chosen = [pinned_ids[e] for e in dict.fromkeys(pinned) if pinned_ids.get(e) in truth][:count]
    left = count - len(chosen)
    accepts = sorted(i for i, label in truth.items() if label == "accept" and i not in chosen)
    rejects = sorted(i for i, label in truth.items() if label == "reject" and i not in chosen)
    n_reject = min(max(count // 2 - sum(truth[i] == "reject" for i in chosen), 0), left, len(rejects))
    n_accept = min(left - n_reject, len(accepts))
    n_reject = min(left - n_accept, len(rejects))
    rng = random.Random(seed)
    drawn = rng.sample(accepts, n_accept) + rng.sample(rejects, n_reject)
    rng.shuffle(drawn)
    return [{"item_id": i, "verdict": truth[i], "rationale": _sme_rationale(i, truth[i])} for i in chosen + drawn]


def _sme_rationale(item_id: int, decision: str) -> str:
    adjudication = Adjudication.objects.filter(item_id=item_id, decision=decision).first()
    reviews = list(Review.objects.filter(item_id=item_id, decision=decision).order_by("id"))
    comment = next((r.comment.strip() for r in reviews if r.comment.strip()), "")
    if comment:
        return comment
    reason = (
        adjudication.reason
        if adjudication and adjudication.reason
        else next((r.reason for r in reviews if r.reason), "")
    )
    if decision == "accept":
        return "A subject-matter expert accepted it" + (f": {reason}." if reason else ".")
    return "A subject-matter expert rejected it" + (f" as {reason}." if reason else ".")


def run_agreement(run: JudgeRun, truth: dict[int, str] | None = None, *, interval: bool = False) -> dict:
    """The run's agreement with SME ground truth, on the items that have both (see metrics.agreement).

    Items the run showed the judge as few-shot examples are left out: it saw
    their labels. Pass ``truth`` (``ground_truth(project=...)``) when comparing
    several runs, to read it once. With ``interval``, ``"kappa_ci"`` is added
    (``annotations.statistics.cohen_kappa_bootstrap_ci``, 95 %), and ``"accuracy_ci"``, the
    95 % Wilson score interval of the agreement (``scipy.stats.binomtest``).
    """
    if truth is None:
        truth = ground_truth(project=run.project)
    shown = set(run.few_shot_item_ids)
    pairs = [
        (truth[item_id], verdict)
        for item_id, verdict in Verdict.objects.filter(run=run).exclude(verdict="").values_list("item_id", "verdict")
        if item_id in truth and item_id not in shown
    ]
    result = agreement([t for t, _ in pairs], [v for _, v in pairs])
    if interval:
        result["kappa_ci"] = cohen_kappa_bootstrap_ci([t for t, _ in pairs], [v for _, v in pairs])
        result["accuracy_ci"] = wilson_interval(sum(t == v for t, v in pairs), len(pairs))
    return result


def _policy_verdicts(project: Project) -> dict[int, str]:
    """``{item_id: verdict}`` of the items the gating policy's tiers decide (before SMEs and rules)."""
    return {item_id: verdict for item_id, (_, verdict) in policy_verdicts(project).items()}


# The rule editor's live dry run reads at most this many items, in at most this many seconds, so a lead
# typing on a project of a million items gets an answer at once (it says how many it read).
DRY_RUN_MAX_ITEMS = 20_000
DRY_RUN_SECONDS = 1.0


def label_function_dry_run(
    *,
    label_function: LabelFunction,
    examples: int = 5,
    max_items: int | None = None,
    seconds: float | None = None,
    judge: bool = True,
    rules=None,
) -> dict:
    """What a rule (saved or not, active or not) would reject now, without storing anything.

    ``rules``: the rule already compiled (a one-rule ``RuleSet`` of the label function's kind, params, field
    and task types, e.g. ``label_functions.rule_compiled``'s); None: compiled here.

    Reads the project's items in import order (by id): all of them, or the first ``max_items``, stopping
    early once ``seconds`` (wall clock) have passed. Raises serializers.ValidationError for a rule that
    does not compile. Returns ``{"rule", "items", "scanned", "complete", "would_reject", "sme_accepted",
    "sme_rejected", "judge_accepted", "sme_conflict_interval", "examples"}``: ``items`` the project's item
    count, ``scanned`` how many were read (``complete`` when all), the counts over the items read;
    ``sme_accepted`` counts rejected items whose SME ground truth is accept (a conflict with the SMEs),
    ``sme_rejected`` those the SMEs rejected too, ``sme_conflict_interval`` the 95 % Wilson interval of
    ``sme_accepted / (sme_accepted + sme_rejected)`` (None when no rejected item has ground truth), and
    ``judge_accepted`` those the gating policy's judges accepted (None with ``judge=False``, which spares
    reading every verdict of the policy's runs: a second or more at a million items). ``examples`` are the
    first rejected items: ``{"id", "external_id", "response" (first 500 characters), "snippet", "sme", "judge"}`` with
    ``snippet`` the rule's field around what the rule found (``snippet``).
    """
    from judging.services import rule_set_for

    project = label_function.project
    rules = rules or rule_set_for([label_function])
    total = project.items.count()
    needed = {"id", "task_type", label_function.field} | ({"prompt"} if label_function.kind == "curt" else set())
    rows = project.items.order_by("pk").values(*sorted(needed))
    if max_items is not None:
        rows = rows[:max_items]
    deadline = None if seconds is None else time.monotonic() + seconds
    rejected: list[int] = []
    scanned, first, last = 0, None, None
    for item in rows.iterator(chunk_size=2000):
        scanned += 1
        first, last = first or item["id"], item["id"]
        if rules.rejections(item):
            rejected.append(item["id"])
        if deadline is not None and scanned % 256 == 0 and time.monotonic() > deadline:
            break
    # Ground truth only of the rejected items some SME labelled: found by the id range read, since a query
    # with thousands of ids in a list, or of the whole project's reviews, takes a second at a million items
    # (bench/rule_dry_run.py).
    labelled = set()
    if rejected:
        for model in (Review, Adjudication):
            found = model.objects.filter(item__project=project, item_id__gte=first, item_id__lte=last)
            labelled.update(found.values_list("item_id", flat=True))
    truth = ground_truth(item_ids=[i for i in rejected if i in labelled])
    verdicts = _policy_verdicts(project) if judge else {}
    sme_accepted = sum(truth.get(i) == "accept" for i in rejected)
    sme_rejected = sum(truth.get(i) == "reject" for i in rejected)
    shown = project.items.filter(pk__in=rejected[:examples]).only("external_id", "response", label_function.field)
    shown = {item.pk: item for item in shown}
    rule = rules.rules[0]
    return {
        "rule": label_function,
        "items": total,
        "scanned": scanned,
        "complete": scanned >= total,
        "would_reject": len(rejected),
        "sme_accepted": sme_accepted,
        "sme_rejected": sme_rejected,
        "sme_conflict_interval": wilson_interval(sme_accepted, sme_accepted + sme_rejected),
        "judge_accepted": sum(verdicts.get(i) == "accept" for i in rejected) if judge else None,
        "examples": [
            {
                "id": i,
                "external_id": shown[i].external_id,
                "response": shown[i].response[:500],
                "snippet": snippet(getattr(shown[i], label_function.field), rule.kind, rule.params),
                "sme": truth.get(i, ""),
                "judge": verdicts.get(i, ""),
            }
            for i in rejected[:examples]
            if i in shown
        ],
    }


def snippet(text: str, kind: str, params: dict, context: int = 80) -> dict:
    """A short piece of ``text`` around the first thing a rule of ``kind`` found in it
    (``label_functions.first_match``): ``{"before", "match", "after"}``, each plain text, ``before`` and
    ``after`` at most ``context`` characters (with "…" where cut). Without a match (a rule that rejects for
    an absence or a length), ``match`` is empty and ``before`` holds the first ``3 * context`` characters."""
    span = first_match(kind, params, text)
    if span is None:
        return {"before": text[: 3 * context] + ("…" if len(text) > 3 * context else ""), "match": "", "after": ""}
    start, end = span
    before = ("…" if start > context else "") + text[max(0, start - context) : start]
    after = text[end : end + context] + ("…" if len(text) > end + context else "")
    return {"before": before, "match": text[start:end][:500], "after": after}


def label_function_stats(project: Project) -> list[dict]:
    """Per-rule analytics from the stored hits, in Snorkel's terms (fractions of all items unless noted).

    For each label function: ``hits``; ``coverage`` (share of items it
    rejects); ``overlap`` (share of items it rejects that another active rule
    also rejects); ``conflict`` (share of items it rejects although the SME
    ground truth, or failing that the gating policy's verdict, accepts them) with
    ``conflict_sme`` and ``conflict_judge`` counts; ``empirical_accuracy``
    (of its hits on SME-labelled items, the share the SMEs rejected; None
    without any) over ``labelled_hits``. A rule rejects or abstains, so its
    accuracy is that of its rejections. Inactive rules have no stored hits.
    """
    total = project.items.count()
    truth, verdicts = ground_truth(project=project), _policy_verdicts(project)
    hits_by_rule: dict[int, set[int]] = defaultdict(set)
    rules_by_item: dict[int, int] = defaultdict(int)
    for lf_id, item_id in RuleHit.objects.filter(label_function__project=project).values_list(
        "label_function_id", "item_id"
    ):
        hits_by_rule[lf_id].add(item_id)
        rules_by_item[item_id] += 1
    stats = []
    for lf in project.label_functions.all():
        hits = hits_by_rule.get(lf.pk, set())
        labelled = [i for i in hits if i in truth]
        conflict_sme = sum(truth[i] == "accept" for i in labelled)
        conflict_judge = sum(1 for i in hits if i not in truth and verdicts.get(i) == "accept")
        stats.append(
            {
                "rule": lf,
                "hits": len(hits),
                "coverage": len(hits) / total if total else 0.0,
                "overlap": sum(rules_by_item[i] > 1 for i in hits) / total if total else 0.0,
                "conflict": (conflict_sme + conflict_judge) / total if total else 0.0,
                "conflict_sme": conflict_sme,
                "conflict_judge": conflict_judge,
                "labelled_hits": len(labelled),
                "empirical_accuracy": (len(labelled) - conflict_sme) / len(labelled) if labelled else None,
            }
        )
    return stats


def run_progress(run: JudgeRun) -> dict:
    """``{"done", "errors", "tokens_unknown", "no_confidence", "total", "percent", "rate_per_s", "eta_s",
    "stalled_since"}`` of a run, from its verdict rows; ``tokens_unknown`` counts items whose replies did not say
    how many tokens they used, ``no_confidence`` the verdicts (of ``done``) without a confidence (a reply without
    usable log-probabilities, see ``judging.logprobs``); ``stalled_since`` is ``run_stalled_since`` (no ETA is
    given for a stalled run)."""
    counts = Verdict.objects.filter(run=run).aggregate(
        done=Count("id", filter=~Q(verdict="")),
        no_confidence=Count("id", filter=~Q(verdict="") & Q(confidence__isnull=True)),
        errors=Count("id", filter=Q(verdict="")),
        tokens_unknown=Count("id", filter=Q(tokens_in__isnull=True) | Q(tokens_out__isnull=True)),
    )
    finished = counts["done"] + counts["errors"]
    elapsed = ((run.finished_at or timezone.now()) - run.started_at).total_seconds() if run.started_at else 0
    rate = finished / elapsed if elapsed > 0 else None
    remaining = max(run.items_total - finished, 0)
    stalled = run_stalled_since(run)
    return {
        **counts,
        "total": run.items_total,
        "percent": round(100 * finished / run.items_total) if run.items_total else 100,
        "rate_per_s": rate,
        "eta_s": remaining / rate if rate and run.status == JudgeRun.Status.RUNNING and not stalled else None,
        "stalled_since": stalled,
    }


def run_stalled_since(run: JudgeRun) -> datetime | None:
    """When the running LLM ``run`` last made progress, if it has stalled since; else None.

    Stalled: it has work rows left, no worker holds a live lease on any of
    them, and for a third of ``LARRY_JUDGE_LEASE_S`` since the last lease ran
    out no verdict was stored (nor the run started): its workers died or its
    tasks were lost. A live worker renews its leases every third of the
    lease, so a dead one is found within about 1⅓ leases (40 s by default).
    ``services.judge_run_revive_if_stalled`` queues its work again.
    """
    if run.status != JudgeRun.Status.RUNNING or run.backend != JudgeRun.Backend.OPENAI:
        return None
    now = timezone.now()
    work = JudgeWork.objects.filter(run=run).aggregate(rows=Count("id"), lease=Max("leased_until"))
    if not work["rows"] or (work["lease"] and work["lease"] > now):
        return None
    last_verdict = Verdict.objects.filter(run=run).aggregate(last=Max("created_at"))["last"]
    since = max(filter(None, [last_verdict, run.started_at or run.created_at, work["lease"]]))
    if now - since < timezone.timedelta(seconds=settings.LARRY_JUDGE_LEASE_S / 3):
        return None
    return since


def run_calibration(run: JudgeRun, *, disagreements: int = 50) -> dict:
    """How far the run's judge can be trusted, against SME ground truth (blind: the judge never saw it).

    Returns ``{"overall": agreement(...) + {"kappa_ci"}, "by_source_model":
    {name: agreement(...)}, "by_task_type": {...}, "disagreements": [{"item_id",
    "external_id", "sme", "judge", "confidence", "confidence_calibrated", "rationale"}], "few_shot_excluded":
    n}``; see
    ``metrics.agreement`` and ``annotations.statistics.cohen_kappa_bootstrap_ci`` (95 %,
    2,000 resamples). The ``n`` items the run showed the judge as few-shot
    examples, with their SME labels, are left out of every figure.
    """
    shown = set(run.few_shot_item_ids)
    truth = {i: label for i, label in ground_truth(project=run.project).items() if i not in shown}
    rows = [
        row
        for row in Verdict.objects.filter(run=run)
        .exclude(verdict="")
        .order_by("item_id")  # disagreements in item order, whatever plan the database picks
        .values_list(
            "item_id",
            "verdict",
            "rationale",
            "item__source_model",
            "item__task_type",
            "item__external_id",
            "confidence",
            "confidence_calibrated",
        )
        if row[0] in truth
    ]
    pairs_truth, pairs_judge = [truth[r[0]] for r in rows], [r[1] for r in rows]
    overall = agreement(pairs_truth, pairs_judge)
    overall["kappa_ci"] = cohen_kappa_bootstrap_ci(pairs_truth, pairs_judge)

    def grouped(column: int) -> dict[str, dict]:
        groups: dict[str, list] = defaultdict(list)
        for r in rows:
            groups[r[column] or "(none)"].append(r)
        return {
            name: agreement([truth[r[0]] for r in group], [r[1] for r in group])
            for name, group in sorted(groups.items())
        }

    return {
        "overall": overall,
        "by_source_model": grouped(3),
        "by_task_type": grouped(4),
        "disagreements": [
            {
                "item_id": r[0],
                "external_id": r[5],
                "sme": truth[r[0]],
                "judge": r[1],
                "confidence": r[6],
                "confidence_calibrated": r[7],
                "rationale": r[2],
            }
            for r in rows
            if truth[r[0]] != r[1]
        ][:disagreements],
        "few_shot_excluded": len(shown),
    }


def runs_compare(first: JudgeRun, second: JudgeRun) -> dict:
    """Two runs side by side (say 405B and 8B): their agreement with each other, and each with the SMEs.

    ``{"between": agreement(first's verdicts as truth, second's) on the items
    both judged, "first": run_agreement(first), "second": run_agreement(second),
    "few_shot_excluded": n}``. Each run's few-shot items are left out of its
    agreement with the SMEs, and the ``n`` items either run showed as few-shot
    examples are left out of ``between``.
    """
    shown = set(first.few_shot_item_ids) | set(second.few_shot_item_ids)
    a = dict(Verdict.objects.filter(run=first).exclude(verdict="").values_list("item_id", "verdict"))
    b = dict(Verdict.objects.filter(run=second).exclude(verdict="").values_list("item_id", "verdict"))
    shared = sorted((a.keys() & b.keys()) - shown)
    truth = ground_truth(project=first.project)
    return {
        "between": agreement([a[i] for i in shared], [b[i] for i in shared]),
        "first": run_agreement(first, truth),
        "second": run_agreement(second, truth),
        "few_shot_excluded": len(shown),
    }


def run_errors(run: JudgeRun) -> dict:
    """The run's items without a verdict, by class of error: ``{"by_class": [(label, n)], "transient": n,
    "unqueued": n}`` where ``transient`` counts faults of the connection or the server (worth re-running
    as they are), and ``unqueued`` the failed items the gate left pending (no SME ground truth, no other
    judge decided them) that are not in the SME queue yet.

    ``by_class`` follows ``Verdict.ErrorClass``'s order; errors stored before errors had classes count
    as "unclassified".
    """
    errors = Verdict.objects.filter(run=run, verdict="")
    counts = dict(errors.values_list("error_class").annotate(n=Count("id")).order_by())
    by_class = [(label, counts[value]) for value, label in Verdict.ErrorClass.choices if counts.get(value)]
    if counts.get(""):
        by_class.append(("unclassified", counts[""]))
    pending = errors.filter(
        Q(item__gate_decision__outcome=GateDecision.Outcome.PENDING) | Q(item__gate_decision__isnull=True)
    )
    unqueued = pending.exclude(in_sme_queue("item_id")).count()
    transient = sum(counts.get(value, 0) for value in Verdict.TRANSIENT)
    return {"by_class": by_class, "transient": transient, "unqueued": unqueued}


def run_answered_by(run: JudgeRun) -> list[tuple[str, int, bool]]:
    """The models the server said answered the run's requests: ``[(model, replies, other)]``, most first;
    ``other`` is True for a name other than the one the run asked for (a proxy routing elsewhere, a
    hosted model's dated version). Replies that named no model are counted under ``""``."""
    return work.answered_by(Verdict.objects.filter(run=run), run.model)


def run_confidence_report(run: JudgeRun, *, truth: dict[int, str] | None = None) -> dict:
    """How well the run's raw and calibrated P(accept) match SME ground truth, for the run page.

    ``{"raw": calibration_summary | None, "calibrated": calibration_summary |
    None, "n_with_confidence", "n_without_confidence", "few_shot_excluded",
    "fit": run.calibration}`` (``judging.calibration.calibration_summary``:
    reliability bins with Wilson intervals, ECE, AUROC with DeLong's
    interval, each with its n). Items shown as few-shot examples are left
    out; a summary is None when no labelled item has that confidence. The
    calibrated values of labelled items are out-of-fold, so their figures are
    honest estimates. Reads only the labelled items' verdicts, plus one count.
    """
    from judging.calibration import calibration_summary

    shown = set(run.few_shot_item_ids)
    if truth is None:
        truth = ground_truth(project=run.project)
    labels = {i: label == "accept" for i, label in truth.items() if i not in shown}
    counts = Verdict.objects.filter(run=run).aggregate(
        with_confidence=Count("id", filter=Q(confidence__isnull=False)),
        without=Count("id", filter=Q(confidence__isnull=True)),
    )
    rows = (
        Verdict.objects.filter(run=run, item_id__in=list(labels), confidence__isnull=False)
        .values_list("item_id", "confidence", "confidence_calibrated")
        .order_by("item_id")
    )
    raw_p, raw_y, cal_p, cal_y = [], [], [], []
    for item_id, raw, calibrated in rows:
        raw_p.append(raw)
        raw_y.append(labels[item_id])
        if calibrated is not None:
            cal_p.append(calibrated)
            cal_y.append(labels[item_id])
    return {
        "raw": calibration_summary(raw_p, raw_y) if raw_p else None,
        "calibrated": calibration_summary(cal_p, cal_y) if cal_p else None,
        "n_with_confidence": counts["with_confidence"],
        "n_without_confidence": counts["without"],
        "few_shot_excluded": len(shown),
        "fit": run.calibration or {},
    }


# Below this many SME-labelled items a tier decided, its agreement is not shown as a figure ("too few to say").
MIN_AGREEMENT_PAIRS = 10


def _per_item_cost(run: JudgeRun) -> dict:
    """The run's cost per item it sent to the judge, from each verdict row's own tokens at the run's prices:
    ``{"n", "mean", "ci"}`` (dollars or whatever the prices are in; ``ci`` a 95 % Student-t interval of the
    mean, None below 2 items; ``n`` counts rows whose reply said its tokens, errors included: they are paid)."""
    from scipy import stats

    price_in = float(run.config.get("price_in_per_million", "0")) / 1_000_000
    price_out = float(run.config.get("price_out_per_million", "0")) / 1_000_000
    costs = [
        t_in * price_in + t_out * price_out
        for t_in, t_out in Verdict.objects.filter(run=run, tokens_in__isnull=False, tokens_out__isnull=False)
        .values_list("tokens_in", "tokens_out")
        .iterator(chunk_size=5000)
    ]
    n = len(costs)
    if not n:
        return {"n": 0, "mean": None, "ci": None}
    mean = sum(costs) / n
    ci = None
    if n >= 2:
        sem = stats.sem(costs)
        ci = (mean, mean) if sem == 0 else tuple(float(x) for x in stats.t.interval(0.95, n - 1, loc=mean, scale=sem))
    return {"n": n, "mean": mean, "ci": ci}


def policy_report(project: Project) -> dict:
    """What each tier of the gating policy in force decides, how well, and at what cost, for the policy page.

    Returns::

        {"policy": GatingPolicy | None,
         "items": N,                      # all the project's items
         "tiers": [{"tier": PolicyTier, "run": JudgeRun,
                    "decided": n,         # items whose stored gate decision this tier made (rules may veto them)
                    "share": n / N,       # None for N = 0
                    "agreement": {"n", "agree", "rate", "ci", "too_few", "few_shot_excluded"},
                    "tokens_in", "tokens_out", "cost": Decimal,   # the run's, at the prices it started with
                    "sent": n,            # items the run sent to its judge (verdict rows, errors included)
                    "llm": bool}],        # an OpenAI-compatible judge (the local classifier costs nothing)
         "sme": {"by_sme": n, "pending": n, "queued": n},
         "cascade_cost": Decimal,         # the tiers' runs together
         "all_to_big_judge": {"run", "tier", "per_item": _per_item_cost(run), "estimate", "estimate_ci",
                              "saving", "saving_ci"} | None}

    ``agreement`` is the tier's agreement with SME ground truth on the SME-labelled items it would decide
    (``policy_verdicts``: the first tier sure enough; on these items the gate gives SMEs the last word, so they
    are the tier's measured sample): ``rate`` = ``agree / n`` with its 95 % Wilson interval ``ci``; items the
    tier's run showed its judge as few-shot examples are left out (``few_shot_excluded``), and ``too_few`` is
    True below ``MIN_AGREEMENT_PAIRS``, when the page says "too few to say" rather than a figure.

    ``all_to_big_judge`` estimates what sending every item to the last LLM tier's judge (the big judge) would
    cost: its mean cost per item sent, from each verdict's own tokens, times N, with the mean's 95 % Student-t
    interval times N. An estimate: the items it judged may be harder or longer than the rest (escalated ones
    are). ``saving`` = estimate - ``cascade_cost``. None without an LLM tier, or when no verdict of it said its
    tokens. ``sme``: items decided by SME ground truth, items pending (no tier sure enough, no rule: the SMEs'
    tier), and of those the ones in the SME queue.
    """
    from decimal import Decimal

    policy = gating_policy(project)
    total = project.items.count()
    Outcome, Basis = GateDecision.Outcome, GateDecision.Basis
    decisions = GateDecision.objects.filter(item__project=project)
    sme = decisions.aggregate(
        by_sme=Count("id", filter=Q(basis=Basis.SME)),
        pending=Count("id", filter=Q(outcome=Outcome.PENDING)),
        queued=Count("id", filter=Q(in_sme_queue("item_id"), outcome=Outcome.PENDING)),
    )
    report = {
        "policy": policy,
        "items": total,
        "tiers": [],
        "sme": sme,
        "cascade_cost": Decimal(0),
        "all_to_big_judge": None,
    }
    if policy is None:
        return report
    tiers = list(policy.tiers.all())
    # By tier and run: decisions a previous policy's tier made (before the queued re-gating) do not count.
    decided_counts = {
        (tier, run_id): n
        for tier, run_id, n in decisions.filter(tier__isnull=False)
        .values_list("tier", "judge_run_id")
        .annotate(n=Count("id"))
        .order_by()
    }
    sent = dict(
        Verdict.objects.filter(run_id__in=[t.run_id for t in tiers])
        .values_list("run_id")
        .annotate(n=Count("id"))
        .order_by()
    )
    truth = ground_truth(project=project)
    would_decide = policy_verdicts(project, policy=policy, item_ids=list(truth)) if truth else {}
    pairs: dict[int, list[bool]] = defaultdict(list)
    excluded: dict[int, int] = defaultdict(int)
    shown = {tier.tier: set(tier.run.few_shot_item_ids) for tier in tiers}
    for item_id, (tier, verdict) in would_decide.items():
        if item_id in shown[tier.tier]:
            excluded[tier.tier] += 1
            continue
        pairs[tier.tier].append(verdict == truth[item_id])
    for tier in tiers:
        run, agreed = tier.run, pairs.get(tier.tier, [])
        n, agree = len(agreed), sum(agreed)
        decided = decided_counts.get((tier.tier, run.pk), 0)
        report["tiers"].append(
            {
                "tier": tier,
                "run": run,
                "decided": decided,
                "share": decided / total if total else None,
                "agreement": {
                    "n": n,
                    "agree": agree,
                    "rate": agree / n if n else None,
                    "ci": wilson_interval(agree, n),
                    "too_few": n < MIN_AGREEMENT_PAIRS,
                    "few_shot_excluded": excluded.get(tier.tier, 0),
                },
                "tokens_in": run.tokens_in,
                "tokens_out": run.tokens_out,
                "cost": run.cost,
                "sent": sent.get(run.pk, 0),
                "llm": run.backend == JudgeRun.Backend.OPENAI,
            }
        )
        report["cascade_cost"] += run.cost
    big = next((row for row in reversed(report["tiers"]) if row["llm"]), None)
    if big is not None:
        per_item = _per_item_cost(big["run"])
        if per_item["n"]:
            cascade = float(report["cascade_cost"])
            estimate = per_item["mean"] * total
            ci = tuple(x * total for x in per_item["ci"]) if per_item["ci"] else None
            report["all_to_big_judge"] = {
                "run": big["run"],
                "tier": big["tier"],
                "per_item": per_item,
                "estimate": estimate,
                "estimate_ci": ci,
                "saving": estimate - cascade,
                "saving_ci": tuple(x - cascade for x in ci) if ci else None,
            }
    return report


def certification_current(project: Project):
    """The project's certificate in force (the newest ``Certification``), or None when no lead asked for one."""
    return Certification.objects.filter(project=project).select_related("created_by").first()


def certification_basis(project: Project) -> dict:
    """What a certificate computed now rests on besides its SME labels: ``{"policy": the gating policy's label,
    "calibrations": {str(run id): the ISO time its recalibration map was fitted, or None}}`` for the policy's
    tiers. ``services.certification_set`` stores it in ``Certification.result["basis"]``."""
    policy = gating_policy(project)
    return {
        "policy": policy.label if policy else NO_POLICY,
        "calibrations": {
            str(tier.run_id): (tier.run.calibration or {}).get("fitted_at")
            for tier in (policy.tiers.select_related("run") if policy else [])
        },
    }


def certification_void(certification: Certification) -> dict:
    """Whether ``certification`` still rests on the gating policy and calibration in force: a threshold on
    P(accept) means nothing once the policy (its label: tiers, runs, thresholds) or a tier run's calibration
    differs from those it was computed on, so the gate then treats it as certifying nothing (every judge accept
    held back, ``certification_threshold``) until a lead certifies again.

    Returns ``{"void": bool, "policy_changed": bool, "policy_now": label, "recalibrated_runs": [run ids of the
    policy's tiers whose calibration differs], "since": the latest ``datetime`` of those changes known (a
    policy change's or a refit's time; None when none is known), "reason": one sentence ("" when not void)}``.
    A certificate stored before ``result["basis"]`` was recorded counts a tier run as recalibrated when its map
    was fitted after the certificate.
    """
    project, at = certification.project, certification.created_at
    basis = (certification.result or {}).get("basis")
    now = certification_basis(project)
    recalibrated, times = [], []
    for run_id, fitted in now["calibrations"].items():
        if basis is not None:
            differs = run_id in basis["calibrations"] and basis["calibrations"][run_id] != fitted
        else:
            differs = bool(fitted) and datetime.fromisoformat(fitted) > at
        if differs:
            recalibrated.append(int(run_id))
            if fitted:
                times.append(datetime.fromisoformat(fitted))
    policy_changed = certification.policy != now["policy"]
    if policy_changed:
        change = GatingPolicyChange.objects.filter(project=project).values_list("changed_at", flat=True).first()
        if change is not None:
            times.append(change)
    reason = ""
    if policy_changed or recalibrated:
        fitted = ", ".join(
            f"run {run_id} fitted {value or 'never'}"
            for run_id, value in ((basis or {}).get("calibrations") or {}).items()
        )
        on = f"policy “{certification.policy}”" + (f" and the calibration of {fitted}" if fitted else "")
        what = []
        if policy_changed:
            what.append(f"the gating policy is now “{now['policy']}”")
        if recalibrated:
            what.append(f"the calibration of run {', '.join(str(r) for r in recalibrated)} was fitted again")
        reason = (
            f"Void: computed for {on} ({certification.created_at:%Y-%m-%d %H:%M:%S} UTC); {'; '.join(what)}; "
            "certify again. Until then the gate holds back every judge accept."
        )
    return {
        "void": bool(reason),
        "policy_changed": policy_changed,
        "policy_now": now["policy"],
        "recalibrated_runs": sorted(recalibrated),
        "since": max(times) if times else None,
        "reason": reason,
    }


def certification_threshold(certification: Certification, void: dict | None = None) -> float | None:
    """The P(accept) threshold the gate applies for ``certification``: its certified threshold, or None
    (certifying nothing: every judge accept held back) when nothing was certified or it is void
    (``certification_void``; pass its answer when you have it)."""
    void = certification_void(certification) if void is None else void
    return None if void["void"] else certification.threshold


def certification_applied(certification: Certification, void: dict | None = None) -> dict:
    """Whether the gate's stored decisions apply ``certification`` yet: the re-gating it asked for
    (``result["regate_generation"]``, from ``services.regate_request``) has finished
    (``RegateRequest.last_generation_done`` at least that). When it is void (``certification_void``), every
    re-gating asked for must have finished, the last without error, after what voided it.

    Returns ``{"applied": bool, "generation": the re-gating asked for (None for a certificate stored before
    generations were recorded), "done": the last finished, "statement": one sentence ("" when applied)}``.
    Until applied, exports of the accepted set refuse (the stored decisions may still ship judge accepts the
    certificate holds back).
    """
    void = certification_void(certification) if void is None else void
    at = certification.created_at
    row = RegateRequest.objects.filter(project_id=certification.project_id).first()
    asked, done = (row.generation, row.last_generation_done) if row else (0, 0)
    generation = (certification.result or {}).get("regate_generation")
    if void["void"]:
        after = max(filter(None, [void["since"], at]))
        applied = (
            row is not None
            and done >= asked
            and not row.last_error
            and row.last_finished_at is not None
            and row.last_finished_at >= after
        )
    elif generation is None:
        # Stored before generations were: a re-gating that ended well after it.
        applied = row is not None and not row.last_error and row.last_finished_at is not None
        applied = applied and row.last_finished_at >= at
    else:
        applied = done >= generation
    statement = ""
    if not applied:
        what = "the voiding of the certificate" if void["void"] else "the certificate"
        statement = (
            f"Not applied yet: the gate is still applying {what} chosen at "
            f"{certification.created_at:%Y-%m-%d %H:%M:%S} UTC (re-gating {generation or asked} requested, "
            f"{done} done); until it has, the accepted set may hold judge accepts the certificate holds back. "
            "Re-gate from the project page if it does not finish."
        )
    return {"applied": applied, "generation": generation, "done": done, "statement": statement}


def certification_unapplied(project: Project) -> str:
    """Why the accepted set must not be exported now ("" when it may): the certificate in force is not applied
    yet (``certification_applied``). The export API answers 409 and a snapshot build fails with it."""
    certification = certification_current(project)
    return certification_applied(certification)["statement"] if certification else ""


def certification_staleness(certification: Certification) -> dict:
    """What changed, since ``certification`` was computed, in what a certificate rests on; a certificate is never
    recomputed by itself (a lead certifies again), so screens and the REST API show this beside it.

    Returns ``{"stale": bool, "labels_used": n (uniform-slice SME labels the certificate used),
    "sme_labels_since": n (items whose SME reviews or adjudication were made, changed, undone or deleted since),
    "uniform_slice_labels_since": n (of those, items a uniform slice drew: the ones a new certificate would
    use), "policy_changed": bool (the gating policy's label, its tiers' runs and thresholds, differs),
    "policy_now": label, "recalibrated_runs": [run ids of the policy's tiers recalibrated since],
    "void": bool, "void_reason": str (``certification_void``: a changed policy or calibration voids it, and the
    gate then certifies nothing), "statement": one sentence for a person}``.
    """
    from annotations.models import SampleMembership

    project, since = certification.project, certification.created_at
    labelled = set(
        Review.objects.filter(item__project=project)
        .filter(Q(created_at__gt=since) | Q(updated_at__gt=since))
        .values_list("item_id", flat=True)
    )
    labelled |= set(
        Adjudication.objects.filter(item__project=project, decided_at__gt=since).values_list("item_id", flat=True)
    )
    # Undone or deleted reviews and adjudications leave only their history.
    labelled |= set(
        ReviewChange.objects.filter(item__project=project, changed_at__gt=since).values_list("item_id", flat=True)
    )
    uniform = SampleMembership.objects.filter(draw__project=project, uniform_slice=True, item_id__in=labelled)
    uniform_since = uniform.values("item_id").distinct().count()
    void = certification_void(certification)
    policy_now, recalibrated = void["policy_now"], void["recalibrated_runs"]
    changed = []
    if labelled:
        changed.append(
            f"{len(labelled)} SME label{'' if len(labelled) == 1 else 's'} made or changed ({uniform_since} of "
            "them on uniform slices, which a certificate uses)"
        )
    if void["policy_changed"]:
        changed.append(f"the gating policy changed (now: {policy_now})")
    if recalibrated:
        runs = ", ".join(str(run) for run in recalibrated)
        changed.append(f"the calibration of run {runs} was fitted again")
    used = f"Computed from {certification.n_labelled} uniform-slice SME labels"
    if changed:
        statement = f"{used}; since then {'; '.join(changed)}. Certify again to use them."
    else:
        statement = f"{used}; no SME label, gating policy or calibration has changed since."
    if void["void"]:
        statement = f"{void['reason']} {statement}"
    return {
        "stale": bool(changed),
        "labels_used": certification.n_labelled,
        "sme_labels_since": len(labelled),
        "uniform_slice_labels_since": uniform_since,
        "policy_changed": void["policy_changed"],
        "policy_now": policy_now,
        "recalibrated_runs": recalibrated,
        "void": void["void"],
        "void_reason": void["reason"],
        "statement": statement,
    }


def certificate_held_back(certification: Certification) -> dict:
    """The judge accepts the certificate in force holds back: ``{"applied": bool, "pending": n, "queued": n,
    "statement": str}``.

    Applied (``certification_applied``): ``pending`` counts the stored decisions it leaves pending
    (``gate.CERTIFICATE_REASON``), ``queued`` how many of them are in the SME queue, ``statement`` "". Not yet:
    the stored decisions predate it, so ``pending`` is what the certificate implies (the judge accepts it was
    computed on, less those it certifies; None when it is void: every judge accept the policy now makes),
    ``queued`` None, and ``statement`` says the gate is still applying it.
    """
    void = certification_void(certification)
    applied = certification_applied(certification, void)
    if not applied["applied"]:
        result = certification.result or {}
        implied = None
        if not void["void"] and "population" in result:
            implied = result["population"] + result.get("not_covered", 0) - certification.certified
        return {"applied": False, "pending": implied, "queued": None, "statement": applied["statement"]}
    rows = GateDecision.objects.filter(
        item__project_id=certification.project_id, outcome=GateDecision.Outcome.PENDING
    ).values_list("reasons", in_sme_queue("item_id"))
    held = [queued for reasons, queued in rows.iterator(chunk_size=2000) if gate.CERTIFICATE_REASON in (reasons or [])]
    return {"applied": True, "pending": len(held), "queued": sum(held), "statement": ""}


def regate_pending(project_id: int) -> bool:
    """Whether a re-gating of the project was asked for (``services.regate_request``) and has not been done yet."""
    row = RegateRequest.objects.filter(project_id=project_id).values_list("generation", "last_generation_done").first()
    return row is not None and row[0] > row[1]
