"""CIFAR-10N / CIFAR-100N: real human label noise for the CIFAR training sets.

Wei, Zhu, Cheng, Liu, Niu & Liu, ICLR 2022, "Learning with Noisy Labels Revisited: A
Study Using Real-World Human Annotations"; official release UCSC-REAL/cifar-10-100n.
The label files are **not** shipped with robustlab (they are CC BY-NC 4.0); download
them from the official repository and pass their path:

>>> from robustlab.data.cifarn import load_cifarn_labels, read_cifarn
>>> y = load_cifarn_labels("CIFAR-10_human.pt", "aggre_label")      # (50000,) int64
>>> read_cifarn("CIFAR-10_human.pt").noise_rate("worse_label")      # ~0.40
>>> train = data.load("cifar10").with_labels(y)                       # keeps clean_y

File format
-----------
``CIFAR-10_human.pt`` / ``CIFAR-100_human.pt`` were written with ``torch.save`` and hold
a dict of label arrays in the order of the official CIFAR python training batches
(``data_batch_1 .. 5`` / ``train``):

* CIFAR-10N: ``clean_label``, ``aggre_label`` (majority vote, about 9.0% noise),
  ``random_label1``/``2``/``3`` (one annotator each, about 17%), ``worse_label`` (a
  wrong annotation when there is one, about 40%);
* CIFAR-100N: ``clean_label``, ``noisy_label`` (fine labels, about 40% noise),
  ``clean_coarse_label``, ``noisy_coarse_label`` (the 20 super-classes).

The short names of the official training script are accepted too: ``clean``,
``aggre``, ``worst``, ``rand1``..``rand3``, ``clean100``, ``noisy100``.

Safety: the files are read with ``torch.load(weights_only=True)``, allowing only the
globals a numpy array needs (``_reconstruct`` under its numpy 1 and 2 names,
``ndarray``, ``dtype`` and the numeric dtype classes); anything else, e.g. a pickle that
calls ``os.system``, raises :class:`~robustlab.errors.DataError` without running code.
On torch builds without ``torch.serialization.safe_globals`` the ``data.pkl`` of the zip
archive is read with :class:`~robustlab.data.readers.RestrictedUnpickler` instead.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustlab.errors import ConfigError, DataError, DataNotFoundError

#: The label sets of each file, and the clean set each one is compared with.
CIFARN_LABEL_SETS: dict[str, dict[str, str]] = {
    "cifar10n": {
        "clean_label": "clean_label",
        "aggre_label": "clean_label",
        "worse_label": "clean_label",
        "random_label1": "clean_label",
        "random_label2": "clean_label",
        "random_label3": "clean_label",
    },
    "cifar100n": {
        "clean_label": "clean_label",
        "noisy_label": "clean_label",
        "clean_coarse_label": "clean_coarse_label",
        "noisy_coarse_label": "clean_coarse_label",
    },
}

#: Short names used by the official training script (``noise_type_map`` in main.py).
CIFARN_ALIASES: dict[str, str] = {
    "clean": "clean_label",
    "aggre": "aggre_label",
    "worst": "worse_label",
    "worse": "worse_label",
    "rand1": "random_label1",
    "rand2": "random_label2",
    "rand3": "random_label3",
    "clean100": "clean_label",
    "noisy100": "noisy_label",
}

_NUM_CLASSES = {"clean_label": None, "clean_coarse_label": 20, "noisy_coarse_label": 20}


def _allowed_globals() -> list[Any]:
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    dtypes = {type(np.dtype(c)) for c in "?bBhHiIlLqQefd"}
    return [
        _reconstruct,
        (_reconstruct, "numpy.core.multiarray._reconstruct"),
        (_reconstruct, "numpy._core.multiarray._reconstruct"),
        np.ndarray,
        np.dtype,
        *sorted(dtypes, key=lambda t: t.__name__),
    ]


def _refused(path: Path, exc: BaseException) -> DataError:
    text = str(exc)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    what = f"it references {found.group(1)}" if found else f"{type(exc).__name__}"
    return DataError(
        f"{path}: refused to load ({what}). A CIFAR-N label file may only hold label "
        f"arrays; this one is corrupt or references other Python objects (robustlab never "
        f"unpickles arbitrary objects). Download the official file again from "
        f"UCSC-REAL/cifar-10-100n."
    )


def _load_torch(path: Path) -> Any:
    safe = getattr(torch.serialization, "safe_globals", None)
    if safe is None:  # pragma: no cover - torch < 2.5
        return _load_restricted(path)
    try:
        with safe(_allowed_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError (bad zip), EOFError, ...
        raise _refused(path, exc) from exc


def _load_restricted(path: Path) -> Any:
    """Read the ``data.pkl`` of a torch zip archive with the restricted unpickler (numpy
    arrays, dicts, lists, strings and numbers only; torch tensors are refused)."""
    from robustlab.data.readers import RestrictedUnpickler, _check_no_objects

    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if len(names) != 1:
                raise DataError(f"{path}: not a torch.save archive (found {len(names)} data.pkl entries).")
            raw = zf.read(names[0])
    except zipfile.BadZipFile as exc:
        raise _refused(path, exc) from exc
    try:
        obj = RestrictedUnpickler(io.BytesIO(raw), name=str(path)).load()
    except DataError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, AttributeError,
            KeyError, MemoryError, UnicodeDecodeError, OverflowError) as exc:
        raise _refused(path, exc) from exc
    _check_no_objects(obj, str(path))
    return obj


def _as_label_array(value: Any, key: str, path: Path) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if not isinstance(value, np.ndarray):
        try:
            value = np.asarray(value)
        except (TypeError, ValueError) as exc:
            raise DataError(f"{path}: {key!r} is not an array of labels ({exc}).") from None
    if value.dtype.kind not in "iu":
        raise DataError(f"{path}: {key!r} has dtype {value.dtype}; labels must be integers.")
    return value.reshape(-1).astype(np.int64)


@dataclass
class CIFARNLabels:
    """The label sets of one CIFAR-N file.

    Attributes
    ----------
    labels: ``{label_set: int64 array}`` of the sets the file holds.
    variant: ``"cifar10n"`` or ``"cifar100n"``.
    path: where they were read from.
    """

    labels: dict[str, np.ndarray]
    variant: str
    path: Path

    @property
    def num_samples(self) -> int:
        return len(self.labels["clean_label"])

    def resolve(self, label_set: str) -> str:
        """The file key for ``label_set`` (official key or short name)."""
        key = CIFARN_ALIASES.get(str(label_set).lower(), str(label_set))
        if key not in self.labels:
            from robustlab.registry import close_matches

            names = sorted(self.labels) + sorted(
                a for a, k in CIFARN_ALIASES.items() if k in self.labels
            )
            near = close_matches(str(label_set), names)
            hint = f" Did you mean {', '.join(map(repr, near))}?" if near else ""
            raise ConfigError(
                f"{self.path} ({self.variant}) has no label set {label_set!r}.{hint} "
                f"Available: {', '.join(sorted(self.labels))}."
            )
        return key

    def get(self, label_set: str = "aggre_label") -> torch.Tensor:
        """The labels of ``label_set`` as an int64 tensor."""
        return torch.from_numpy(self.labels[self.resolve(label_set)].copy())

    def clean_for(self, label_set: str) -> str:
        return CIFARN_LABEL_SETS[self.variant][self.resolve(label_set)]

    def noise_rate(self, label_set: str = "aggre_label") -> float:
        """Fraction of ``label_set`` that differs from the matching clean labels."""
        key = self.resolve(label_set)
        clean = self.labels[self.clean_for(key)]
        return float(np.mean(self.labels[key] != clean))

    def noise_rates(self) -> dict[str, float]:
        """:meth:`noise_rate` of every label set in the file."""
        return {k: self.noise_rate(k) for k in sorted(self.labels)}


def read_cifarn(path: str | os.PathLike[str]) -> CIFARNLabels:
    """Read a CIFAR-10N/100N label file (see the module docstring), checked: a dict with
    ``clean_label``, only known keys, integer arrays of one length, labels in range
    (10 / 100 classes, 20 for the coarse sets)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataNotFoundError(
            f"CIFAR-N label file not found: {p}. Download CIFAR-10_human.pt or "
            f"CIFAR-100_human.pt from https://github.com/UCSC-REAL/cifar-10-100n (CC BY-NC 4.0; "
            f"robustlab does not ship it) and pass its path."
        )
    obj = _load_torch(p)
    if not isinstance(obj, dict):
        raise DataError(f"{p}: expected a dict of label arrays, got {type(obj).__name__}; not a CIFAR-N file.")
    keys = {str(k) for k in obj}
    if "clean_label" not in keys:
        raise DataError(f"{p}: has no 'clean_label' (found {sorted(keys)}); not a CIFAR-N label file.")
    variant = next(
        (v for v, sets in CIFARN_LABEL_SETS.items() if keys <= set(sets) and keys - {"clean_label"}),
        None,
    )
    if variant is None:
        raise DataError(
            f"{p}: label sets {sorted(keys)} match neither CIFAR-10N "
            f"({', '.join(CIFARN_LABEL_SETS['cifar10n'])}) nor CIFAR-100N "
            f"({', '.join(CIFARN_LABEL_SETS['cifar100n'])})."
        )
    k_fine = 10 if variant == "cifar10n" else 100
    labels: dict[str, np.ndarray] = {}
    for key, value in obj.items():
        arr = _as_label_array(value, str(key), p)
        k = _NUM_CLASSES.get(str(key)) or k_fine
        if arr.size and (arr.min() < 0 or arr.max() >= k):
            raise DataError(
                f"{p}: {key!r} has labels in [{arr.min()}, {arr.max()}], outside [0, {k - 1}]."
            )
        labels[str(key)] = arr
    lengths = {k: len(v) for k, v in labels.items()}
    if len(set(lengths.values())) != 1:
        raise DataError(f"{p}: label sets of different lengths {lengths}.")
    for key in labels:
        if CIFARN_LABEL_SETS[variant][key] not in labels:
            raise DataError(f"{p}: has {key!r} but not its clean counterpart {CIFARN_LABEL_SETS[variant][key]!r}.")
    return CIFARNLabels(labels=labels, variant=variant, path=p)


def load_cifarn_labels(path: str | os.PathLike[str], label_set: str = "aggre_label") -> torch.Tensor:
    """The ``label_set`` labels (int64 tensor) of a CIFAR-10N/100N file, in the order of
    the CIFAR training set. CIFAR-100N files have ``noisy_label`` (``"noisy100"``), not
    ``aggre_label``. Their noise rate: :func:`cifarn_noise_rate`."""
    return read_cifarn(path).get(label_set)


def cifarn_noise_rate(path: str | os.PathLike[str], label_set: str = "aggre_label") -> float:
    """Fraction of ``label_set`` differing from ``clean_label`` (``clean_coarse_label`` for
    the coarse set)."""
    return read_cifarn(path).noise_rate(label_set)


__all__ = [
    "CIFARNLabels",
    "CIFARN_ALIASES",
    "CIFARN_LABEL_SETS",
    "cifarn_noise_rate",
    "load_cifarn_labels",
    "read_cifarn",
]
