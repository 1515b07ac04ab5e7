from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from robustlab.detect import detection_metrics, threshold_at_tpr, tnr_at_tpr
from robustlab.errors import InvalidInputError


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_scikit_learn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    s_in = rng.integers(0, 6, size=137).astype(float)  # few distinct values: many ties
    s_out = rng.integers(-2, 4, size=91).astype(float)
    m = detection_metrics(s_in, s_out)
    scores = np.r_[s_in, s_out]
    is_in = np.r_[np.ones(len(s_in)), np.zeros(len(s_out))]
    assert m["auroc"] == pytest.approx(roc_auc_score(is_in, scores), abs=1e-12)
    assert m["aupr_in"] == pytest.approx(average_precision_score(is_in, scores), abs=1e-12)
    assert m["aupr_out"] == pytest.approx(average_precision_score(1 - is_in, -scores), abs=1e-12)


def test_auroc_counts_ties_half() -> None:
    # pairs: (1 vs 1) tie, (1 vs 0) win, (2 vs 1) win, (2 vs 0) win -> (0.5 + 3) / 4
    assert detection_metrics(np.array([1.0, 2.0]), np.array([1.0, 0.0]))["auroc"] == 0.875
    assert detection_metrics(np.array([3.0, 3.0]), np.array([3.0]))["auroc"] == 0.5


def test_tnr_at_95_tpr_by_hand() -> None:
    s_in = np.arange(100, dtype=float)  # threshold keeping 95 of 100 in-points: 5.0
    assert threshold_at_tpr(s_in, 0.95) == 5.0
    s_out = np.array([-1.0, 4.9, 5.0, 50.0])  # 5.0 and 50 accepted, two rejected
    assert tnr_at_tpr(s_in, s_out) == 0.5
    assert detection_metrics(s_in, s_out)["tnr_at_95_tpr"] == 0.5


def test_separable_scores_are_perfect_and_empty_sets_are_nan() -> None:
    m = detection_metrics(np.array([5.0, 6.0, 7.0]), np.array([1.0, 2.0]))
    assert m == {"auroc": 1.0, "aupr_in": 1.0, "aupr_out": 1.0, "tnr_at_95_tpr": 1.0}
    assert all(np.isnan(v) for v in detection_metrics(np.array([1.0]), np.array([])).values())


def test_non_finite_scores_are_refused() -> None:
    with pytest.raises(InvalidInputError, match="NaN/inf"):
        detection_metrics(np.array([1.0, np.nan]), np.array([0.0]))
