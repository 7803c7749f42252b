"""Certify the accepted set: the largest set the gating judge accepts whose precision (the share an SME would
accept) is at least ``target`` with confidence ``1 - delta``.

Method: Learn-then-Test (Angelopoulos, Bates, Candès, Jordan & Lei, "Learn then Test: Calibrating Predictive
Algorithms to Achieve Risk Control", 2021, arXiv:2110.01052) with fixed-sequence testing. The candidate
thresholds λ on the gating judge's calibrated P(accept) are a grid fixed before any label is seen
(``GRID``: 1.000, 0.995, ..., 0.500), scanned from the most certain down. At each λ, with n SME-labelled items of
P(accept) ≥ λ of which k the SMEs accept, H0 "precision < target" is tested with the exact binomial p-value
P(Binomial(n, target) ≥ k) (``scipy.stats.binom``); the scan stops at the first λ not rejected at level
``delta`` and certifies the last rejected λ. Fixed-sequence testing controls the family-wise error at ``delta``
without a Bonferroni division, so P(precision of {P(accept) ≥ λ} ≥ target) ≥ 1 - delta. Candidates with fewer
than ``thresholds.items_needed`` labelled items are skipped (that depends on P(accept) only, not on the labels,
so the order stays fixed in advance).

Why not MAPIE: its ``BinaryClassificationController`` (mapie ≥ 1.0, risk control by LTT) wraps a fitted
classifier's ``predict_proba`` and tests with Hoeffding-Bentkus p-values over the whole grid; for a 0/1 loss the
exact binomial test here is valid and never weaker, Larry's confidences are stored numbers rather than a model,
and the package is not otherwise needed. The arithmetic is a dozen lines of scipy, tested against it.

Assumptions: SMEs are the truth. Only SME labels on items drawn by a uniform slice of a recorded design
(``annotations.sampling``, ``uniform_slice``) are used: they alone are a simple random sample of the items, so
the labelled items with P(accept) ≥ λ are exchangeable with the unlabelled ones. Labels from confidence-weighted
or stratified draws, the audit sample, or imported labels are not used here. The judge's confidences must not
change after the certificate is computed (a recalibration needs a new certificate).
"""

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from annotations.models import Decision, Project, SampleMembership
from annotations.selectors import ground_truth
from judging.models import NO_POLICY, GateDecision, Verdict
from judging.selectors import gating_policy, policy_verdicts, tier_runs
from judging.thresholds import DEFAULT_CANDIDATES, agreement_p_value, items_needed

GRID = DEFAULT_CANDIDATES
METHOD = (
    "Learn-then-Test (Angelopoulos, Bates, Candès, Jordan & Lei 2021), fixed-sequence testing over P(accept) "
    "thresholds 1.000 to 0.500 in steps of 0.005, exact binomial p-values (scipy.stats.binom), "
    "uniform-slice SME labels only"
)
ASSUMPTIONS = [
    "SMEs are the truth.",
    "SME items were drawn by the recorded design; only the uniform slice's labels are used, being a simple "
    "random sample of the items.",
    "The gating judge's calibrated P(accept) does not change after the certificate is computed.",
]
MAX_EXTRA = 100_000


@dataclass(frozen=True)
class Certificate:
    """The outcome of ``certify``.

    ``threshold``: the certified λ (items with P(accept) ≥ λ are certified), or None with ``reason`` saying why.
    ``n``/``accepted_by_smes``: labelled items at P(accept) ≥ threshold and how many the SMEs accept;
    ``bound``: the one-sided Clopper-Pearson lower confidence bound (level 1 - delta) of the precision there,
    ≥ target whenever a threshold is certified (it is the dual of the binomial test); ``n_labelled``: every
    usable label; ``certified``: items of ``population`` with P(accept) ≥ threshold (0 when none);
    ``next``: what more labels would buy, ``{"threshold", "items", "more_items", "labels", "more_labels",
    "labelled_now", "accepted_now", "reachable", "uniform_draw"}`` — at the next grid threshold (the highest, from
    the one that failed or the first tested when nothing passed downwards, that covers more of ``population``),
    ``more_labels`` more
    uniform-slice SME labels on items of P(accept) ≥ that threshold, all accepted by the SMEs, are the least that
    could pass there and certify ``more_items`` more items. Optimistic: real labels include rejects, and the tests
    at the grid values above must pass too. ``uniform_draw``: about how many items a uniform draw must bring to
    the SMEs for ``more_labels`` of them to land at that threshold (by the share of labelled items there now;
    None without any, or when not ``reachable``: fewer items of ``population`` are there than ``more_labels``).
    None when every candidate passed.
    """

    target: float
    delta: float
    threshold: float | None
    n: int
    accepted_by_smes: int
    bound: float | None
    p_value: float | None
    n_labelled: int
    certified: int
    population: int
    method: str = METHOD
    reason: str = ""
    next: dict | None = None
    assumptions: list[str] = field(default_factory=lambda: list(ASSUMPTIONS))

    def as_dict(self) -> dict:
        return asdict(self)


