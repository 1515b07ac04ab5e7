"""Named hyper-parameter presets from the official configurations.

>>> from robustlab import losses
>>> losses.preset("sce", "cifar10")
{'alpha': 0.1, 'beta': 1.0}
>>> loss = losses.create("sce", reduction="none", **losses.preset("sce", "cifar100"))

Each :class:`Preset` cites the file it was read from. Keys use this package's parameter
names (``alpha``/``beta``/``q``/``gamma``/``scale``/``lam``...), so a preset for a
registered loss can be passed straight to :func:`robustlab.losses.create`. ``elr`` is not
a loss of this package (it is a regulariser with per-sample state); its presets are kept
here so that every noisy-label method's published settings live in one place, with the
config's ``lambda`` renamed ``lam``.

Sources (commits as stored by the reference index):

* APL: HanxunH/Active-Passive-Losses ``configs/<dataset>/sym/<loss>.yaml`` (commit
  2d18de6). The ``asym/`` configs checked (``sce``, ``nce+rce`` for MNIST, CIFAR-10,
  CIFAR-100) carry the same values. Those configs are also the SCE paper's settings
  (Wang et al. 2019: MNIST 0.01/1, CIFAR-10 0.1/1, CIFAR-100 6/0.1).
* ELR: shengliu66/ELR ``ELR/config_cifar10.json``, ``ELR/config_cifar10_asym.json``,
  ``ELR/config_cifar100.json``.
* Truncated Lq: AlanChou/Truncated-Loss ``README.md`` (run commands) and ``main.py``.
* LDR-KL / ALDR-KL: Optimization-AI/ICML2023_LDR ``experiment.py`` and ``README.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from robustlab.errors import UnknownNameError
from robustlab.registry import close_matches

_APL = "HanxunH/Active-Passive-Losses configs/{ds}/sym/{loss}.yaml"
_APL_WV = "HanxunH/Active-Passive-Losses configs/webvision_mini/{loss}.yaml"


@dataclass(frozen=True)
class Preset:
    """One published setting: ``params`` for ``loss`` on ``dataset``, read from ``source``."""

    loss: str
    dataset: str
    params: Mapping[str, Any]
    source: str
    note: str = field(default="")


def _key(name: str) -> str:
    return str(name).strip().lower().replace("_", "-")


_APL_CLIP = ("the official configs also clip the gradient norm to 5.0 (grad_bound); set "
             "train.grad_clip: 5.0 — without it the bounded losses can collapse to one class")


def _apl(loss: str, ds: str, params: dict[str, Any], note: str = "") -> Preset:
    src = _APL_WV.format(loss=loss) if ds == "webvision-mini" else _APL.format(ds=ds, loss=loss)
    return Preset(loss, ds, params, src, f"{note}; {_APL_CLIP}" if note else _APL_CLIP)


_NGCE_RCE_NOTE = (
    "the config file names criterion NGCEandMAE although it is the ngce+rce config; the "
    "values are taken as listed"
)

_TABLE: list[Preset] = [
    # -- SCE (alpha, beta) -------------------------------------------------------------
    _apl("sce", "mnist", {"alpha": 0.01, "beta": 1.0}),
    _apl("sce", "cifar10", {"alpha": 0.1, "beta": 1.0}),
    _apl("sce", "cifar100", {"alpha": 6.0, "beta": 0.1}),
    _apl("sce", "webvision-mini", {"alpha": 10.0, "beta": 1.0}),
    # -- GCE ---------------------------------------------------------------------------
    _apl("gce", "mnist", {"q": 0.7}),
    _apl("gce", "cifar10", {"q": 0.7}),
    _apl("gce", "cifar100", {"q": 0.7}),
    _apl("gce", "webvision-mini", {"q": 0.7}),
    # -- focal / normalised losses ----------------------------------------------------------
    _apl(
        "focal",
        "mnist",
        {"gamma": 0.5},
        "APL's FocalLoss detaches the modulating factor: add detach=True to reproduce it",
    ),
    _apl(
        "focal",
        "cifar10",
        {"gamma": 0.5},
        "APL's FocalLoss detaches the modulating factor: add detach=True to reproduce it",
    ),
    _apl(
        "focal",
        "cifar100",
        {"gamma": 0.5},
        "APL's FocalLoss detaches the modulating factor: add detach=True to reproduce it",
    ),
    _apl("nfl", "mnist", {"gamma": 0.5, "scale": 1.0}),
    _apl("nfl", "cifar10", {"gamma": 0.5, "scale": 10.0}),
    _apl("nfl", "cifar100", {"gamma": 0.5, "scale": 1.0}),
    _apl("ngce", "mnist", {"q": 0.1, "scale": 10.0}),
    _apl("ngce", "cifar10", {"q": 0.1, "scale": 1.0}),
    _apl("ngce", "cifar100", {"q": 0.7, "scale": 1.0}),
    # -- active-passive pairs (alpha = active scale, beta = passive scale) -------------------
    _apl("nce+rce", "mnist", {"alpha": 1.0, "beta": 10.0}),
    _apl("nce+rce", "cifar10", {"alpha": 1.0, "beta": 1.0}),
    _apl("nce+rce", "cifar100", {"alpha": 10.0, "beta": 0.1}),
    _apl("nce+rce", "webvision-mini", {"alpha": 50.0, "beta": 0.1}),
    _apl("nce+mae", "mnist", {"alpha": 1.0, "beta": 10.0}),
    _apl("nce+mae", "cifar10", {"alpha": 1.0, "beta": 1.0}),
    _apl("nce+mae", "cifar100", {"alpha": 10.0, "beta": 1.0}),
    _apl("nce+mae", "webvision-mini", {"alpha": 50.0, "beta": 1.0}),
    _apl("nfl+rce", "mnist", {"alpha": 1.0, "beta": 10.0, "gamma": 0.5}),
    _apl("nfl+rce", "cifar10", {"alpha": 1.0, "beta": 1.0, "gamma": 0.5}),
    _apl("nfl+rce", "cifar100", {"alpha": 10.0, "beta": 0.1, "gamma": 0.5}),
    _apl("nfl+rce", "webvision-mini", {"alpha": 50.0, "beta": 0.1, "gamma": 0.5}),
    _apl("nfl+mae", "mnist", {"alpha": 1.0, "beta": 10.0, "gamma": 0.5}),
    _apl("nfl+mae", "cifar10", {"alpha": 1.0, "beta": 1.0, "gamma": 0.5}),
    _apl("nfl+mae", "cifar100", {"alpha": 10.0, "beta": 1.0, "gamma": 0.5}),
    _apl("nfl+mae", "webvision-mini", {"alpha": 50.0, "beta": 1.0, "gamma": 0.5}),
    _apl("ngce+rce", "mnist", {"alpha": 1.0, "beta": 10.0, "q": 0.1}),
    _apl("ngce+rce", "cifar10", {"alpha": 1.0, "beta": 1.0, "q": 0.1}),
    _apl("ngce+rce", "cifar100", {"alpha": 10.0, "beta": 0.1, "q": 0.7}, _NGCE_RCE_NOTE),
    _apl("ngce+mae", "mnist", {"alpha": 1.0, "beta": 10.0, "q": 0.1}),
    _apl("ngce+mae", "cifar10", {"alpha": 1.0, "beta": 1.0, "q": 0.1}),
    _apl("ngce+mae", "cifar100", {"alpha": 10.0, "beta": 1.0, "q": 0.7}),
    # -- ELR (Liu et al. 2020), not a loss of this package --------------------------------
    Preset(
        "elr",
        "cifar10",
        {"beta": 0.7, "lam": 3.0},
        "shengliu66/ELR ELR/config_cifar10.json",
        "symmetric noise; config key 'lambda'",
    ),
    Preset(
        "elr",
        "cifar10-asym",
        {"beta": 0.9, "lam": 1.0},
        "shengliu66/ELR ELR/config_cifar10_asym.json",
        "asymmetric noise; config key 'lambda'",
    ),
    Preset(
        "elr",
        "cifar100",
        {"beta": 0.9, "lam": 7.0},
        "shengliu66/ELR ELR/config_cifar100.json",
        "config key 'lambda'",
    ),
    # -- truncated Lq ------------------------------------------------------------------
    Preset(
        "truncated-lq",
        "cifar10",
        {"q": 0.7, "k": 0.5, "prune_start": 40, "prune_every": 10},
        "AlanChou/Truncated-Loss README.md (--start_prune 40), TruncatedLoss.py, main.py",
    ),
    Preset(
        "truncated-lq",
        "cifar100",
        {"q": 0.7, "k": 0.5, "prune_start": 80, "prune_every": 10},
        "AlanChou/Truncated-Loss README.md (--start_prune 80), TruncatedLoss.py, main.py",
    ),
    # -- LDR-KL / ALDR-KL ----------------------------------------------------------------
    Preset(
        "ldr-kl",
        "letter",
        {"lam": 10.0, "margin": 0.1},
        "Optimization-AI/ICML2023_LDR experiment.py (parameter_set [10], --margin 0.1), README.md",
    ),
    Preset(
        "ldr-kl",
        "cifar100",
        {"lam": 10.0, "margin": 0.1},
        "Optimization-AI/ICML2023_LDR experiment.py (parameter_set [10], --margin 0.1)",
    ),
    Preset(
        "aldr-kl",
        "letter",
        {"lam0": 10.0, "alpha": 2.0, "margin": 0.1, "softplus": False},
        "Optimization-AI/ICML2023_LDR experiment.py, README.md (--alpha=2)",
    ),
    Preset(
        "aldr-kl",
        "cifar100",
        {"lam0": 10.0, "alpha": 2.0, "margin": 0.1, "softplus": True},
        "Optimization-AI/ICML2023_LDR experiment.py (softplus=True for cifar100)",
    ),
]

_PRESETS: dict[tuple[str, str], Preset] = {(_key(p.loss), _key(p.dataset)): p for p in _TABLE}


def presets(loss: str | None = None) -> list[Preset]:
    """All presets (or those of ``loss``), sorted by loss then dataset."""
    found = [p for p in _TABLE if loss is None or _key(p.loss) == _key(loss)]
    if loss is not None and not found:
        _unknown_loss(loss)
    return sorted(found, key=lambda p: (p.loss, p.dataset))


def _unknown_loss(loss: str) -> None:
    names = sorted({p.loss for p in _TABLE})
    near = close_matches(loss, names)
    hint = f" Did you mean {', '.join(repr(m) for m in near)}?" if near else ""
    raise UnknownNameError(
        f"No presets for loss {loss!r}.{hint} Presets exist for: {', '.join(names)}."
    )


def preset(loss: str, dataset: str) -> dict[str, Any]:
    """The published parameters of ``loss`` on ``dataset`` (a fresh dict).

    Unknown names raise :class:`~robustlab.errors.UnknownNameError` listing close matches.
    """
    hit = _PRESETS.get((_key(loss), _key(dataset)))
    if hit is not None:
        return dict(hit.params)
    if not any(_key(p.loss) == _key(loss) for p in _TABLE):
        _unknown_loss(loss)
    datasets = sorted(p.dataset for p in _TABLE if _key(p.loss) == _key(loss))
    near = close_matches(dataset, datasets)
    hint = f" Did you mean {', '.join(repr(m) for m in near)}?" if near else ""
    raise UnknownNameError(
        f"No preset of {loss!r} for dataset {dataset!r}.{hint} Datasets with a preset for "
        f"{loss!r}: {', '.join(datasets)}."
    )


__all__ = ["Preset", "preset", "presets"]
