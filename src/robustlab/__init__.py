"""robustlab: train and evaluate the robustness of PyTorch classifiers.

The package is organised one folder per idea (see DESIGN): ``data``, ``models``,
``losses``, ``attacks``, ``train``, ``evaluate``, ``labels``, ``experiments``, ``report``.
Sub-packages are imported lazily so that ``import robustlab`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from robustlab.errors import RobustlabError

__version__ = "0.1.0"

_SUBMODULES = {
    "data",
    "models",
    "losses",
    "attacks",
    "train",
    "evaluate",
    "experiments",
    "labels",
    "report",
}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"robustlab.{name}")
    raise AttributeError(f"module 'robustlab' has no attribute {name!r}")


__all__ = ["RobustlabError", "__version__", *sorted(_SUBMODULES)]
