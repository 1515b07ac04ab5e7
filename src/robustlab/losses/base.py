"""Base classes, parameter checks and the registry of classification losses.

Every loss is a :class:`Loss`: an ``nn.Module`` on logits ``(N, K)`` and integer targets
``(N,)`` in ``[0, K)`` whose subclasses implement :meth:`Loss.per_sample`; the base class
checks the batch (float, negative or out-of-range targets raise
:class:`~robustlab.errors.LabelError` naming the range) and applies the reduction
(``"mean"``, ``"sum"`` or ``"none"``). Parameters are checked with
:mod:`robustlab.validation` (``check_float``, ``check_int``, ``check_choice``), named by
:func:`param_name`.

Stateful losses (the optional protocol)
---------------------------------------
A few losses keep one value per *training sample* (truncated Lq's weights, ALDR-KL's
per-sample lambda). They derive from :class:`StatefulLoss` and follow this protocol, which
the training objective (ERM) drives:

``needs_indices: ClassVar[bool]``
    ``False`` on :class:`Loss`, ``True`` on :class:`StatefulLoss`. When it is ``True`` the
    caller must pass the batch's dataset indices: ``loss(logits, target, index)``, where
    ``index[i]`` is the position of sample ``i`` in the training set. ``index=None`` is
    refused with a :class:`~robustlab.errors.ConfigError`. Losses without state accept and
    ignore ``index``.
``setup(num_samples: int, num_classes: int)``
    Optional. Allocates the per-sample state for a training set of ``num_samples`` samples
    (re-initialising it) and fixes its size: later indices outside ``[0, num_samples)`` are
    refused. Without ``setup`` the state is allocated lazily and grows to the largest index
    seen. A no-op on losses without state.
``start_epoch(epoch: int)``
    Optional hook called before each epoch with the 0-based epoch number (truncated Lq
    uses it to schedule its weight refresh). A no-op on losses without an epoch schedule.
``state_dict()`` / ``load_state_dict()``
    The per-sample state lives in registered buffers, so the ordinary ``nn.Module``
    methods save and restore it bit-identically (buffers are resized on load to the saved
    shapes, so a fresh loss can load the state of a trained one).

State buffers follow the device of the logits they are used with (they are moved on first
use), so a caller does not have to move the loss to the model's device.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any, ClassVar

import torch
from torch import nn

from robustlab.errors import ConfigError, InvalidInputError, LabelError, ShapeMismatchError
from robustlab.registry import Registry
from robustlab.validation import check_choice, check_int, check_labels

losses: Registry[nn.Module] = Registry("loss")

_REDUCTIONS = ("mean", "sum", "none")


def _loss_name(obj: object) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return str(getattr(cls, "registry_name", cls.__name__))


class Loss(nn.Module):
    """A loss on logits ``(N, K)`` and integer targets ``(N,)``.

    Subclasses implement :meth:`per_sample`, returning one loss per sample; the base
    class applies ``reduction`` (``"mean"``, ``"sum"`` or ``"none"``). Constructors
    store their parameters only (scikit-learn style) so that :meth:`get_params`
    round-trips through configs.

    See the module docstring for the optional protocol of stateful losses
    (``needs_indices``, ``setup``, ``start_epoch``).
    """

    needs_indices: ClassVar[bool] = False

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = check_choice(reduction, param_name(self, "reduction"), _REDUCTIONS)

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, index: torch.Tensor | None = None
    ) -> torch.Tensor:
        target = _check_batch(self, logits, target)
        if self.needs_indices:
            if index is None:
                raise ConfigError(
                    f"loss {_loss_name(self)!r} keeps per-sample state and needs the dataset "
                    f"indices of the batch: call it as loss(logits, target, index) with index[i] "
                    f"the position of sample i in the training set (ERM passes them when "
                    f"loss.needs_indices is True)."
                )
            loss = self.per_sample(logits, target, index)  # type: ignore[call-arg]
        else:
            loss = self.per_sample(logits, target)
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss

    # -- optional protocol (no-ops for losses without per-sample state) ----------------
    def setup(self, num_samples: int, num_classes: int) -> None:
        """Allocate per-sample state for a training set (no-op for stateless losses)."""

    def start_epoch(self, epoch: int) -> None:
        """Called before each (0-based) epoch; no-op unless the loss has an epoch schedule."""

    # -- introspection ----------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        """The constructor parameters of this loss (for configs and reports)."""
        sig = inspect.signature(type(self).__init__)
        return {n: getattr(self, n) for n in sig.parameters if n != "self" and hasattr(self, n)}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())


def _check_batch(loss: Loss, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Refuse logits and targets that break the loss's contract; returns int64 targets.

    Dtype and shape checks need no device synchronisation; the label range does (one
    ``min``/``max`` of the targets, :func:`robustlab.validation.check_labels`): targets
    outside ``[0, K)`` would otherwise index out of bounds (an ``IndexError`` on CPU, a
    device-side assert on CUDA) or silently mix in garbage (the one-hot losses).
    """
    name = _loss_name(loss)
    if not isinstance(logits, torch.Tensor) or not torch.is_floating_point(logits):
        raise InvalidInputError(
            f"loss {name!r}: logits must be a floating-point tensor, got "
            f"{getattr(logits, 'dtype', type(logits).__name__)}."
        )
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise ShapeMismatchError(
            f"loss {name!r}: logits must have shape (N, K) with K >= 2 classes, got "
            f"{tuple(logits.shape)}. Flatten extra dimensions before the loss."
        )
    if (
        not isinstance(target, torch.Tensor)
        or torch.is_floating_point(target)
        or target.dtype == torch.bool
    ):
        raise LabelError(
            f"loss {name!r}: targets must be an integer tensor of class indices, got "
            f"{getattr(target, 'dtype', type(target).__name__)}."
        )
    if target.shape != (logits.shape[0],):
        raise ShapeMismatchError(
            f"loss {name!r}: targets have shape {tuple(target.shape)} for logits of shape "
            f"{tuple(logits.shape)}; expected ({logits.shape[0]},)."
        )
    check_labels(target, logits.shape[1], name=f"loss {name!r}: target")
    return target.long()


