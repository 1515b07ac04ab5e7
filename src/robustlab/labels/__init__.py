"""Label-issue detection: which training labels are probably wrong.

>>> from robustlab import labels
>>> probs = labels.cross_val_probs(noisy_train, model="mlp", folds=5, seed=0)
>>> issues = labels.find_issues(noisy_train, probs)     # cleanlab: pip install "robustlab[noise]"
>>> issues.indices[:10], issues.precision, issues.recall
"""

from __future__ import annotations

from robustlab.labels.issues import (
    CROSS_FIT_DEFAULTS,
    LabelIssues,
    check_pred_probs,
    cross_val_probs,
    find_issues,
    issue_methods,
    stratified_folds,
)

__all__ = [
    "CROSS_FIT_DEFAULTS",
    "LabelIssues",
    "check_pred_probs",
    "cross_val_probs",
    "find_issues",
    "issue_methods",
    "stratified_folds",
]
