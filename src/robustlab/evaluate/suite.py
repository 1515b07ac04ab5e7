"""Evaluate one model on one dataset: :func:`evaluate_model`, the evaluation step of
experiments and of stored evaluations, a thin caller of :func:`robustlab.evaluate.evaluate`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import nn

from robustlab.data.base import Dataset
from robustlab.evaluate.path import Measurement, evaluate


def evaluate_model(
    model: nn.Module,
    data: Dataset,
    specs: Sequence[Measurement] = (),
    *,
    seed: int = 0,
    batch_size: int | str = 512,
    threads: int | str | None = None,
    progress: bool | None = None,
    reference: Dataset | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Clean accuracy, ECE, per-class accuracy and each measurement's rows on ``data``.

    Returns ``(metrics, records)``: the JSON-able metrics a run stores (``metrics["robust"]``
    holds the :class:`~robustlab.evaluate.results.ResultRow` dicts) and the per-sample
    records (``index``, ``label``, ``pred``, ``confidence`` and one
    ``robust/<attack>/<norm>/<eps>`` int8 array per row: 1 robust, 0 not, -1 not measured).
    ``reference``: the training split, which detectors are fitted on.
    """
    ev = evaluate(model, data.x, data.y, specs, seed=seed, batch_size=batch_size, threads=threads,
                  num_classes=data.num_classes, progress=progress,
                  reference=(reference.x, reference.y) if reference is not None else None)
    return ev.metrics(), ev.records


__all__ = ["evaluate_model"]
