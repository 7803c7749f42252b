"""The gate: the one function that turns ground truth, a verdict and rule hits into a decision.

The rules (../DESIGN.md, "Gate"):

1. SME ground truth wins over the judge for reviewed items;
2. otherwise the judge's verdict from the latest finished run;
3. any active label function that rejects -> reject, whatever the source;
4. neither review nor verdict -> pending, never exported.

Rule 3 is a veto, so it also rejects an item that has neither a review nor a
verdict: a rejection is never exported, and the rule's reason is recorded.
"""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Outcome:
    """``outcome`` is accept/reject/pending; ``basis`` is sme/judge/none; ``reasons`` lists rule reasons."""

    outcome: str
    basis: str
    basis_decision: str
    vetoed: bool
    reasons: list[str] = field(default_factory=list)


def decide(*, ground_truth: str | None, verdict: str | None, rule_rejections: list[str]) -> Outcome:
    """Decide one item.

    ``ground_truth`` and ``verdict`` are ``"accept"``, ``"reject"`` or None
    (no SME ground truth; no verdict, e.g. judging ended in an error).
    ``rule_rejections`` holds the reasons of the active label functions that
    rejected the item (empty when all abstained).
    """
    if ground_truth is not None:
        basis, basis_decision = "sme", ground_truth
    elif verdict is not None:
        basis, basis_decision = "judge", verdict
    else:
        basis, basis_decision = "none", ""
    if rule_rejections:
        return Outcome("reject", basis, basis_decision, True, list(rule_rejections))
    if basis == "none":
        return Outcome("pending", basis, basis_decision, False)
    return Outcome(basis_decision, basis, basis_decision, False)
