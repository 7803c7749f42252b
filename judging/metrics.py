"""Agreement between the judge and SME ground truth (scikit-learn's implementations)."""

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, cohen_kappa_score, confusion_matrix, precision_score, recall_score

LABELS = ["accept", "reject"]


def agreement(truth: Sequence[str], predicted: Sequence[str]) -> dict:
    """Agreement of ``predicted`` with ``truth`` (parallel lists of "accept"/"reject").

    Returns ``{"n", "accuracy", "majority_baseline", "cohen_kappa",
    "precision_accept", "recall_accept", "confusion"}`` where
    ``majority_baseline`` is the accuracy of always answering the commoner
    truth label (what ``accuracy`` must beat to mean anything), precision and
    recall treat "accept" as the positive class, and ``confusion`` is
    ``{"sme_accept": {"judge_accept": n, "judge_reject": n}, "sme_reject": {...}}``.
    Cohen's kappa is (p_o - p_e) / (1 - p_e) (Cohen 1960), via
    ``sklearn.metrics.cohen_kappa_score``; it is None when undefined (one
    label only on both sides). With no pairs every figure is None.
    """
    n = len(truth)
    if n != len(predicted):
        raise ValueError(f"truth has {n} labels, predicted has {len(predicted)}")
    if n == 0:
        return {
            "n": 0,
            "accuracy": None,
            "majority_baseline": None,
            "cohen_kappa": None,
            "precision_accept": None,
            "recall_accept": None,
            "confusion": None,
        }
    matrix = confusion_matrix(truth, predicted, labels=LABELS)
    kappa = None if len(set(truth) | set(predicted)) < 2 else float(cohen_kappa_score(truth, predicted, labels=LABELS))
    return {
        "n": n,
        "accuracy": float(accuracy_score(truth, predicted)),
        "majority_baseline": max(truth.count("accept"), truth.count("reject")) / n,
        "cohen_kappa": kappa,
        "precision_accept": float(precision_score(truth, predicted, pos_label="accept", zero_division=0)),
        "recall_accept": float(recall_score(truth, predicted, pos_label="accept", zero_division=0)),
        "confusion": {
            "sme_accept": {"judge_accept": int(matrix[0, 0]), "judge_reject": int(matrix[0, 1])},
            "sme_reject": {"judge_accept": int(matrix[1, 0]), "judge_reject": int(matrix[1, 1])},
        },
    }


def cohen_kappa_bootstrap_ci(
    truth: Sequence[str], predicted: Sequence[str], *, resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float] | None:
    """A percentile bootstrap confidence interval for Cohen's kappa: ``(low, high)``, or None when undefined.

    Pairs are resampled with replacement ``resamples`` times (numpy,
    ``seed``); each resample's kappa is computed from its 2x2 counts with
    the same formula as ``sklearn.metrics.cohen_kappa_score``; resamples where
    kappa is undefined (one label only) are dropped. Efron & Tibshirani (1993),
    "An Introduction to the Bootstrap", ch. 13 (percentile interval).
    """
    n = len(truth)
    if n < 2 or n != len(predicted) or len(set(truth) | set(predicted)) < 2:
        return None
    t = np.array([x == "accept" for x in truth], dtype=np.int8)
    p = np.array([x == "accept" for x in predicted], dtype=np.int8)
    rows = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    kappas = kappa_from_indicators(t[rows], p[rows])
    kappas = kappas[~np.isnan(kappas)]
    if kappas.size == 0:
        return None
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(kappas, [tail, 100 - tail])
    if low == high:
        return None  # every resample gives the same kappa (no disagreement): a zero-width interval would look exact
    return float(low), float(high)


def kappa_from_indicators(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Cohen's kappa along the last axis of 0/1 arrays: (p_o - p_e) / (1 - p_e); NaN where p_e == 1."""
    n = truth.shape[-1]
    p_o = (truth == predicted).sum(axis=-1) / n
    t1, p1 = truth.sum(axis=-1) / n, predicted.sum(axis=-1) / n
    p_e = t1 * p1 + (1 - t1) * (1 - p1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p_e < 1, (p_o - p_e) / (1 - p_e), np.nan)
