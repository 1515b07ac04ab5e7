"""Metrics (clean, robust, per-class accuracy, calibration) with per-sample records,
attack reports with audit flags, and the model-on-dataset evaluation used by experiments.
"""

from __future__ import annotations

from robustlab.evaluate.metrics import (
    RobustEvaluation,
    auto_batch_size,
    clean_accuracy,
    expected_calibration_error,
    per_class_accuracy,
    predict_logits,
    robust_accuracy,
)
from robustlab.evaluate.report import AttackReport, EpsResult, attack_report
from robustlab.evaluate.suite import EvaluationSpec, evaluate_model

__all__ = [
    "AttackReport",
    "EpsResult",
    "EvaluationSpec",
    "RobustEvaluation",
    "attack_report",
    "auto_batch_size",
    "clean_accuracy",
    "evaluate_model",
    "expected_calibration_error",
    "per_class_accuracy",
    "predict_logits",
    "robust_accuracy",
]