def lower_bound(accepted: int, n: int, delta: float) -> float | None:
    """One-sided Clopper-Pearson lower bound of a proportion at confidence 1 - ``delta``
    (``scipy.stats.binomtest(..., alternative="greater").proportion_ci(method="exact")``); None when n = 0."""
    from scipy.stats import binomtest

    if n == 0:
        return None
    ci = binomtest(accepted, n, alternative="greater").proportion_ci(confidence_level=1 - delta, method="exact")
    return float(ci.low)


def labels_to_pass(accepted: int, n: int, *, target: float, delta: float) -> int | None:
    """The least m ≥ 0 such that ``accepted + m`` of ``n + m`` (m more labels, all accepted by the SMEs) pass the
    exact binomial test: P(Binomial(n + m, target) ≥ accepted + m) ≤ delta. None beyond ``MAX_EXTRA``."""
    from scipy.stats import binom

    m = np.arange(0, MAX_EXTRA + 1)
    p = binom.sf(accepted + m - 1, n + m, target)
    hits = np.flatnonzero(p <= delta)
    return int(hits[0]) if hits.size else None


def certify(
    p_accept: Sequence[float],
    sme_accepts: Sequence[bool],
    *,
    target: float,
    delta: float,
    population: Sequence[float] = (),
    grid: Sequence[float] = GRID,
) -> Certificate:
    """The lowest P(accept) threshold whose accepted set has precision ≥ ``target`` with confidence 1 - ``delta``.

    ``p_accept[i]``: the gating judge's calibrated P(accept) on uniform-slice SME-labelled item i;
    ``sme_accepts[i]``: whether the SMEs accept it. ``population``: P(accept) of the items to certify (the
    accepted set without SME ground truth); its count at the threshold is ``certified``. ``target`` and
    ``delta`` are fractions strictly between 0 and 1. Method and assumptions: the module docstring.

    Never raises for few labels or labels of one class: ``threshold`` is None and ``reason`` says why. Raises
    ValueError when the sequences differ in length, a P(accept) is outside [0, 1], or target/delta are outside (0, 1).
    """
    needed = items_needed(target, delta)  # validates target and delta
    c = np.asarray(p_accept, dtype=float)
    a = np.asarray(sme_accepts, dtype=bool)
    pop = np.asarray(population, dtype=float)
    if c.shape != a.shape or c.ndim != 1:
        raise ValueError(f"p_accept has {c.size} values, sme_accepts has {a.size}")
    for values in (c, pop):
        if values.size and (np.isnan(values).any() or values.min() < 0 or values.max() > 1):
            raise ValueError("P(accept) must lie in [0, 1]")
    order = np.argsort(-c, kind="stable")
    sorted_c, cum = c[order], np.cumsum(a[order])

    def at(lam: float) -> tuple[int, int]:
        n = int(np.searchsorted(-sorted_c, -lam, side="right"))
        return n, int(cum[n - 1]) if n else 0

    def count(lam: float) -> int:
        return int((pop >= lam).sum())

    chosen = failed = first = None
    for lam in sorted(grid, reverse=True):
        n, k = at(lam)
        if n < needed:
            continue
        first = first or lam
        p = agreement_p_value(k, n, target)
        if p > delta:
            failed = (lam, n, k, p)
            break
        chosen = (lam, n, k, p)

    wanted = f"precision of at least {target:.1%} with confidence {1 - delta:.1%}"
    base = {"target": target, "delta": delta, "n_labelled": int(c.size), "population": int(pop.size)}
    lowest = min(grid)
    nxt_lam = failed[0] if failed else (first if chosen is None else None)
    if nxt_lam is None and chosen is None:
        # Too few labels anywhere: the next step is the whole grid's bottom, with what labels there are.
        nxt_lam = lowest
    nxt = None
    if nxt_lam is not None:
        now = count(chosen[0]) if chosen else 0
        # The first grid value from there down that would certify more items (the failed one if none would).
        nxt_lam = next((lam for lam in sorted(grid, reverse=True) if lam <= nxt_lam and count(lam) > now), nxt_lam)
        n_next, k_next = at(nxt_lam)
        m = labels_to_pass(k_next, n_next, target=target, delta=delta)
        nxt = {
            "threshold": float(nxt_lam),
            "items": count(nxt_lam),
            "more_items": count(nxt_lam) - now,
            "labelled_now": n_next,
            "accepted_now": k_next,
            "more_labels": m,
            "labels": None if m is None else n_next + m,
            # Whether there are that many unlabelled items there at all (a small project may have fewer).
            "reachable": m is not None and m <= count(nxt_lam),
            # About how many items a uniform draw needs for that many labels to land at P(accept) ≥ threshold.
            "uniform_draw": (
                None if m is None or n_next == 0 or m > count(nxt_lam) else int(np.ceil(m * c.size / n_next))
            ),
        }
    if chosen is None:
        if c.size == 0:
            reason = f"No uniform-slice SME labels on items with a calibrated P(accept): nothing shows {wanted}."
        elif failed is None:
            reason = (
                f"Only {c.size} uniform-slice SME labels on items with a calibrated P(accept); at least {needed}, "
                f"all accepted by the SMEs, are needed at one threshold to show {wanted}."
            )
        else:
            lam, n, k = failed[:3]
            reason = (
                f"The judge's most certain accepts do not show {wanted}: at P(accept) ≥ {lam:g}, the SMEs accept "
                f"{k} of {n} labelled items (p = {failed[3]:.2g} > {delta:g})."
            )
        if nxt and nxt["more_labels"] is None:
            reason += " This judge cannot reach the target with any practical number of labels."
        return Certificate(
            **base, threshold=None, n=0, accepted_by_smes=0, bound=None, p_value=None, certified=0,
            reason=reason, next=nxt,
        )  # fmt: skip
    lam, n, k, p = chosen
    return Certificate(
        **base,
        threshold=float(lam),
        n=n,
        accepted_by_smes=k,
        bound=lower_bound(k, n, delta),
        p_value=float(p),
        certified=count(lam),
        next=nxt,
    )


