"""THE evaluation path and its metrics.

:func:`evaluate` measures a model on points under a list of measurements and returns
one row type (:class:`ResultRow`); :func:`attack_report`, :func:`robust_accuracy`,
:func:`evaluate_model`, the experiments' stored evaluations and the Trainer's robust
validation are thin callers of it. See :mod:`robustlab.evaluate.path` for the protocol.
"""

from __future__ import annotations

from robustlab.evaluate.metrics import (
    auto_batch_size,
    clean_accuracy,
    disparity,
    ece_of,
    expected_calibration_error,
    per_class_accuracy,
    predict_logits,
    reliability,
    stage_accuracies,
)
from robustlab.evaluate.path import (
    EvaluationSpec,
    Measurement,
    as_threats,
    attack_report,
    evaluate,
    robust_accuracy,
    run_attack,
    subset_indices,
)
from robustlab.evaluate.results import (
    AttackReport,
    EpsResult,
    Evaluation,
    ResultRow,
    RobustEvaluation,
    point_set_id,
)
from robustlab.evaluate.suite import evaluate_model

__all__ = [
    "AttackReport",
    "EpsResult",
    "Evaluation",
    "EvaluationSpec",
    "Measurement",
    "ResultRow",
    "RobustEvaluation",
    "as_threats",
    "attack_report",
    "auto_batch_size",
    "clean_accuracy",
    "disparity",
    "ece_of",
    "evaluate",
    "evaluate_model",
    "expected_calibration_error",
    "per_class_accuracy",
    "point_set_id",
    "predict_logits",
    "reliability",
    "robust_accuracy",
    "run_attack",
    "stage_accuracies",
    "subset_indices",
]
