"""Reads for the judging app: latest run, funnel, agreement."""

from django.db.models import Count, Q

from annotations.models import Project
from annotations.selectors import ground_truth
from judging.metrics import agreement
from judging.models import GateDecision, JudgeRun, Verdict


def latest_finished_run(project: Project) -> JudgeRun | None:
    """The run whose verdicts the gate uses: the most recently finished one."""
    return (
        JudgeRun.objects.filter(project=project, status=JudgeRun.Status.FINISHED)
        .order_by("-finished_at", "-id")
        .first()
    )


def funnel(project: Project) -> dict[str, int]:
    """Counts along the pipeline, from the gate's stored decisions.

    ``imported`` = ``accepted + rejected + pending``; ``accepted`` =
    ``accepted_before_rules - vetoed_accepts``. ``judged`` counts items with a
    verdict (not an error) in the latest finished run.
    """
    items = project.items
    run = latest_finished_run(project)
    decisions = GateDecision.objects.filter(item__project=project).aggregate(
        accepted=Count("id", filter=Q(outcome="accept")),
        rejected=Count("id", filter=Q(outcome="reject")),
        pending=Count("id", filter=Q(outcome="pending")),
        by_sme=Count("id", filter=Q(basis="sme")),
        by_judge=Count("id", filter=Q(basis="judge")),
        accepted_before_rules=Count("id", filter=Q(basis_decision="accept")),
        vetoed_total=Count("id", filter=Q(vetoed=True)),
        vetoed_accepts=Count("id", filter=Q(vetoed=True, basis_decision="accept")),
    )
    imported = items.count()
    return {
        "imported": imported,
        "sme_queued": items.filter(in_sme_queue=True).count(),
        "sme_reviewed": len(ground_truth(project=project)),
        "judged": Verdict.objects.filter(run=run).exclude(verdict="").count() if run else 0,
        "judge_errors": Verdict.objects.filter(run=run, verdict="").count() if run else 0,
        "undecided": imported - sum(decisions[k] for k in ("accepted", "rejected", "pending")),
        **decisions,
    }


def run_agreement(run: JudgeRun) -> dict:
    """The run's agreement with SME ground truth, on the items that have both (see metrics.agreement)."""
    truth = ground_truth(project=run.project)
    pairs = [
        (truth[item_id], verdict)
        for item_id, verdict in Verdict.objects.filter(run=run).exclude(verdict="").values_list("item_id", "verdict")
        if item_id in truth
    ]
    return agreement([t for t, _ in pairs], [v for _, v in pairs])