def project_certificate(project: Project, *, target: float, delta: float) -> dict:
    """Certify the project's accepted set now: ``{"certificate": Certificate, "design": {...}, "policy": label,
    "not_covered": n}``.

    P(accept) of an item is the calibrated P(accept) of the policy tier that decides it
    (``selectors.policy_verdicts``), else of the first tier, in order, with one. Labels: SME ground truth on items
    a uniform slice drew (``SampleMembership.uniform_slice``) that have a P(accept). Population: items a tier of
    the policy accepts, without SME ground truth (their precision is the one in doubt) and not vetoed by a rule,
    with a P(accept); ``not_covered`` counts those without one (never certified). ``design``:
    ``{"uniform_slice_labels": n, "labels_not_used": n (SME labels off the uniform slice or on undrawn items),
    "draws": [{"id", "design", "seed", "size"}]}``.
    Never raises for a project without a policy, labels or accepts; raises ValueError for target/delta outside (0, 1).
    """
    items_needed(target, delta)
    policy = gating_policy(project)
    truth = ground_truth(project=project)
    p_accept = p_accept_by_item(project, policy)
    uniform = dict(
        SampleMembership.objects.filter(draw__project=project, uniform_slice=True).values_list("item_id", "draw_id")
    )
    labelled = [i for i in truth if i in uniform and i in p_accept]
    # The items the policy accepts (not the gate's accepted set, which a certificate in force shrinks), less
    # those an active rule vetoes.
    vetoed = set(GateDecision.objects.filter(item__project=project, vetoed=True).values_list("item_id", flat=True))
    accepted = (
        [i for i, (_, says) in policy_verdicts(project, policy=policy).items() if says == Decision.ACCEPT]
        if policy is not None
        else []
    )
    unknown = [i for i in accepted if i not in truth and i not in vetoed]
    population = [p_accept[i] for i in unknown if i in p_accept]
    cert = certify(
        [p_accept[i] for i in labelled],
        [truth[i] == Decision.ACCEPT for i in labelled],
        target=target,
        delta=delta,
        population=population,
    )
    if policy is None:
        cert = Certificate(
            **{**cert.as_dict(), "reason": "The project has no gating policy: no judge accepts anything to certify."}
        )
    draw_ids = sorted({uniform[i] for i in labelled})
    draws = list(project.sample_draws.filter(pk__in=draw_ids).order_by("pk").values("id", "design", "seed", "size"))
    return {
        "certificate": cert,
        "design": {
            "uniform_slice_labels": len(labelled),
            "labels_not_used": len(truth) - len(labelled),
            "draws": draws,
        },
        "policy": policy.label if policy else NO_POLICY,
        "not_covered": len(unknown) - len(population),
    }


def p_accept_by_item(project: Project, policy, item_ids: list[int] | None = None) -> dict[int, float]:
    """``{item_id: P(accept)}``: the calibrated P(accept) of the policy tier that decides the item
    (``selectors.policy_verdicts``), else of the first tier, in order, with one; ``{}`` without a policy. Pass
    ``item_ids`` to read only those items."""
    p_accept: dict[int, float] = {}
    if policy is None:
        return p_accept
    p_by_run: dict[int, dict[int, float]] = {}
    for tier in policy.tiers.all():
        rows = Verdict.objects.filter(run_id__in=tier_runs(tier), confidence_calibrated__isnull=False)
        rows = rows.exclude(verdict="")
        if item_ids is not None:
            rows = rows.filter(item_id__in=item_ids)
        p_by_run[tier.run_id] = dict(rows.values_list("item_id", "confidence_calibrated"))
        for item_id, p in p_by_run[tier.run_id].items():
            p_accept.setdefault(item_id, p)
    for item_id, (tier, _) in policy_verdicts(project, policy=policy, item_ids=item_ids).items():
        if item_id in p_by_run.get(tier.run_id, {}):
            p_accept[item_id] = p_by_run[tier.run_id][item_id]
    return p_accept
