"""The ``corruption`` kind of measurement: accuracy under common corruptions.

``Measurement("fog", "severity", [1, 2, 3, 4, 5], kind="corruption")`` corrupts the
points with :func:`robustlab.corruptions.corrupt` at each severity and adds one
:class:`~robustlab.evaluate.results.ResultRow` of kind ``"corruption"`` per severity:
``attack`` is the corruption, ``norm`` is ``"severity"``, ``eps`` the severity and
``accuracy`` the accuracy on the corrupted points; ``per_class`` as for attacks and
``extra = {"family", "ece", "reliability"}`` (calibration on the corrupted points).
:func:`corruption_measurements` builds the usual suite (the 15 common corruptions x 5
severities, or the 4 extra ones, or all 19).

Randomness, written once: the points are cut into fixed chunks of :data:`CHUNK`
consecutive indices of the split; the points of chunk ``k`` are corrupted together with a
generator seeded by ``derive_seed("corruption", seed, name, severity, k)``. The corrupted
image of a point therefore depends on the seed and its chunk, not on the batch size, the
device's batch or which measurement ran before (and a sharded evaluation that cuts at
chunk boundaries reproduces it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from robustlab.corruptions import COMMON, EXTRA, SEVERITIES, check_severity, corrupt
from robustlab.corruptions import get as get_corruption
from robustlab.errors import ConfigError
from robustlab.evaluate.metrics import ece_of, per_class_accuracy, predict_logits, reliability_of
from robustlab.evaluate.results import ResultRow, point_set_id
from robustlab.progress import Progress
from robustlab.seeding import derive_seed

#: points per chunk that share one corruption generator (independent of the batch size)
CHUNK = 256
#: the protocol every corruption row records
PROTOCOL = "robustlab-corruptions/1"
#: named sets of corruptions for :func:`corruption_measurements`
SUITES: dict[str, tuple[str, ...]] = {"common": COMMON, "extra": EXTRA, "all": COMMON + EXTRA}


def corruption_names(names: str | Sequence[str]) -> list[str]:
    """Corruption names from a suite name (``"common"``, ``"extra"``, ``"all"``), one name,
    or a list of names and suite names (canonical, in order, without repeats)."""
    items = [names] if isinstance(names, str) else list(names)
    out: list[str] = []
    for it in items:
        if not isinstance(it, str):
            raise ConfigError(f"corruptions are named by strings, got {it!r}.")
        for name in SUITES.get(it.strip().lower(), (it,)):
            canon = get_corruption(name).name
            if canon not in out:
                out.append(canon)
    if not out:
        raise ConfigError("name at least one corruption (or 'common', 'extra', 'all').")
    return out


def check_severities(severities: Sequence[Any]) -> list[int]:
    """Severities as sorted distinct ints in 1..5."""
    if isinstance(severities, (str, bytes)) or not isinstance(severities, Sequence) or not len(severities):
        raise ConfigError(f"give severities as a list of integers from 1 to 5, got {severities!r}.")
    return sorted({check_severity(s) for s in severities})


def corruption_measurements(
    names: str | Sequence[str] = "common",
    severities: Sequence[int] = SEVERITIES,
    *,
    subset: int | None = None,
) -> list[Any]:
    """One :class:`~robustlab.evaluate.path.Measurement` of kind ``"corruption"`` per
    corruption (``names``: ``"common"``, ``"extra"``, ``"all"`` or a list), at ``severities``."""
    from robustlab.evaluate.path import Measurement

    sev = check_severities(severities)
    return [Measurement(n, "severity", list(sev), subset=subset, kind="corruption")
            for n in corruption_names(names)]


def corruption_predictions(
    model: nn.Module,
    x: torch.Tensor,
    name: str,
    severity: int,
    idx: torch.Tensor,
    *,
    seed: int,
    num_classes: int,
    batch_size: int,
    params: Any = None,
    progress: Progress | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each point's prediction and confidence (top softmax probability) on its corrupted
    copy at ``severity`` (``idx``: the points' indices in the split; they decide the
    chunk generators, see the module docstring)."""
    entry = get_corruption(name)
    chunk_of = idx // CHUNK
    keys = torch.unique(chunk_of).tolist()
    groups = [torch.nonzero(chunk_of == k).reshape(-1) for k in keys]
    logits = torch.empty(len(x), num_classes)
    for k, pos in zip(keys, groups, strict=True):
        gen = torch.Generator().manual_seed(derive_seed("corruption", seed, entry.name, severity, k))
        for j in range(0, len(pos), batch_size):
            part = pos[j : j + batch_size]
            xc = corrupt(x[part], entry.name, severity, generator=gen, params=params)
            logits[part] = predict_logits(model, xc, batch_size=batch_size).float().cpu()
            if progress is not None:
                progress.advance(len(part))
    probs = logits.softmax(1)
    return probs.argmax(1), probs.max(1).values


def corruption_row(
    name: str,
    severity: int,
    pred: torch.Tensor,
    conf: torch.Tensor,
    y: torch.Tensor,
    idx: torch.Tensor,
    *,
    n: int,
    num_classes: int,
    params: Any = None,
    subset: int | None = None,
    records: dict[str, np.ndarray] | None = None,
) -> ResultRow:
    """The row of kind ``"corruption"`` for one severity from each measured point's
    prediction and confidence, and its record ``corruption/<name>/<severity>``."""
    entry = get_corruption(name)
    y_cpu = y.detach().cpu().long()
    correct = pred == y_cpu
    diagram = reliability_of(conf, correct)
    if records is not None:
        rec = np.full(n, -2, dtype=np.int8)
        rec[idx.numpy()] = correct.numpy().astype(np.int8)
        records[f"corruption/{entry.name}/{severity}"] = rec
    return ResultRow(
        attack=entry.name, norm="severity", eps=float(severity), accuracy=int(correct.sum()) / len(correct),
        num_points=len(idx), num_total=n, point_set=point_set_id(idx, n), protocol=PROTOCOL,
        params={"family": entry.family, **({"params": params} if params is not None else {})},
        stages=[entry.name], per_attack={}, per_class=per_class_accuracy(pred, y_cpu, num_classes),
        forwards=len(idx), backwards=0, subset=subset, kind="corruption",
        extra={"family": entry.family, "ece": ece_of(diagram), "reliability": diagram},
    )


def corruption_rows(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    name: str,
    severities: Sequence[int],
    idx: torch.Tensor,
    *,
    n: int,
    seed: int,
    num_classes: int,
    batch_size: int,
    params: Any = None,
    subset: int | None = None,
    records: dict[str, np.ndarray] | None = None,
    progress: Progress | None = None,
) -> list[ResultRow]:
    """Rows of kind ``"corruption"`` for ``name`` at ``severities`` on the points ``x[i]``
    (``idx``: their indices in the split of ``n`` points), and per-point records
    ``corruption/<name>/<severity>`` (1 correct, 0 wrong, -2 not measured)."""
    rows = []
    for sev in severities:
        pred, conf = corruption_predictions(model, x, name, sev, idx, seed=seed, num_classes=num_classes,
                                            batch_size=batch_size, params=params, progress=progress)
        rows.append(corruption_row(name, sev, pred, conf, y, idx, n=n, num_classes=num_classes, params=params,
                                   subset=subset, records=records))
    return rows


__all__ = [
    "CHUNK",
    "PROTOCOL",
    "SUITES",
    "check_severities",
    "corruption_measurements",
    "corruption_names",
    "corruption_predictions",
    "corruption_row",
    "corruption_rows",
]
