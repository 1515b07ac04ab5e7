"""The model registry: ``create(name, num_classes=..., in_channels=..., input_size=...)``.

>>> from robustlab import models
>>> net = models.create("mnist_net", num_classes=10, in_channels=1, input_size=28)
>>> net.input_shape, net.input_bounds
((1, 28, 28), (0.0, 1.0))
>>> net.robustlab_config["name"]
'mnist_net'
>>> models.available("*resnet*")
['preact_resnet18', 'resnet18', 'wide_resnet']

Every model built here

* takes floats in ``[0, 1]`` and carries its input normalisation as its first layer,
  :class:`~robustlab.models.layers.Normalize` (identity unless ``mean``/``std`` given);
* has ``num_classes``, ``input_shape`` (``(C, H, W)`` or ``(D,)``), ``input_bounds``
  ``= (0.0, 1.0)`` and ``robustlab_config = {"name": ..., "params": {...}}``, a
  JSON-serialisable record of every constructor argument (defaults included), from which
  :func:`robustlab.models.io.load_model` rebuilds the model.

:func:`for_dataset` fills ``num_classes``, ``in_channels``, ``input_size`` and the
per-channel ``mean``/``std`` from a :class:`robustlab.data.Dataset`.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import nn

from robustlab.errors import ConfigError
from robustlab.models.layers import INPUT_BOUNDS
from robustlab.registry import Registry, check_params
from robustlab.validation import check_int

models: Registry[nn.Module] = Registry("model")

_COMMON = ("num_classes", "in_channels", "input_size", "mean", "std")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _size(input_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if input_size is None:
        return None
    if _is_int(input_size):
        size: tuple[int, ...] = (int(input_size), int(input_size))  # type: ignore[arg-type]
    elif isinstance(input_size, (Sequence, torch.Size)) and not isinstance(input_size, str):
        size = tuple(input_size)
        if len(size) != 2 or not all(_is_int(s) for s in size):
            size = ()
    else:
        size = ()
    if len(size) != 2 or min(size) < 1:
        raise ConfigError(
            f"input_size must be a positive int or a pair (H, W) of positive ints (or None "
            f"for vector data), got {input_size!r}."
        )
    return (int(size[0]), int(size[1]))


def _channel_values(
    value: float | Sequence[float] | torch.Tensor | None, default: float, n: int, what: str
) -> list[float]:
    if value is None:
        return [float(default)] * n
    try:
        vals = torch.as_tensor(value, dtype=torch.float64).reshape(-1).tolist()
    except (TypeError, ValueError, RuntimeError) as e:
        raise ConfigError(
            f"{what} must be a number or one number per channel, got {value!r}."
        ) from e
    if len(vals) == 1:
        vals = vals * n
    if len(vals) != n:
        raise ConfigError(
            f"{what} has {len(vals)} values but the model has {n} input channels; give one "
            f"value per channel (or a single value for all)."
        )
    if not all(math.isfinite(v) for v in vals):
        raise ConfigError(f"{what} contains NaN or inf: {vals}.")
    if what == "std" and min(vals) <= 0:
        raise ConfigError(f"std must be positive in every channel, got {vals}.")
    return [float(v) for v in vals]


def _plain(value: Any, name: str) -> Any:
    """Turn tuples/tensors into JSON-serialisable lists (and check the result)."""
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, (tuple, list)):
        return [_plain(v, name) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v, name) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ConfigError(
        f"model parameter {name!r} = {value!r} is not JSON-serialisable; model parameters "
        f"must be numbers, strings, booleans, None, or lists/dicts of those so that a saved "
        f"model can be rebuilt."
    )


def _full_params(factory: Any, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` plus the factory's defaults, in signature order."""
    sig = inspect.signature(factory)
    bound = sig.bind(**params)
    bound.apply_defaults()
    out: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        if sig.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
            out.update(value)
        else:
            out[name] = value
    return out


