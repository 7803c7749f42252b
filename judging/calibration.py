"""Calibration of a judge's P(accept) against SME ground truth: a recalibration map, and how well calibrated it is.

Pure functions on numpy arrays (no database). ``p`` is the judge's P(accept)
in [0, 1], ``y`` is 1 where the SMEs accepted the item and 0 where they
rejected it.

The map (``fit_map``, ``apply_map``): Platt scaling below ``ISOTONIC_FROM``
labels, isotonic regression at or above. Niculescu-Mizil & Caruana (2005),
"Predicting good probabilities with supervised learning" (ICML), found that
isotonic regression, being non-parametric, overfits small calibration sets and
is beaten there by Platt's sigmoid, while it wins once there are roughly a
thousand or more calibration examples; hence the switch at 1,000. Platt's
sigmoid is fit on the logit of the raw probability (so a judge that is
already calibrated needs a = 1, b = 0), with scikit-learn's
``LogisticRegression`` (its default L2 penalty, C = 1, keeps the slope finite
when the labels are separable); the isotonic map is scikit-learn's
``IsotonicRegression(out_of_bounds="clip")``, stored as its breakpoints and
re-applied by linear interpolation between them, as scikit-learn does.

Cross-fitting (``cross_fit``): the labelled items are split into K stratified
folds (seeded); each labelled item's calibrated value comes from the map fit
on the other K - 1 folds, so no item's calibrated confidence was fit on its
own label. Each unlabelled item is given a fold too, independently of its
label (its key modulo K, ``fold_key`` of its external id in the app, or a seeded draw), and gets that fold's map: so a
labelled item and an unlabelled one are calibrated by the same K maps in the
same proportions, and their (calibrated P(accept), SME label) pairs are
exchangeable, which the estimate, the certificate and the tier thresholds
assume. With the map fit on all labels for the unlabelled items instead,
they would be calibrated by a better map than the labelled items that vouch
for them (``bench/judge_quality.py`` measured the difference).
"""

import zlib
from dataclasses import dataclass

import numpy as np

from annotations.statistics import wilson_interval  # one Wilson interval for the project; judging imports it from here

MIN_PER_CLASS = 5  # labels of each kind below which nothing is calibrated
ISOTONIC_FROM = 1000  # labels at or above which the map is isotonic rather than Platt's sigmoid
FOLDS = 5
SEED = 0
BINS = 10
EPS = 1e-6  # raw probabilities are clipped to [EPS, 1 - EPS] before the logit


class NotEnoughLabels(ValueError):
    """Too few SME labels of one kind to fit a map; ``n_accept`` and ``n_reject`` say how many there are."""

    def __init__(self, n_accept: int, n_reject: int, need: int = MIN_PER_CLASS):
        self.n_accept, self.n_reject, self.need = n_accept, n_reject, need
        super().__init__(
            f"not enough SME labels to calibrate (have {n_accept} accept{'s' * (n_accept != 1)}, "
            f"{n_reject} reject{'s' * (n_reject != 1)}; need at least {need} of each, on items with a "
            f"confidence and not shown to the judge as few-shot examples)"
        )


def _as_arrays(p, y=None) -> tuple[np.ndarray, np.ndarray | None]:
    p = np.asarray(p, dtype=float).reshape(-1)
    if p.size and (np.isnan(p).any() or p.min() < 0 or p.max() > 1):
        raise ValueError("probabilities must lie in [0, 1] (leave out unknown ones, do not pass NaN)")
    if y is None:
        return p, None
    y = np.asarray(y, dtype=int).reshape(-1)
    if y.size != p.size:
        raise ValueError(f"{p.size} probabilities but {y.size} labels")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (reject) or 1 (accept)")
    return p, y


def _logit(p: np.ndarray) -> np.ndarray:
    from scipy.special import logit

    return logit(np.clip(p, EPS, 1 - EPS))


def method_for(n_labels: int) -> str:
    """``"platt"`` below ``ISOTONIC_FROM`` labels, ``"isotonic"`` at or above (Niculescu-Mizil & Caruana 2005)."""
    return "isotonic" if n_labels >= ISOTONIC_FROM else "platt"


def fit_map(p, y, *, method: str | None = None) -> dict:
    """Fit a recalibration map of raw P(accept) ``p`` to SME accept ``y``; returns it as JSON-ready data.

    ``{"method": "platt", "a": float, "b": float}`` (calibrated =
    expit(a * logit(p) + b), p clipped to [1e-6, 1 - 1e-6]) or ``{"method":
    "isotonic", "x": [...], "y": [...]}`` (breakpoints; calibrated = linear
    interpolation, clipped at the ends). ``method`` defaults to
    ``method_for(len(y))``. Raises NotEnoughLabels with fewer than 2 labels of
    either kind (the callers ask for ``MIN_PER_CLASS``), ValueError on bad input.
    """
    from sklearn.isotonic import IsotonicRegression
    from sklearn.linear_model import LogisticRegression

    p, y = _as_arrays(p, y)
    n_accept, n_reject = int(y.sum()), int(y.size - y.sum())
    if min(n_accept, n_reject) < 2:
        raise NotEnoughLabels(n_accept, n_reject, need=2)
    method = method or method_for(y.size)
    if method == "platt":
        model = LogisticRegression().fit(_logit(p).reshape(-1, 1), y)
        return {"method": "platt", "a": float(model.coef_[0, 0]), "b": float(model.intercept_[0])}
    if method == "isotonic":
        model = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(p, y)
        return {
            "method": "isotonic",
            "x": [float(v) for v in model.X_thresholds_],
            "y": [float(v) for v in model.y_thresholds_],
        }
    raise ValueError(f"unknown calibration method {method!r}: platt or isotonic")


