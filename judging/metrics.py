"""Agreement between the judge and SME ground truth (scikit-learn's implementations)."""

from collections.abc import Sequence

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
    from sklearn.metrics import accuracy_score, cohen_kappa_score, confusion_matrix, precision_score, recall_score

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
