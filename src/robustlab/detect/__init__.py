"""Out-of-distribution and adversarial-input detectors.

>>> from robustlab import detect
>>> det = detect.create("mahalanobis")                       # or "msp", "energy"
>>> det.fit(model, x_train, y_train)                          # doctest: +SKIP
>>> s = det.score(model, x_test)                              # higher = more in-distribution
>>> d = det.run(model, x_test, y_test, "adversarial/linf", [0.1, 0.3],
...             reference=(x_train, y_train), seed=0)         # doctest: +SKIP
>>> d.metrics[0.1]["auroc"], d.metrics[0.1]["undetected_success"]   # doctest: +SKIP

Detectors (registry :data:`detectors`): ``msp`` (Hendrycks & Gimpel 2017), ``energy``
(Liu et al. 2020), ``mahalanobis`` (Lee et al. 2018). Shifts (what the out-distribution
is): ``uniform``, ``gaussian``, ``corruption/<name>``, ``adversarial/<norm>``,
``adaptive/<norm>`` (:func:`shifted_inputs`). Metrics: :func:`detection_metrics`.
"""

from robustlab.detect import mahalanobis, scores  # noqa: F401  (registers them)
from robustlab.detect.adaptive import AdaptivePGD
from robustlab.detect.base import (
    OPERATING_TPR,
    Detection,
    Detector,
    DetectorNotFittedError,
    TooFewSamplesError,
    available,
    create,
    detectors,
)
from robustlab.detect.mahalanobis import Mahalanobis, default_layers
from robustlab.detect.metrics import (
    auroc,
    average_precision,
    detection_metrics,
    threshold_at_tpr,
    tnr_at_tpr,
)
from robustlab.detect.scores import MSP, Energy
from robustlab.detect.shifts import SHIFTS, ShiftedInputs, parse_shift, shifted_inputs

__all__ = [
    "MSP",
    "OPERATING_TPR",
    "SHIFTS",
    "AdaptivePGD",
    "Detection",
    "Detector",
    "DetectorNotFittedError",
    "Energy",
    "Mahalanobis",
    "ShiftedInputs",
    "TooFewSamplesError",
    "auroc",
    "available",
    "average_precision",
    "create",
    "default_layers",
    "detection_metrics",
    "detectors",
    "parse_shift",
    "shifted_inputs",
    "threshold_at_tpr",
    "tnr_at_tpr",
]