def apply_map(mapping: dict, p) -> np.ndarray:
    """Calibrated P(accept) for raw ``p`` under a map from ``fit_map`` (or read back from JSON)."""
    from scipy.special import expit

    p, _ = _as_arrays(p)
    if mapping["method"] == "platt":
        return expit(mapping["a"] * _logit(p) + mapping["b"])
    if mapping["method"] == "isotonic":
        return np.interp(p, mapping["x"], mapping["y"])
    raise ValueError(f"unknown calibration method {mapping['method']!r}")


@dataclass(frozen=True)
class CrossFit:
    """What ``cross_fit`` returns: values for the labelled and unlabelled items, in the order given."""

    labelled: np.ndarray  # out-of-fold calibrated P(accept)
    unlabelled: np.ndarray  # calibrated by the map of their fold (``unlabelled_fold``)
    mapping: dict  # the map fit on all labels (a summary to show; not applied)
    fold: np.ndarray  # each labelled item's fold, 0 .. folds - 1
    unlabelled_fold: np.ndarray  # each unlabelled item's fold
    folds: int
    method: str


def fold_assignment(y, *, folds: int = FOLDS, seed: int = SEED) -> np.ndarray:
    """Each label's fold (``StratifiedKFold``, shuffled with ``seed``); K = min(folds, the smaller class's size)."""
    from sklearn.model_selection import StratifiedKFold

    _, y = _as_arrays(np.zeros(len(y)), y)
    k = min(folds, int(y.sum()), int(y.size - y.sum()))
    fold = np.empty(y.size, dtype=int)
    for index, (_, test) in enumerate(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(fold, y)):
        fold[test] = index
    return fold


def fold_key(external_id: str) -> int:
    """A stable, label-independent key for an unlabelled item's fold: CRC-32 of its external id (UTF-8), so the
    same data give the same folds however often it is imported (database ids change)."""
    return zlib.crc32(external_id.encode("utf-8"))


def cross_fit(p_labelled, y, p_unlabelled, *, folds: int = FOLDS, seed: int = SEED, unlabelled_keys=None) -> CrossFit:
    """Cross-fitted recalibration: out-of-fold values for labelled items, and for each unlabelled item the map
    of the fold it is given (module docstring): ``unlabelled_keys[i] % K`` when keys (non-negative integers, such
    as item ids, which do not depend on labels) are given, else a draw seeded with ``seed``.

    The method is ``method_for(len(y))`` for every fold. Raises
    NotEnoughLabels with fewer than ``MIN_PER_CLASS`` labels of either kind.
    """
    p_labelled, y = _as_arrays(p_labelled, y)
    p_unlabelled, _ = _as_arrays(p_unlabelled)
    n_accept, n_reject = int(y.sum()), int(y.size - y.sum())
    if min(n_accept, n_reject) < MIN_PER_CLASS:
        raise NotEnoughLabels(n_accept, n_reject)
    method = method_for(y.size)
    fold = fold_assignment(y, folds=folds, seed=seed)
    k = int(fold.max()) + 1
    if unlabelled_keys is None:
        unlabelled_fold = np.random.default_rng(seed).integers(0, k, size=p_unlabelled.size)
    else:
        unlabelled_fold = np.asarray(unlabelled_keys, dtype=np.int64) % k
        if unlabelled_fold.shape != p_unlabelled.shape:
            raise ValueError(f"{unlabelled_fold.size} unlabelled keys for {p_unlabelled.size} unlabelled values")
    labelled, unlabelled = np.empty(p_labelled.size), np.empty(p_unlabelled.size)
    for j in range(k):
        mapping_j = fit_map(p_labelled[fold != j], y[fold != j], method=method)
        labelled[fold == j] = apply_map(mapping_j, p_labelled[fold == j])
        unlabelled[unlabelled_fold == j] = apply_map(mapping_j, p_unlabelled[unlabelled_fold == j])
    return CrossFit(
        labelled=labelled,
        unlabelled=unlabelled,
        mapping=fit_map(p_labelled, y, method=method),
        fold=fold,
        unlabelled_fold=unlabelled_fold,
        folds=k,
        method=method,
    )


