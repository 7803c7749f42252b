"""How good is the accepted set? Its precision (the share an SME would accept), and the share of the rejected set
an SME would have accepted, each with a 95 % interval.

Method. The gate's set (accepted or rejected) splits into items with SME ground truth (their label is known,
so they count exactly) and items a tier of the gating policy decided without one (unknown, to estimate). For the
latter, the share an SME would accept is estimated by prediction-powered inference, power-tuned (PPI++:
Angelopoulos, Duchi & Zrnic 2023, arXiv:2311.01453; ``ppi_py.ppi_mean_pointestimate``), with an interval for
those very items (a finite set) rather than for an infinite population (``ppi_share`` says how): the gating
judge's calibrated P(accept) on every item the policy put in the set without an SME label, rectified by the SME
labels on the items the policy would have put there that were drawn for the SMEs by a recorded design
(``annotations.sampling``), each weighted by its inverse inclusion probability (normalised to mean 1: a Hajek
estimator). Beside it, the classical interval from SME labels alone: the Wilson
score interval (``scipy.stats.binomtest(...).proportion_ci(method="wilson")``) on the uniform-slice labels, the
only ones a plain binomial interval is valid for. With a certificate in force, a policy accept the gate holds
back (below the certified threshold, or any when nothing is certified) is in neither set, so the labels that
rectify the accepted set's estimate are those at or above the threshold, like the items it covers.

Assumptions: SMEs are the truth; SME items were drawn by the recorded design (labels on items no draw recorded,
such as imported prior labels, are counted but not used); the PPI++ interval is a normal approximation that
treats the weights and λ as fixed. With fewer than ``MIN_LABELLED`` usable labels no interval is given, nor a
PPI++ interval with fewer than ``MIN_PER_CLASS`` labels of either class (``bench/judge_quality.py`` measured
under-coverage there).
"""

import numpy as np

from annotations.models import Decision, Project
from annotations.sampling import memberships
from annotations.selectors import ground_truth
from annotations.statistics import wilson_interval
from judging.models import NO_POLICY, GateDecision, Verdict
from judging.selectors import (
    certification_current,
    certification_threshold,
    gating_policy,
    policy_verdicts,
    tier_runs,
)

ALPHA = 0.05
MIN_LABELLED = 10
MIN_PER_CLASS = 5
PPI_METHOD = (
    "PPI++ (Angelopoulos, Duchi & Zrnic 2023), ppi_py.ppi_mean_pointestimate, λ tuned for the finite set, "
    "interval with the finite-population variance of the difference estimator (Särndal, Swensson & Wretman "
    "1992), weights 1/inclusion probability"
)
CLASSICAL_METHOD = "Wilson score interval (scipy.stats.binomtest), uniform-slice SME labels only"
ASSUMPTIONS = [
    "SMEs are the truth.",
    "SME items were drawn by the recorded sampling designs; labels on items no draw recorded are not used.",
    "The PPI++ interval is a normal approximation, with the inverse-inclusion weights and λ taken as fixed.",
]


def accepted_set_precision(project: Project) -> dict:
    """``{"accepted": part, "rejected": part, "policy", "alpha", "min_labelled", "methods", "assumptions"}``.

    ``accepted`` is about the share of the gate's accepted set an SME would accept (its precision); ``rejected``
    the share of the rejected set an SME would have accepted. Each part::

        {"size": items in the set, "known": with SME ground truth, "known_accepts": of them SME-accepted,
         "estimated": without ground truth, decided by the policy, with a calibrated P(accept),
         "no_confidence": without ground truth or a calibrated P(accept) (not estimated),
         "labelled": n, SME labels on recorded draws where the policy alone would put the item in the set,
         "uniform_labelled": n, of them drawn by a uniform slice (the classical interval's),
         "unrecorded": such labels on items no draw recorded (not used),
         "ppi": {"estimate", "low", "high", "n", "N"} or None,
         "classical": {"estimate", "low", "high", "n"} or None,
         "whole_set": {"estimate", "low", "high"} or None: the set's share, known items exact, the rest by PPI,
         "notes": [what cannot be estimated and why]}

    Shares are in [0, 1]; intervals are 95 %. Never raises for a small project or a sample lacking a class: the
    notes say what is missing.
    """
    policy = gating_policy(project)
    truth = ground_truth(project=project)
    drawn = memberships(project)
    decided = policy_verdicts(project, policy=policy)
    p_by_run: dict[int, dict[int, float]] = {}
    for tier in policy.tiers.all() if policy else []:
        p_by_run[tier.run_id] = dict(
            Verdict.objects.filter(run_id__in=tier_runs(tier), confidence_calibrated__isnull=False)
            .exclude(verdict="")
            .values_list("item_id", "confidence_calibrated")
        )
    certification = certification_current(project)
    # None with a certificate that certifies nothing or is void: every judge accept is held back.
    threshold = certification_threshold(certification) if certification else None
    gate_rows = list(GateDecision.objects.filter(item__project=project).values_list("item_id", "outcome", "vetoed"))
    judge_side: dict[int, tuple[str, float | None]] = {}  # what the policy and the rules alone say, and P(accept)
    for item_id, _, vetoed in gate_rows:
        tier_verdict = decided.get(item_id)
        p = p_by_run.get(tier_verdict[0].run_id, {}).get(item_id) if tier_verdict else None
        if vetoed:
            judge_side[item_id] = (Decision.REJECT, p)
        elif tier_verdict and not _held_back(tier_verdict[1], p, certification is not None, threshold):
            judge_side[item_id] = (tier_verdict[1], p)
    parts = {}
    for name, outcome in (("accepted", Decision.ACCEPT), ("rejected", Decision.REJECT)):
        members = [item_id for item_id, o, _ in gate_rows if o == outcome]
        parts[name] = _part(outcome, members, truth, drawn, judge_side)
    return {
        **parts,
        "policy": policy.label if policy else NO_POLICY,
        "alpha": ALPHA,
        "min_labelled": MIN_LABELLED,
        "methods": {"ppi": PPI_METHOD, "classical": CLASSICAL_METHOD},
        "assumptions": ASSUMPTIONS,
    }


