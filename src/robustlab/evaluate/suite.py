"""Evaluate one model on one dataset: clean metrics plus a list of attack specs.

``evaluate_model`` returns ``(metrics, records)``. ``metrics["robust"]`` holds one row
per (spec, eps), with the keys:

- ``attack``, ``norm``, ``eps``, ``accuracy`` (robust accuracy), ``num_points``,
  ``params`` (the attack's parameters), ``forwards``/``backwards`` (samples passed
  through the model for this eps);
- ``protocol``: the versioned protocol of an ensemble (e.g. ``robustlab-standard/1``),
  else the attack's name;
- ``per_attack``: ``{attack name: robust accuracy after that stage}`` in order, starting
  with ``"clean"`` (for a single attack: ``{"clean": ..., name: accuracy}``);
- ``per_class``: robust accuracy per true class (``None`` for absent classes);
- ``flags``: audit findings as ``"code: sentence"`` strings (see
  :mod:`robustlab.attacks.audit`), the same for every eps of a spec, plus
  ``non-monotone-eps`` across specs of the same attack, norm and subset;
- ``flag_codes``: the codes alone.

Wall-clock timings are kept out of these rows (reruns must compare equal); they are in
``metrics["attack_seconds"]`` (one entry per spec: ``attack``, ``norm``, ``seconds``,
``audit_seconds``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from robustlab.attacks import ThreatModel
from robustlab.attacks.audit import check_monotone
from robustlab.data.base import Dataset
from robustlab.evaluate.metrics import (
    expected_calibration_error,
    per_class_accuracy,
    predict_logits,
)
from robustlab.evaluate.report import attack_report
from robustlab.seeding import derive_seed


@dataclass
class EvaluationSpec:
    """One attack at one or several eps: ``EvaluationSpec("pgd", "linf", [0.05, 0.1], {"steps": 20})``.

    ``subset``: evaluate the attack on the first ``subset`` test points of a fixed
    seeded permutation (None: all points). ``audit``: ``True`` (all checks), ``"cheap"``
    (no extra attacks) or ``False``.
    """

    attack: str
    norm: str
    eps: Sequence[float]
    params: dict[str, Any] = field(default_factory=dict)
    subset: int | None = None
    audit: bool | str = True


def evaluate_model(
    model: nn.Module,
    data: Dataset,
    specs: Sequence[EvaluationSpec] = (),
    *,
    seed: int = 0,
    batch_size: int | str = 512,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Clean accuracy, ECE, per-class accuracy and each spec's robust accuracy.

    Every spec runs all its eps in one call (increasing eps, successes reused), with a
    generator seeded from ``seed``, the attack and the norm. Returns ``(metrics, records)``:
    JSON-able metrics (row keys in the module docstring), and per-sample records
    (``index``, ``label``, ``pred``, ``confidence``, and one ``robust/<attack>/<norm>/<eps>``
    int8 array per evaluation: 1 robust, 0 not, -1 outside the attack's subset).
    """
    t0 = time.perf_counter()
    logits = predict_logits(model, data.x, batch_size=batch_size if isinstance(batch_size, int) else 1024)
    probs = logits.softmax(1)
    conf, pred = probs.max(1)
    y = data.y.to(pred.device)
    metrics: dict[str, Any] = {
        "clean_accuracy": float((pred == y).float().mean()),
        "ece": expected_calibration_error(probs, y),
        "per_class_accuracy": per_class_accuracy(pred, y, data.num_classes),
        "num_test": len(data),
        "robust": [],
        "attack_seconds": [],
    }
    records: dict[str, np.ndarray] = {
        "index": np.arange(len(data)),
        "label": data.y.numpy(),
        "pred": pred.cpu().numpy(),
        "confidence": conf.cpu().numpy(),
    }
    groups: dict[tuple[str, str, int | None], list[dict[str, Any]]] = {}
    for spec in specs:
        n = len(data)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed("subset", seed)))
        idx = order if spec.subset is None else order[: min(spec.subset, n)]
        idx = idx.sort().values
        threats = [ThreatModel(spec.norm, e) for e in spec.eps]
        attack_seed = derive_seed("attack", seed, spec.attack, threats[0].norm)
        rep = attack_report(
            model, data.x[idx], data.y[idx], threats, spec.attack,
            batch_size=batch_size, seed=attack_seed, audit=spec.audit, **spec.params,
        )
        flags = rep.flag_strings()
        codes = [f.code for f in rep.flags]
        metrics["attack_seconds"].append(
            {"attack": spec.attack, "norm": threats[0].norm, "seconds": rep.seconds, "audit_seconds": rep.audit_seconds}
        )
        for t, res in zip(threats, rep.results, strict=True):
            row = {
                "attack": spec.attack,
                "norm": t.norm,
                "eps": t.eps,
                "accuracy": res.robust_accuracy,
                "forwards": res.forwards,
                "backwards": res.backwards,
                "params": rep.params,
                "num_points": len(idx),
                "protocol": rep.protocol,
                "per_attack": res.per_attack,
                "per_class": res.per_class,
                "flags": list(flags),
                "flag_codes": list(codes),
            }
            metrics["robust"].append(row)
            groups.setdefault((spec.attack, t.norm, spec.subset), []).append(row)
            rec = np.full(n, -1, dtype=np.int8)
            rec[idx.numpy()] = rep.robust[t.eps].numpy().astype(np.int8)
            records[f"robust/{spec.attack}/{t.norm}/{t.eps:g}"] = rec
    for rows in groups.values():
        for flag in check_monotone([r["eps"] for r in rows], [r["accuracy"] for r in rows]):
            for r in rows:
                if flag.code not in r["flag_codes"]:
                    r["flags"].append(str(flag))
                    r["flag_codes"].append(flag.code)
    metrics["eval_seconds"] = time.perf_counter() - t0
    return metrics, records
