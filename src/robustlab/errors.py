"""Typed errors for people.

Every problem a user can cause (an unknown name, labels out of range, NaN inputs, a
corrupt checkpoint, a checksum mismatch, ...) raises a subclass of
:class:`RobustlabError` whose message says what was wrong *and what to do about it*.
The CLI prints these messages without a traceback and exits with code 2.
"""

from __future__ import annotations


class RobustlabError(Exception):
    """Base class of every error robustlab raises on purpose."""


class UnknownNameError(RobustlabError, LookupError):
    """A registry lookup for a name that is not registered (lists close matches)."""


class ConfigError(RobustlabError, ValueError):
    """A configuration value or parameter name that is not valid."""


class UnsupportedLayerError(ConfigError):
    """A model containing a layer or operation that a method (e.g. bound propagation)
    cannot handle; the message names the layer and lists the supported ones."""


class InvalidInputError(RobustlabError, ValueError):
    """Tensors handed to robustlab that break its input conventions."""


class LabelError(InvalidInputError):
    """Labels outside ``[0, num_classes)`` or of the wrong dtype/shape."""


class NonFiniteInputError(InvalidInputError):
    """Inputs that contain NaN or inf."""


class ShapeMismatchError(InvalidInputError):
    """Data whose shape does not fit the model (or labels that do not fit the data)."""


class EpsilonError(InvalidInputError):
    """A perturbation budget outside what the norm and the input bounds allow."""


class DataError(RobustlabError):
    """A dataset that cannot be found, read or trusted."""


class DataNotFoundError(DataError, FileNotFoundError):
    """Dataset files are missing (and download was not requested or not possible)."""


class ChecksumError(DataError):
    """A file whose checksum does not match the recorded one (corrupt or truncated)."""


class CheckpointError(RobustlabError):
    """A checkpoint that is not safetensors, is corrupt, or fails its recorded sha256."""


class StoreError(RobustlabError):
    """The results store cannot be opened or written."""


class StoreBusyError(StoreError):
    """Another process holds the results store's write lock (or runs the same config)."""


class WriteError(RobustlabError, OSError):
    """A file could not be written (disk full, file too large, no permission); the
    message names the operating system's reason, and no partial file is left behind."""


class TrainingError(RobustlabError):
    """Training cannot go on (e.g. the loss became NaN/inf)."""


class ReportError(RobustlabError):
    """A report file that cannot be written."""


class RobustlabWarning(UserWarning):
    """Something suspicious that does not stop the work (e.g. a model that outputs
    probabilities where logits are expected)."""


__all__ = [
    "RobustlabError",
    "UnknownNameError",
    "ConfigError",
    "UnsupportedLayerError",
    "InvalidInputError",
    "LabelError",
    "NonFiniteInputError",
    "ShapeMismatchError",
    "EpsilonError",
    "DataError",
    "DataNotFoundError",
    "ChecksumError",
    "CheckpointError",
    "StoreError",
    "StoreBusyError",
    "WriteError",
    "TrainingError",
    "ReportError",
    "RobustlabWarning",
]