def _held_back(says: str, p: float | None, certificate: bool, threshold: float | None) -> bool:
    """Whether the gate leaves this policy accept pending for the certificate in force (as ``gate.decide`` with
    ``certified`` False): then it is in neither set, and its SME label rectifies neither estimate.
    ``certificate``: one is in force; ``threshold``: the one it applies (``selectors.certification_threshold``)."""
    if not certificate or says != Decision.ACCEPT:
        return False
    return threshold is None or p is None or p < threshold


def _part(outcome: str, members: list[int], truth: dict, drawn: dict, judge_side: dict) -> dict:
    accepts = Decision.ACCEPT.value
    known = [i for i in members if i in truth]
    unknown = [i for i in members if i not in truth]
    estimated = [i for i in unknown if judge_side.get(i, (None, None))[1] is not None]
    region = [i for i, (says, p) in judge_side.items() if says == outcome and p is not None and i in truth]
    labelled = [i for i in region if i in drawn]
    part = {
        "size": len(members),
        "known": len(known),
        "known_accepts": sum(truth[i] == accepts for i in known),
        "estimated": len(estimated),
        "no_confidence": len(unknown) - len(estimated),
        "labelled": len(labelled),
        "uniform_labelled": sum(1 for i in labelled if drawn[i][1]),
        "unrecorded": len(region) - len(labelled),
        "ppi": None,
        "classical": None,
        "whole_set": None,
        "notes": [],
    }
    notes = part["notes"]
    if not members:
        notes.append("The set is empty.")
        return part
    if part["no_confidence"]:
        notes.append(
            f"{part['no_confidence']} items in the set have neither SME ground truth nor a calibrated P(accept) "
            "from the gating policy: they are left out of the estimate."
        )
    if part["unrecorded"]:
        notes.append(
            f"{part['unrecorded']} SME labels are on items no recorded draw chose (e.g. imported labels): "
            "their inclusion probability is unknown, so they are not used."
        )
    if not estimated:
        if known:
            share = part["known_accepts"] / len(known)
            part["whole_set"] = {"estimate": share, "low": share, "high": share}
            notes.append("Every item in the set that can be counted has SME ground truth: the share is exact.")
        return part
    y = np.array([truth[i] == accepts for i in labelled], dtype=float)
    uniform = [i for i in labelled if drawn[i][1]]
    y_uniform = [truth[i] == accepts for i in uniform]
    if len(uniform) >= MIN_LABELLED:
        part["classical"] = {**wilson_share(sum(y_uniform), len(uniform)), "n": len(uniform)}
    else:
        notes.append(
            f"Classical interval: {len(uniform)} uniform-slice SME labels where the policy alone would put the "
            f"item in this set; at least {MIN_LABELLED} are needed for an interval to mean anything."
        )
    if len(labelled) < MIN_LABELLED:
        notes.append(
            f"PPI++ interval: {len(labelled)} SME labels from recorded draws where the policy alone would put the "
            f"item in this set; at least {MIN_LABELLED} are needed. Draw more for the SMEs (a confidence-weighted "
            "or audit sample)."
        )
        return part
    fewer = min(int(y.sum()), int(y.size - y.sum()))
    if fewer < MIN_PER_CLASS:
        said = "reject" if y.sum() > y.size - y.sum() else "accept"
        notes.append(
            f"Only {fewer} of the {len(labelled)} SME labels here are {said}s: the PPI++ interval (a normal "
            f"approximation) is not reliable with fewer than {MIN_PER_CLASS} of each class, so it is not given; "
            "the classical interval, valid with any mix, stands."
        )
        return part
    yhat = np.array([judge_side[i][1] for i in labelled], dtype=float)
    yhat_unlabelled = np.array([judge_side[i][1] for i in estimated], dtype=float)
    weights = np.array([1.0 / drawn[i][0] for i in labelled])
    part["ppi"] = {**ppi_share(y, yhat, yhat_unlabelled, weights), "n": len(labelled), "N": len(estimated)}
    theta, low, high = part["ppi"]["estimate"], part["ppi"]["low"], part["ppi"]["high"]
    total = len(known) + len(estimated)

    def share(x: float) -> float:
        return (part["known_accepts"] + x * len(estimated)) / total

    part["whole_set"] = {"estimate": share(min(max(theta, 0.0), 1.0)), "low": share(low), "high": share(high)}
    return part


