"""Evaluate one model on one dataset: clean metrics plus a list of attack specs."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from robustlab.attacks import ThreatModel
from robustlab.data.base import Dataset
from robustlab.evaluate.metrics import (
    expected_calibration_error,
    per_class_accuracy,
    predict_logits,
    robust_accuracy,
)
from robustlab.train.trainer import derive_seed


@dataclass
class EvaluationSpec:
    """One attack at one or several eps: ``EvaluationSpec("pgd", "linf", [0.05, 0.1], {"steps": 20})``.

    ``subset``: evaluate the attack on the first ``subset`` test points of a fixed
    seeded permutation (None: all points).
    """

    attack: str
    norm: str
    eps: Sequence[float]
    params: dict[str, Any] = field(default_factory=dict)
    subset: int | None = None


def evaluate_model(
    model: nn.Module,
    data: Dataset,
    specs: Sequence[EvaluationSpec] = (),
    *,
    seed: int = 0,
    batch_size: int = 512,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Clean accuracy, ECE, per-class accuracy and each spec's robust accuracy.

    Returns ``(metrics, records)``: JSON-able metrics, and per-sample records
    (``index``, ``label``, ``pred``, ``confidence``, and one ``robust/<attack>/<norm>/<eps>``
    bool array per evaluation, with -1 for points outside the attack's subset).
    """
    t0 = time.perf_counter()
    logits = predict_logits(model, data.x, batch_size=batch_size)
    probs = logits.softmax(1)
    conf, pred = probs.max(1)
    y = data.y.to(pred.device)
    metrics: dict[str, Any] = {
        "clean_accuracy": float((pred == y).float().mean()),
        "ece": expected_calibration_error(probs, y),
        "per_class_accuracy": per_class_accuracy(pred, y, data.num_classes),
        "num_test": len(data),
        "robust": [],
    }
    records: dict[str, np.ndarray] = {
        "index": np.arange(len(data)),
        "label": data.y.numpy(),
        "pred": pred.cpu().numpy(),
        "confidence": conf.cpu().numpy(),
    }
    for spec in specs:
        n = len(data)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed("subset", seed)))
        idx = order if spec.subset is None else order[: min(spec.subset, n)]
        idx = idx.sort().values
        for eps in spec.eps:
            threat = ThreatModel(spec.norm, eps)
            gen = torch.Generator().manual_seed(derive_seed("attack", seed, spec.attack, spec.norm, threat.eps))
            res = robust_accuracy(
                model, data.x[idx], data.y[idx], threat, spec.attack,
                generator=gen, batch_size=batch_size, **spec.params,
            )
            row = res.to_dict()
            row["num_points"] = len(idx)
            metrics["robust"].append(row)
            rec = np.full(n, -1, dtype=np.int8)
            rec[idx.numpy()] = res.robust.numpy().astype(np.int8)
            records[f"robust/{spec.attack}/{spec.norm}/{threat.eps:g}"] = rec
    metrics["eval_seconds"] = time.perf_counter() - t0
    return metrics, records