def create(
    name: str,
    *,
    num_classes: int,
    in_channels: int,
    input_size: int | tuple[int, int] | None = None,
    mean: float | Sequence[float] | torch.Tensor | None = None,
    std: float | Sequence[float] | torch.Tensor | None = None,
    device: str | torch.device | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build the model registered under ``name`` for inputs in ``[0, 1]``.

    Parameters
    ----------
    name:
        Registry name (``available()`` lists them; ``_``/``-`` and case are ignored).
    num_classes:
        Number of output logits.
    in_channels:
        Image channels ``C`` (with ``input_size=(H, W)``) or, for vector data
        (``input_size=None``), the feature dimension ``D``.
    input_size:
        ``(H, W)`` (or one int for square images), or ``None`` for vector data.
        Convolutional models need it.
    mean, std:
        Per-channel normalisation applied by the model's first layer
        (:class:`~robustlab.models.layers.Normalize`); ``None`` means 0 and 1.
    device:
        Where the parameters and buffers are created (``None``: torch's default, the
        CPU). ``"meta"`` builds the architecture without allocating any memory: its
        ``state_dict()`` has the right names, shapes and dtypes but no values, which is how
        :func:`~robustlab.models.io.load_model` checks a checkpoint's declared
        architecture against its tensors before building anything.
    **kwargs:
        Architecture parameters (``hidden=`` for ``mlp``, ``depth=``/``widen_factor=``
        for ``wide_resnet``, ...). Unknown names raise :class:`ConfigError` with the close
        matches.

    Returns
    -------
    nn.Module with ``num_classes``, ``input_shape``, ``input_bounds`` and
    ``robustlab_config`` attributes, in training mode.
    """
    canonical = models.canonical(name)  # UnknownNameError listing close matches
    factory = models.get(name)
    num_classes = check_int(num_classes, "num_classes", minimum=1)
    in_channels = check_int(
        in_channels, "in_channels (image channels, or the feature dimension of vectors)", minimum=1
    )
    size = _size(input_size)
    params: dict[str, Any] = {
        "num_classes": int(num_classes),
        "in_channels": int(in_channels),
        "input_size": size,
        "mean": _channel_values(mean, 0.0, in_channels, "mean"),
        "std": _channel_values(std, 1.0, in_channels, "std"),
        **kwargs,
    }
    check_params(factory, params, what=f"model {canonical!r}")
    full = _full_params(factory, params)
    config = {"name": canonical, "params": {k: _plain(v, k) for k, v in full.items()}}
    json.dumps(config)  # guaranteed by _plain; fail here rather than at save time
    if device is None:
        model = factory(**full)
    else:
        dev = torch.device(device)
        with dev:
            model = factory(**full)
        model = model.to(dev)  # also what a factory created on an explicit device
    if not isinstance(model, nn.Module):  # pragma: no cover - registry misuse
        raise ConfigError(f"model {canonical!r} factory returned {type(model).__name__}.")
    # plain attributes every attack and loader reads (setattr: nn.Module types them as tensors)
    setattr(model, "num_classes", int(num_classes))  # noqa: B010
    setattr(model, "input_shape", (int(in_channels),) if size is None else (int(in_channels), *size))  # noqa: B010
    setattr(model, "input_bounds", INPUT_BOUNDS)  # noqa: B010
    setattr(model, "robustlab_config", config)  # noqa: B010
    return model


def available(pattern: str = "*") -> list[str]:
    """Sorted registered model names matching a shell-style pattern (``"*resnet*"``)."""
    return models.available(pattern)


list_models = available


class _DatasetLike(Protocol):
    num_classes: int
    x: torch.Tensor

    @property
    def input_shape(self) -> tuple[int, ...]: ...


def channel_stats(
    x: torch.Tensor, *, chunk: int = 4096, min_std: float = 1e-6
) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) standard deviation of ``x``.

    ``x`` is ``(N, C, H, W)`` (statistics over N, H, W per channel) or ``(N, D)``
    (per feature). Computed in float64, chunk by chunk, in two passes. Channels whose std
    is below ``min_std`` (constant pixels, e.g. the always-black border of the digits
    data) get std 1 so that normalisation never divides by zero.
    """
    x = torch.as_tensor(x)
    if x.dim() < 2 or len(x) == 0:
        raise ConfigError(f"cannot compute channel statistics of data with shape {tuple(x.shape)}.")
    c = x.shape[1]

    def per_channel(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to("cpu", torch.float64).transpose(0, 1).reshape(c, -1)

    total = torch.zeros(c, dtype=torch.float64)
    count = 0
    for part in x.split(chunk):
        p = per_channel(part)
        total += p.sum(1)
        count += p.shape[1]
    mean = total / count
    sq = torch.zeros(c, dtype=torch.float64)
    for part in x.split(chunk):
        sq += ((per_channel(part) - mean[:, None]) ** 2).sum(1)
    std = (sq / count).sqrt()
    std = torch.where(std < min_std, torch.ones_like(std), std)
    return mean.tolist(), std.tolist()


def for_dataset(name: str, dataset: _DatasetLike, **kwargs: Any) -> nn.Module:
    """Build model ``name`` shaped for ``dataset`` and normalised with its statistics.

    ``num_classes`` comes from ``dataset.num_classes``; ``dataset.input_shape`` ``(C, H, W)``
    gives ``in_channels=C, input_size=(H, W)`` and ``(D,)`` gives ``in_channels=D,
    input_size=None``; ``mean``/``std`` are the per-channel statistics of ``dataset.x``
    (:func:`channel_stats`) unless passed in ``kwargs``. Any other keyword goes to
    :func:`create` (and may override the values above).

    >>> from robustlab import data, models                    # doctest: +SKIP
    >>> train = data.load("digits", split="train")             # doctest: +SKIP
    >>> net = models.for_dataset("mnist_net", train)          # doctest: +SKIP
    >>> net.input_shape, net.num_classes                       # doctest: +SKIP
    ((1, 8, 8), 10)
    """
    shape = tuple(int(s) for s in dataset.input_shape)
    if len(shape) == 3:
        params: dict[str, Any] = {"in_channels": shape[0], "input_size": (shape[1], shape[2])}
    elif len(shape) == 1:
        params = {"in_channels": shape[0], "input_size": None}
    else:
        raise ConfigError(
            f"dataset input_shape {shape} is neither (C, H, W) nor (D,); reshape the data."
        )
    params["num_classes"] = int(dataset.num_classes)
    if kwargs.get("mean") is None or kwargs.get("std") is None:
        mean, std = channel_stats(dataset.x)
        params["mean"], params["std"] = mean, std
    params.update({k: v for k, v in kwargs.items() if not (k in ("mean", "std") and v is None)})
    return create(name, **params)


__all__ = ["available", "channel_stats", "create", "for_dataset", "list_models", "models"]