def ppi_share(y, yhat, yhat_unlabelled, weights=None, *, alpha: float = ALPHA) -> dict:
    """Prediction-powered estimate and (1 - ``alpha``) interval of the share an SME would accept among the N
    unlabelled items themselves (a finite set: the items the gate puts in a set and exports).

    ``y``: SME labels (1 accept, 0 reject) of the n labelled items; ``yhat``: the judge's calibrated P(accept) on
    them; ``yhat_unlabelled``: on the N unlabelled items; ``weights``: inverse inclusion probabilities of the
    labelled items (None: equal). Returns ``{"estimate", "low", "high", "lam"}``, the interval clipped to [0, 1].

    The estimate is PPI++'s (Angelopoulos, Duchi & Zrnic 2023, arXiv:2311.01453), computed by
    ``ppi_py.ppi_mean_pointestimate``: θ = λ·mean(Ŷ unlabelled) + weighted mean(Y - λŶ labelled). λ is tuned for
    the finite set: the weighted Cov(Y, Ŷ)/Var(Ŷ) on the labelled items, clipped to [0, 1], which minimises the
    variance of θ - share (ppi_py's own λ and interval are for the mean of an infinite population, where the
    variance of Ŷ over the unlabelled items counts and the unlabelled items' own residuals do not). The
    interval: θ ± z·s·sqrt(1/n_eff + 1/N), s the weighted standard deviation of Y - λŶ (n - 1 in the
    denominator), n_eff = (Σw)²/Σw² (Kish's effective sample size); for equal weights this is the exact variance
    of the difference estimator of the unsampled items' mean under simple random sampling without replacement
    (Särndal, Swensson & Wretman 1992, "Model Assisted Survey Sampling", §6.3). Measured in
    ``bench/judge_quality.py``: ppi_py's interval covered the realised share in 0.90-0.91 of repetitions where
    this one covers 0.93-0.95. A normal approximation: the caller ensures several labels of each class.
    Raises ValueError for fewer than 2 labels.
    """
    from ppi_py import ppi_mean_pointestimate
    from scipy.stats import norm

    y, yhat, yhat_unlabelled = (np.asarray(a, dtype=float) for a in (y, yhat, yhat_unlabelled))
    if y.size < 2:
        raise ValueError(f"{y.size} labels: at least 2 are needed for an interval")
    w = np.ones(y.size) if weights is None else np.asarray(weights, dtype=float)
    w = w / w.mean()
    mean_y, mean_f = np.average(y, weights=w), np.average(yhat, weights=w)
    var_f = np.average((yhat - mean_f) ** 2, weights=w)
    lam = 0.0 if var_f == 0 else float(np.clip(np.average((y - mean_y) * (yhat - mean_f), weights=w) / var_f, 0, 1))
    theta = float(ppi_mean_pointestimate(y, yhat, yhat_unlabelled, lam=lam, w=w)[0])
    residual = y - lam * yhat
    s2 = np.average((residual - np.average(residual, weights=w)) ** 2, weights=w) * y.size / (y.size - 1)
    n_eff = w.sum() ** 2 / (w**2).sum()
    half = float(norm.ppf(1 - alpha / 2) * np.sqrt(s2 * (1 / n_eff + 1 / max(yhat_unlabelled.size, 1))))
    return {"estimate": theta, "low": max(0.0, theta - half), "high": min(1.0, theta + half), "lam": lam}


def wilson_share(successes: int, n: int, *, alpha: float = ALPHA) -> dict:
    """``{"estimate", "low", "high"}``: the share successes / n with its (1 - ``alpha``) Wilson score interval
    (``annotations.statistics.wilson_interval``, scipy's). n must be at least 1."""
    low, high = wilson_interval(successes, n, level=1 - alpha)
    return {"estimate": successes / n, "low": low, "high": high}
