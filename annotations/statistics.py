"""Intervals for agreement figures: Cohen's kappa, Krippendorff's alpha (nominal, two labels), proportions.

Every figure shown to a person comes with its n and a 95 % interval (house
style). The point estimates come from the libraries (scikit-learn's
``cohen_kappa_score``, the ``krippendorff`` package, ``scipy.stats``); the
bootstrap recomputes the same formulas on resampled counts (a multinomial
draw of how many items of each kind), vectorised with numpy, so that 2,000
resamples take milliseconds and memory does not grow with the number of
items (the tests check the formulas against the libraries on the same
labels, and the kappa interval against ``scipy.stats.bootstrap``).

Why not ``scipy.stats.bootstrap``: some resamples have one label only, where
kappa and alpha are undefined (0/0); scipy's percentile interval is NaN as
soon as one resample is. These resamples are dropped here instead.
``judging`` uses the kappa interval too, for the judge against the SMEs
(dependencies run ``judging`` → ``annotations``).
"""

from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95

# Below this many items an agreement figure is flagged "too few to mean anything" on the pages.
SMALL_N = 20


def _percentile_interval(values: np.ndarray, level: float) -> tuple[float, float] | None:
    """The percentile interval of the defined (non-NaN) bootstrap values; None if none, or if of zero width
    (every resample the same: a zero-width interval would look exact)."""
    values = values[~np.isnan(values)]
    if values.size == 0:
        return None
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    if low == high:
        return None
    return float(low), float(high)


def kappa_from_table(table: np.ndarray) -> np.ndarray:
    """Cohen's kappa from 2x2 counts along the last axis, ordered (accept, accept), (accept, reject),
    (reject, accept), (reject, reject): (p_o - p_e) / (1 - p_e), as ``sklearn.metrics.cohen_kappa_score``
    computes it; NaN where p_e == 1 (one label only)."""
    aa, ar, ra, rr = (table[..., i] for i in range(4))
    n = aa + ar + ra + rr
    p_o = (aa + rr) / n
    first, second = (aa + ar) / n, (aa + ra) / n
    p_e = first * second + (1 - first) * (1 - second)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p_e < 1, (p_o - p_e) / (1 - p_e), np.nan)


def cohen_kappa_bootstrap_ci(
    truth: Sequence[str], predicted: Sequence[str], *, resamples: int = RESAMPLES, seed: int = 0, level: float = LEVEL
) -> tuple[float, float] | None:
    """A percentile bootstrap confidence interval for Cohen's kappa: ``(low, high)``, or None when undefined.

    ``truth`` and ``predicted`` are parallel lists of "accept"/"reject" (one
    pair per item; the labels of two raters). Pairs are resampled with
    replacement ``resamples`` times (numpy, ``seed``): drawing n pairs from
    the four kinds of pair is a multinomial draw of the 2x2 table, so memory
    does not grow with n. Each resample's kappa comes from
    ``kappa_from_table``; resamples where kappa is undefined (one label only)
    are dropped. Efron & Tibshirani (1993), "An Introduction to the
    Bootstrap", ch. 13 (percentile interval).
    """
    n = len(truth)
    if n < 2 or n != len(predicted) or len(set(truth) | set(predicted)) < 2:
        return None
    pairs = Counter(zip(truth, predicted, strict=True))
    table = np.array([pairs[("accept", "accept")], pairs[("accept", "reject")], pairs[("reject", "accept")]])
    table = np.append(table, n - table.sum())
    weights = np.random.default_rng(seed).multinomial(n, table / n, size=resamples)
    return _percentile_interval(kappa_from_table(weights.astype(float)), level)


def alpha_from_counts(accepts: np.ndarray, rejects: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Krippendorff's alpha for nominal data with two labels, from each item's label counts.

    ``accepts`` and ``rejects`` (shape ``(k,)``) are the counts of each kind
    of item (items with two or more labels only); ``weights`` (shape
    ``(..., k)``) how many items of each kind. With ``m = a + r`` labels on an
    item, its coincidences are ``a r / (m - 1)`` for each ordered pair of
    different labels, and the marginals are ``n_accept = sum a``,
    ``n_reject = sum r``, ``n = n_accept + n_reject``; then
    ``alpha = 1 - (n - 1) * sum(a r / (m - 1)) / (n_accept n_reject)``
    (Krippendorff 2011, "Computing Krippendorff's alpha-reliability", sec. C,
    nominal metric). NaN where one label only is present.
    """
    m = accepts + rejects
    disagreement = weights @ (accepts * rejects / (m - 1))
    n_accept, n_reject = weights @ accepts, weights @ rejects
    n = n_accept + n_reject
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n_accept * n_reject > 0, 1 - (n - 1) * disagreement / (n_accept * n_reject), np.nan)


def krippendorff_alpha_bootstrap_ci(
    items: Iterable[tuple[int, int]], *, resamples: int = RESAMPLES, seed: int = 0, level: float = LEVEL
) -> tuple[float, float] | None:
    """A percentile bootstrap 95 % interval for Krippendorff's alpha (nominal, two labels), over items.

    ``items`` gives each item's ``(accepts, rejects)`` (items with two or more
    labels; missing raters are simply not counted). Items are resampled with
    replacement ``resamples`` times (numpy, ``seed``): drawing n items from
    the k kinds of ``(accepts, rejects)`` is a multinomial draw of the kinds'
    counts. Each resample's alpha comes from ``alpha_from_counts``; resamples
    with one label only are dropped. Efron & Tibshirani (1993), ch. 13; the
    bootstrap over units is Krippendorff's (2011) own suggestion for alpha's
    uncertainty (Hayes & Krippendorff 2007 resample pairable values instead).
    Returns None with fewer than 2 items or a single label throughout.
    """
    kinds = Counter((int(a), int(r)) for a, r in items)
    n = sum(kinds.values())
    if n < 2:
        return None
    accepts = np.array([a for a, _ in kinds], dtype=float)
    rejects = np.array([r for _, r in kinds], dtype=float)
    if accepts.sum() == 0 or rejects.sum() == 0:
        return None
    shares = np.array(list(kinds.values()), dtype=float) / n
    weights = np.random.default_rng(seed).multinomial(n, shares, size=resamples).astype(float)
    return _percentile_interval(alpha_from_counts(accepts, rejects, weights), level)


def wilson_interval(successes: int, n: int, level: float = LEVEL) -> tuple[float, float] | None:
    """The Wilson score interval of ``successes`` of ``n`` (``scipy.stats.binomtest``); None for n = 0."""
    from scipy.stats import binomtest

    if not n:
        return None
    ci = binomtest(successes, n).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)
