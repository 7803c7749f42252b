"""A tier's confidence threshold with a guarantee of agreement with the SMEs.

The method is Jung, Brahman & Choi, "Trust or Escalate: LLM Judges with
Provable Guarantees for Human Agreement" (ICLR 2025, arXiv:2407.18370),
section 3: a judge decides an item only when its confidence clears a threshold
λ, and λ is chosen on human-labelled items by fixed-sequence testing
(Bauer 1991; as used in Angelopoulos et al., "Learn then Test", 2021) with an
exact binomial tail p-value, so that

    P( agreement with the SMEs on the items the tier decides ≥ target ) ≥ 1 - risk.

Assumptions, as in the paper: the SME-labelled items that reach the tier are
exchangeable with the unlabelled items the tier will decide (a uniform random
sample of them), and the judge's verdicts and confidences do not change after
λ is chosen. The guarantee is about agreement with the SMEs, not truth.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Candidate thresholds, fixed before any label is seen (fixed-sequence testing
# needs the order fixed in advance): the certainty in a verdict (P(accept) for an
# accept, 1 - P(accept) for a reject) is tested against a grid in [0.5, 1].
# A grid rather than every observed value, because each tested candidate that
# adds a single disagreeing item could end the scan early.
DEFAULT_CANDIDATES = tuple(round(1.0 - i * 0.005, 3) for i in range(101))


@dataclass(frozen=True)
class ThresholdChoice:
    """The outcome of ``choose_threshold``.

    ``threshold`` is the smallest certainty λ that passed (items with
    certainty ≥ λ are decided by the tier), or None when no λ passed; then
    the tier decides nothing and ``reason`` says why in plain English.
    ``n`` and ``agreement`` describe the labelled items that clear
    ``threshold`` (n = 0 and agreement None when there is none), ``interval``
    is the Clopper-Pearson 95 % interval of that agreement, ``p_value`` the
    binomial p-value of the last test that rejected "agreement < target".
    ``n_labelled`` counts every labelled item that reached the tier.
    """

    threshold: float | None
    n: int
    agreement: float | None
    interval: tuple[float, float] | None
    target: float
    risk: float
    n_labelled: int
    p_value: float | None = None
    reason: str = ""

    @property
    def decides(self) -> bool:
        return self.threshold is not None


def items_needed(target: float, risk: float) -> int:
    """The least number of labelled items, all agreeing with the SMEs, that can pass the test.

    n items that all agree give the p-value P(Binomial(n, target) ≥ n) = target**n,
    so n is the least with target**n ≤ risk. Raises ValueError when target or risk
    is not strictly between 0 and 1.
    """
    from scipy.stats import binom

    _check(target, risk)
    n = max(1, math.ceil(math.log(risk) / math.log(target)))
    # Guard against rounding in the logarithms.
    while binom.sf(n - 1, n, target) > risk:
        n += 1
    while n > 1 and binom.sf(n - 2, n - 1, target) <= risk:
        n -= 1
    return n


def agreement_p_value(agreeing: int, n: int, target: float) -> float:
    """Exact p-value of H0 "agreement < target" from ``agreeing`` of ``n`` items: P(Binomial(n, target) ≥ agreeing).

    The same number as ``scipy.stats.binomtest(agreeing, n, target, alternative="greater").pvalue``.
    """
    from scipy.stats import binom

    if n == 0:
        return 1.0
    return float(binom.sf(agreeing - 1, n, target))


def choose_threshold(
    certainty: Sequence[float],
    agrees: Sequence[bool],
    *,
    target: float,
    risk: float,
    candidates: Sequence[float] = DEFAULT_CANDIDATES,
    min_items: int = 0,
) -> ThresholdChoice:
    """The smallest certainty threshold λ with agreement ≥ ``target`` at probability ≥ 1 - ``risk``.

    ``certainty[i]`` is the calibrated confidence in item i's verdict (``gate.verdict_certainty``) at
    this tier, ``agrees[i]`` whether the tier's verdict on item i equals the
    SME label; both cover only the SME-labelled items that reach the tier.
    ``target`` and ``risk`` are fractions strictly between 0 and 1.

    Fixed-sequence testing (Jung et al. 2025, see the module docstring):
    ``candidates`` are scanned from the most certain down; for each, with n
    labelled items of certainty ≥ λ of which k agree, H0 "agreement < target"
    is tested with the exact binomial p-value P(Binomial(n, target) ≥ k) at
    level ``risk``. The scan stops at the first candidate that is not
    rejected and returns the last rejected λ. Candidates with fewer than
    ``items_needed(target, risk)`` items are skipped: no labels could reject
    there, and the skip depends on the certainties only, never on the labels,
    so the order stays fixed in advance of the tests and the family-wise
    error stays at ``risk``. ``min_items`` skips, likewise, candidates with
    fewer labelled items than that: the scan then starts lower, where one
    early disagreement ends it less often (more coverage, see
    docs/QUALITY.md), at the price of never deciding only the very top.

    Raises ValueError when the sequences differ in length, a certainty lies
    outside [0, 1], or target/risk are outside (0, 1).
    """
    from scipy.stats import binomtest

    _check(target, risk)
    c = np.asarray(certainty, dtype=float)
    a = np.asarray(agrees, dtype=bool)
    if c.shape != a.shape or c.ndim != 1:
        raise ValueError(f"certainty has {c.size} values, agrees has {a.size}")
    if c.size and (np.isnan(c).any() or c.min() < 0 or c.max() > 1):
        raise ValueError("certainty must lie in [0, 1]")
    needed = items_needed(target, risk)
    first_tested = max(needed, min_items)
    n_labelled = int(c.size)
    base = {"target": target, "risk": risk, "n_labelled": n_labelled}
    wanted = f"agreement with the SMEs of at least {target:.0%} at risk {risk:.0%}"
    if n_labelled < needed:
        have = "No SME-labelled items reach" if n_labelled == 0 else f"Only {n_labelled} SME-labelled items reach"
        return ThresholdChoice(
            threshold=None,
            n=0,
            agreement=None,
            interval=None,
            **base,
            reason=(
                f"{have} this tier; at least {needed}, all agreeing with the SMEs, are needed to show {wanted}. "
                "The tier decides nothing until more items are labelled."
            ),
        )

    order = np.argsort(-c, kind="stable")
    sorted_c, cum_agree = c[order], np.cumsum(a[order])
    chosen = None
    last_n = -1
    failed = None
    for lam in sorted(candidates, reverse=True):
        n = int(np.searchsorted(-sorted_c, -lam, side="right"))  # items with certainty ≥ λ
        if n < first_tested or n == last_n:
            continue
        last_n = n
        k = int(cum_agree[n - 1])
        p = agreement_p_value(k, n, target)
        if p > risk:
            failed = (lam, n, k, p)
            break
        chosen = (lam, n, k, p)

    if chosen is None:
        if failed is None:
            reason = (
                f"No candidate threshold has the {needed} labelled items needed to show {wanted}; "
                "the certainties are below every candidate."
            )
        else:
            lam, n, k, p = failed
            reason = (
                f"The tier's most certain items do not show {wanted}: at certainty ≥ {lam:g}, "
                f"{k} of {n} SME-labelled items agree ({k / n:.0%}, p = {p:.2g} > {risk:g}). "
                "The tier decides nothing; its items escalate."
            )
        return ThresholdChoice(threshold=None, n=0, agreement=None, interval=None, **base, reason=reason)

    lam, n, k, p = chosen
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")  # Clopper-Pearson
    return ThresholdChoice(
        threshold=float(lam),
        n=n,
        agreement=k / n,
        interval=(float(ci.low), float(ci.high)),
        **base,
        p_value=p,
    )


def _check(target: float, risk: float) -> None:
    if not 0 < target < 1:
        raise ValueError(f"target must be strictly between 0 and 1, not {target}")
    if not 0 < risk < 1:
        raise ValueError(f"risk must be strictly between 0 and 1, not {risk}")
