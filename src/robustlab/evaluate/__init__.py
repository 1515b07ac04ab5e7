"""Metrics (clean, robust, per-class accuracy, calibration) with per-sample records."""

from __future__ import annotations

from robustlab.evaluate.metrics import (
    RobustEvaluation,
    clean_accuracy,
    expected_calibration_error,
    per_class_accuracy,
    predict_logits,
    robust_accuracy,
)
from robustlab.evaluate.suite import EvaluationSpec, evaluate_model

__all__ = [
    "EvaluationSpec",
    "RobustEvaluation",
    "clean_accuracy",
    "evaluate_model",
    "expected_calibration_error",
    "per_class_accuracy",
    "predict_logits",
    "robust_accuracy",
]