# -- parameter checks -------------------------------------------------------------------
# Parameters go through robustlab.validation (check_float / check_int / check_bool /
# check_choice), the validators every room shares; ``param_name`` puts the loss's name in
# their messages.


def param_name(owner: object, name: str, note: str = "") -> str:
    """``"loss 'gce': q"`` (plus `` (note)``): how a loss names a parameter in its errors."""
    return f"loss {_loss_name(owner)!r}: {name}" + (f" ({note})" if note else "")


# -- stateful losses ----------------------------------------------------------------------
class StatefulLoss(Loss):
    """A loss that keeps one value per training sample (see the module docstring).

    Subclasses list their per-sample buffers in :attr:`per_sample_state` as
    ``name -> (fill value, dtype)``, implement ``per_sample(logits, target, index)`` and
    call :meth:`_ensure_state` with the batch's indices before touching the state. Scalar
    buffers registered by subclasses are saved and restored like any buffer.
    """

    needs_indices: ClassVar[bool] = True
    per_sample_state: ClassVar[dict[str, tuple[float, torch.dtype]]] = {}

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self._num_samples: int | None = None  # fixed by setup(); None = grow lazily
        self._num_classes: int | None = None
        for name, (_, dtype) in self.per_sample_state.items():
            self.register_buffer(name, torch.empty(0, dtype=dtype))

    def per_sample(  # type: ignore[override]
        self, logits: torch.Tensor, target: torch.Tensor, index: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError

    def _fill(self, name: str) -> float:
        return self.per_sample_state[name][0]

    def setup(self, num_samples: int, num_classes: int) -> None:
        """Allocate fresh per-sample state for ``num_samples`` samples and fix its size."""
        n = check_int(num_samples, param_name(self, "num_samples"), minimum=1)
        k = check_int(num_classes, param_name(self, "num_classes"), minimum=2)
        self._num_samples, self._num_classes = n, k
        for name, (_, dtype) in self.per_sample_state.items():
            buf = getattr(self, name)
            setattr(self, name, torch.full((n,), self._fill(name), dtype=dtype, device=buf.device))

    @property
    def num_samples(self) -> int:
        """The number of samples the per-sample state currently covers."""
        return (
            int(next(iter(self.per_sample_state_tensors())).numel()) if self.per_sample_state else 0
        )

    def per_sample_state_tensors(self) -> Iterable[torch.Tensor]:
        return (getattr(self, name) for name in self.per_sample_state)

    def _ensure_state(self, logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Check ``index``, move the state to the logits' device and grow it if needed."""
        name = _loss_name(self)
        if (
            not isinstance(index, torch.Tensor)
            or torch.is_floating_point(index)
            or index.dtype == torch.bool
        ):
            raise InvalidInputError(
                f"loss {name!r}: index must be an integer tensor of dataset positions, got "
                f"{getattr(index, 'dtype', type(index).__name__)}."
            )
        if index.shape != (logits.shape[0],):
            raise ShapeMismatchError(
                f"loss {name!r}: index has shape {tuple(index.shape)} for a batch of "
                f"{logits.shape[0]} samples; pass one dataset index per sample."
            )
        if self._num_classes is not None and logits.shape[1] != self._num_classes:
            raise ShapeMismatchError(
                f"loss {name!r}: setup() was called with num_classes={self._num_classes} but the "
                f"logits have {logits.shape[1]} columns."
            )
        index = index.to(device=logits.device, dtype=torch.long)
        first = next(iter(self.per_sample_state_tensors()))
        if first.device != logits.device:
            self.to(logits.device)
        if index.numel():
            lo, hi = int(index.min()), int(index.max())
            if lo < 0:
                raise InvalidInputError(f"loss {name!r}: index has negative values (min {lo}).")
            if hi >= self.num_samples:
                if self._num_samples is not None:
                    raise InvalidInputError(
                        f"loss {name!r}: index has values up to {hi} but setup() was called with "
                        f"num_samples={self._num_samples}; indices must lie in "
                        f"[0, {self._num_samples - 1}]."
                    )
                self._grow(hi + 1)
        return index

    def _grow(self, n: int) -> None:
        for name, (_, dtype) in self.per_sample_state.items():
            old = getattr(self, name)
            new = torch.full((n,), self._fill(name), dtype=dtype, device=old.device)
            new[: old.numel()] = old
            setattr(self, name, new)

    def _load_from_state_dict(  # type: ignore[override]
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # Resize buffers to the saved shapes so that a fresh loss can load trained state.
        for name, buf in list(self._buffers.items()):
            key = prefix + name
            if buf is not None and key in state_dict and isinstance(state_dict[key], torch.Tensor):
                src = state_dict[key]
                if src.shape != buf.shape:
                    setattr(self, name, torch.empty(src.shape, dtype=buf.dtype, device=buf.device))
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if self.per_sample_state and self._num_samples is not None:
            # setup() fixed a size: pad a smaller saved state with initial values (what
            # lazy growth would do); a larger saved state widens the accepted range.
            if self.num_samples < self._num_samples:
                self._grow(self._num_samples)
            self._num_samples = self.num_samples


def create(name: str, /, **params: Any) -> Loss:
    """Build a registered loss: ``losses.create("gce", q=0.7, reduction="none")``."""
    return losses.create(name, **params)  # type: ignore[return-value]


def available(pattern: str = "*") -> list[str]:
    """Names of the registered losses matching ``pattern``."""
    return losses.available(pattern)
