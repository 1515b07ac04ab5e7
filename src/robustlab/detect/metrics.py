"""Threshold-free detection metrics, exact with ties.

Conventions: the in-distribution points are the *positives* of the detector ("accept"),
scores are HIGHER for more in-distribution-looking inputs, and a point is accepted when
its score is ``>= threshold``.

- ``auroc``: the probability that a random in-point scores above a random out-point,
  ties counted one half (the Mann-Whitney U statistic divided by ``n_in * n_out``). This
  equals the area under the ROC curve drawn through the distinct thresholds, which is
  what scikit-learn's ``roc_auc_score`` computes.
- ``aupr_in`` / ``aupr_out``: average precision with in-points (resp. out-points, with
  scores negated) as positives, ``AP = sum_k (R_k - R_{k-1}) P_k`` over the distinct
  thresholds (tied scores enter together), as scikit-learn's
  ``average_precision_score`` and Hendrycks & Gimpel's AUPR-In / AUPR-Out.
- ``tnr_at_95_tpr``: the fraction of out-points rejected at the threshold that accepts
  95% of in-points (Lee et al. 2018, Sec. 3, "TNR at TPR 95%"). We take the *largest*
  threshold that accepts at least 95% of the in-points (:func:`threshold_at_tpr`) and
  count out-points tied with it as accepted. The official Mahalanobis code instead picks
  the point of its step curve whose TPR is *closest* to 0.95 (possibly just below); the
  two differ by at most one in-point's step.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.stats import rankdata

from robustlab.errors import InvalidInputError

ArrayLike = np.ndarray | torch.Tensor


def _as_array(s: ArrayLike, name: str) -> np.ndarray:
    if isinstance(s, torch.Tensor):
        s = s.detach().cpu().double().numpy()
    a = np.asarray(s, dtype=np.float64).reshape(-1)
    if not np.isfinite(a).all():
        bad = int((~np.isfinite(a)).sum())
        raise InvalidInputError(
            f"{name} has {bad} NaN/inf scores of {len(a)}; a detector must give finite scores "
            f"(check the model's outputs on these inputs)."
        )
    return a


def auroc(score_in: ArrayLike, score_out: ArrayLike) -> float:
    """P(score_in > score_out) + 1/2 P(score_in == score_out) (Mann-Whitney, exact with ties)."""
    a, b = _as_array(score_in, "score_in"), _as_array(score_out, "score_out")
    if not len(a) or not len(b):
        return float("nan")
    ranks = rankdata(np.concatenate([a, b]), method="average")  # ties share their mean rank
    u = ranks[: len(a)].sum() - len(a) * (len(a) + 1) / 2.0
    return float(u / (len(a) * len(b)))


def average_precision(score_pos: ArrayLike, score_neg: ArrayLike) -> float:
    """Average precision of ranking positives above negatives, tied scores entering
    together: ``sum_k (R_k - R_{k-1}) P_k`` over the distinct thresholds, descending."""
    p, n = _as_array(score_pos, "score_pos"), _as_array(score_neg, "score_neg")
    if not len(p):
        return float("nan")
    scores = np.concatenate([p, n])
    labels = np.r_[np.ones(len(p)), np.zeros(len(n))]
    order = np.argsort(-scores, kind="mergesort")
    s, lab = scores[order], labels[order]
    last = np.r_[s[1:] != s[:-1], True]  # last index of each group of equal scores
    tp = np.cumsum(lab)[last]
    fp = np.cumsum(1 - lab)[last]
    precision = tp / (tp + fp)
    recall = tp / len(p)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def threshold_at_tpr(score_in: ArrayLike, tpr: float = 0.95) -> float:
    """The largest threshold ``t`` with ``mean(score_in >= t) >= tpr``: the
    ``ceil(tpr * n)``-th largest in-score (NaN without in-points)."""
    a = _as_array(score_in, "score_in")
    if not len(a):
        return float("nan")
    k = max(1, math.ceil(tpr * len(a) - 1e-9))
    return float(np.sort(a)[::-1][k - 1])


def tnr_at_tpr(score_in: ArrayLike, score_out: ArrayLike, tpr: float = 0.95) -> float:
    """Fraction of out-points scored strictly below :func:`threshold_at_tpr` (rejected)."""
    b = _as_array(score_out, "score_out")
    if not len(b):
        return float("nan")
    t = threshold_at_tpr(score_in, tpr)
    if math.isnan(t):
        return float("nan")
    return float(np.mean(b < t))


def detection_metrics(score_in: ArrayLike, score_out: ArrayLike) -> dict[str, float]:
    """AUROC, AUPR-In, AUPR-Out and TNR at 95% TPR of a detector whose scores are higher
    for in-distribution points (see the module docstring for the exact definitions).

    >>> detection_metrics(np.array([3.0, 2.0]), np.array([1.0, 0.0]))["auroc"]
    1.0
    """
    a, b = _as_array(score_in, "score_in"), _as_array(score_out, "score_out")
    if not len(a) or not len(b):  # nothing to separate: every metric is undefined
        return dict.fromkeys(("auroc", "aupr_in", "aupr_out", "tnr_at_95_tpr"), float("nan"))
    return {
        "auroc": auroc(a, b),
        "aupr_in": average_precision(a, b),
        "aupr_out": average_precision(-b, -a),
        "tnr_at_95_tpr": tnr_at_tpr(a, b, 0.95),
    }


__all__ = [
    "auroc",
    "average_precision",
    "detection_metrics",
    "threshold_at_tpr",
    "tnr_at_tpr",
]