def _bin_ids(p: np.ndarray, bins: int) -> np.ndarray:
    # The same edges and side as sklearn.calibration.calibration_curve(strategy="uniform").
    return np.searchsorted(np.linspace(0.0, 1.0, bins + 1)[1:-1], p)


def reliability_bins(p, y, *, bins: int = BINS) -> list[dict]:
    """Equal-width bins over [0, 1]: ``[{"low", "high", "n", "mean_confidence", "accept_rate", "interval"}]``.

    One row per bin, empty ones included (their figures None);
    ``accept_rate`` is the share of the bin's items the SMEs accepted, with
    its Wilson 95 % interval. Edges as in
    ``sklearn.calibration.calibration_curve(strategy="uniform")``.
    """
    p, y = _as_arrays(p, y)
    ids = _bin_ids(p, bins)
    counts = np.bincount(ids, minlength=bins)
    sums = np.bincount(ids, weights=p, minlength=bins)
    accepts = np.bincount(ids, weights=y, minlength=bins)
    rows = []
    for b in range(bins):
        n = int(counts[b])
        rows.append(
            {
                "low": b / bins,
                "high": (b + 1) / bins,
                "n": n,
                "mean_confidence": float(sums[b] / n) if n else None,
                "accept_rate": float(accepts[b] / n) if n else None,
                "interval": wilson_interval(round(accepts[b]), n),
            }
        )
    return rows


def expected_calibration_error(p, y, *, bins: int = BINS) -> float | None:
    """ECE = sum over equal-width bins of (n_b / n) * |SME accept rate_b - mean P(accept)_b|; None when n = 0.

    Naeini, Cooper & Hauskrecht (2015), "Obtaining well calibrated
    probabilities using Bayesian binning" (AAAI); Guo et al. (2017), "On
    calibration of modern neural networks" (ICML), with 10 bins. Here the
    probability binned is P(accept) itself (the positive class), not the
    top-label confidence, since P(accept) is what thresholds read.
    """
    p, y = _as_arrays(p, y)
    if p.size == 0:
        return None
    return float(
        sum(
            row["n"] / p.size * abs(row["accept_rate"] - row["mean_confidence"])
            for row in reliability_bins(p, y, bins=bins)
            if row["n"]
        )
    )


def auroc(p, y, *, level: float = 0.95) -> dict | None:
    """AUROC of ``p`` against SME accept, with DeLong's interval: ``{"auc", "low", "high", "se", "n", "n_accept",
    "n_reject"}``; None without labels of both kinds.

    The AUC is the Mann-Whitney statistic (ties count one half), equal to
    ``sklearn.metrics.roc_auc_score``. Its variance is DeLong, DeLong &
    Clarke-Pearson (1988), "Comparing the areas under two or more correlated
    receiver operating characteristic curves: a nonparametric approach"
    (Biometrics 44:837), computed from midranks as in Sun & Xu (2014), "Fast
    implementation of DeLong's algorithm" (IEEE Signal Processing Letters
    21:1389). The interval is AUC ± z * SE, clipped to [0, 1]. When the
    variance estimate is 0 (every accept ranked above every reject, or all
    scores tied) DeLong gives no interval: ``low`` and ``high`` are None and
    ``note`` says why, rather than a zero-width interval that would look exact.
    """
    from scipy.stats import norm, rankdata

    p, y = _as_arrays(p, y)
    positives, negatives = p[y == 1], p[y == 0]
    m, n = positives.size, negatives.size
    if m == 0 or n == 0:
        return None
    all_ranks = rankdata(np.concatenate([positives, negatives]))
    rank_pos, rank_neg = rankdata(positives), rankdata(negatives)
    v10 = (all_ranks[:m] - rank_pos) / n  # per positive: share of negatives below it
    v01 = 1 - (all_ranks[m:] - rank_neg) / m  # per negative: share of positives above it
    auc = float(v10.mean())
    s10 = float(np.var(v10, ddof=1)) if m > 1 else 0.0
    s01 = float(np.var(v01, ddof=1)) if n > 1 else 0.0
    se = float(np.sqrt(s10 / m + s01 / n))
    z = float(norm.ppf(1 - (1 - level) / 2))
    degenerate = se == 0.0
    return {
        "auc": auc,
        "low": None if degenerate else max(0.0, auc - z * se),
        "high": None if degenerate else min(1.0, auc + z * se),
        "note": "no interval: DeLong's variance is 0 (perfect ranking or all scores tied)" if degenerate else "",
        "se": se,
        "n": int(m + n),
        "n_accept": int(m),
        "n_reject": int(n),
    }


def calibration_summary(p, y, *, bins: int = BINS) -> dict:
    """``{"n", "n_accept", "n_reject", "bins": reliability_bins, "ece", "auroc"}`` of one set of probabilities."""
    p, y = _as_arrays(p, y)
    return {
        "n": int(p.size),
        "n_accept": int(y.sum()),
        "n_reject": int(y.size - y.sum()),
        "bins": reliability_bins(p, y, bins=bins),
        "ece": expected_calibration_error(p, y, bins=bins),
        "auroc": auroc(p, y),
    }
