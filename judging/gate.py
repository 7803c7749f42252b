"""The gate: the one function that turns ground truth, a verdict and rule hits into a decision.

The rules (../DESIGN.md, "Gate"):

1. SME ground truth wins over the judges for reviewed items;
2. otherwise the gating policy's decision: the first tier whose verdict is
   certain enough (``tier_verdict``); no policy, no judge decides;
3. any active label function that rejects -> reject, whatever the source;
4. neither review nor a deciding verdict -> pending, never exported.

Rule 3 is a veto, so it also rejects an item that has neither a review nor a
verdict: a rejection is never exported, and the rule's reason is recorded.

``Outcome`` and ``Basis`` are the gate's whole vocabulary: the models,
selectors, views and templates use these choices, never bare strings.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

from django.db import models


class Outcome(models.TextChoices):
    """What the gate decided: only ``accept`` is ever exported."""

    ACCEPT = "accept"
    REJECT = "reject"
    PENDING = "pending"


class Basis(models.TextChoices):
    """What the decision rests on, before any rule's veto."""

    SME = "sme", "SME ground truth"
    JUDGE = "judge", "Judge verdict (a tier without a threshold)"
    TIER = "tier", "A tier's verdict, certain enough"
    NONE = "none", "Neither"


@dataclass(frozen=True)
class GateResult:
    """``outcome`` is an Outcome; ``basis`` a Basis; ``basis_decision`` the SME's or judge's decision before
    the rules ("" for none); ``reasons`` lists the vetoing rules' reasons; ``tier`` the index of the policy's
    tier that decided (None unless a judge did)."""

    outcome: str
    basis: str
    basis_decision: str
    vetoed: bool
    reasons: list[str] = field(default_factory=list)
    tier: int | None = None


@dataclass(frozen=True)
class TierVerdict:
    """One tier's say on one item: its verdict ("accept"/"reject" or None: no verdict, an error) and its
    calibrated P(accept) (None: not calibrated), against the tier's ``threshold`` on ``verdict_certainty``
    (None: the verdict alone decides)."""

    verdict: str | None
    confidence_calibrated: float | None
    threshold: float | None


def verdict_certainty(verdict: str, p_accept: float | None) -> float | None:
    """How sure the judge is of the verdict it gave: P(accept) for an accept, 1 - P(accept) for a reject; None
    for None. Below 0.5 when the confidence points the other way (a tokeniser's split, a recalibration that
    turned it round): such a verdict never clears a tier's threshold (0.5 or more)."""
    if p_accept is None:
        return None
    return p_accept if verdict == Outcome.ACCEPT else 1.0 - p_accept


def tier_verdict(tiers: Sequence[TierVerdict]) -> tuple[int, str] | None:
    """``(index, verdict)`` of the first tier, in order, with a verdict whose certainty clears its threshold.

    A tier without a threshold decides by its verdict alone; a tier with one
    decides when its calibrated confidence in the verdict it gave
    (``verdict_certainty``: P(accept) for an accept, 1 - P(accept) for a
    reject) reaches it, so an accept the judge itself doubts never passes;
    nothing on an item whose verdict is not calibrated. None when no
    tier decides (the item stays pending unless the SMEs or a rule decide it).
    """
    for index, tier in enumerate(tiers):
        if tier.verdict is None:
            continue
        if tier.threshold is None:
            return index, tier.verdict
        sure = verdict_certainty(tier.verdict, tier.confidence_calibrated)
        if sure is not None and sure >= tier.threshold:
            return index, tier.verdict
    return None


CERTIFICATE_REASON = "a judge's accept below the certified threshold: left for the SMEs"
NEEDS_RESPONSE_REASON = "needs a response: a prompt imported without one (a teacher run may answer it)"


def decide(
    *,
    ground_truth: str | None,
    verdict: str | None,
    rule_rejections: list[str],
    verdict_basis: str = Basis.JUDGE,
    tier: int | None = None,
    certified: bool | None = None,
    needs_response: bool = False,
) -> GateResult:
    """Decide one item.

    ``ground_truth`` and ``verdict`` are ``"accept"``, ``"reject"`` or None
    (no SME ground truth; no deciding verdict: no policy, no tier sure
    enough, or judging ended in an error). ``verdict_basis`` is the basis of a
    deciding verdict (``Basis.JUDGE`` or ``Basis.TIER``) and ``tier`` the
    index of the tier it came from. ``rule_rejections`` holds the reasons of
    the active label functions that rejected the item (empty when all abstained).
    ``certified`` False says a certificate is in force and the judge's P(accept) on the item is below its
    certified threshold (or nothing is certified): a judge's accept is then left pending for the SMEs, with
    ``CERTIFICATE_REASON``; None (no certificate) or True changes nothing.
    ``needs_response``: the item is a prompt imported without a response; it stays pending
    (``NEEDS_RESPONSE_REASON``) whatever else is said of it, so it is never exported.
    """
    if needs_response:
        return GateResult(Outcome.PENDING, Basis.NONE, "", False, [NEEDS_RESPONSE_REASON])
    if ground_truth is not None:
        basis, basis_decision, tier = Basis.SME, ground_truth, None
    elif verdict is not None:
        basis, basis_decision = verdict_basis, verdict
    else:
        basis, basis_decision, tier = Basis.NONE, "", None
    if rule_rejections:
        return GateResult(Outcome.REJECT, basis, basis_decision, True, list(rule_rejections), tier)
    if basis == Basis.NONE:
        return GateResult(Outcome.PENDING, basis, basis_decision, False)
    if certified is False and basis != Basis.SME and basis_decision == Outcome.ACCEPT:
        return GateResult(Outcome.PENDING, Basis.NONE, "", False, [CERTIFICATE_REASON])
    return GateResult(Outcome(basis_decision), basis, basis_decision, False, tier=tier)
