"""Saving and loading models as safetensors, never as pickles.

A robustlab checkpoint is a `safetensors <https://huggingface.co/docs/safetensors>`_ file
holding the model's ``state_dict`` with three metadata strings:

``robustlab_config``
    JSON of ``model.robustlab_config`` (``{"name": ..., "params": {...}}``), from which
    :func:`load_model` rebuilds the architecture through the model registry;
``robustlab_version``
    the robustlab version that wrote the file;
``tensors_sha256``
    :func:`tensors_sha256` of the tensors, checked on load so that a flipped byte or an
    edited file is refused rather than silently evaluated.

Files are written atomically (temporary file in the same folder, then ``os.replace``),
so an interrupted save never leaves half a checkpoint behind. Loading never unpickles
anything; :func:`convert_checkpoint` turns a ``torch.save`` state dict into a robustlab
checkpoint with ``torch.load(..., weights_only=True)``.

>>> from robustlab import models
>>> net = models.create("mlp", num_classes=3, in_channels=4, hidden=[8])
>>> path = models.save_model(net, "net.safetensors")              # doctest: +SKIP
>>> same = models.load_model(path)                                # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import struct
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustlab.errors import CheckpointError, ConfigError, RobustlabError
from robustlab.models.layers import INPUT_BOUNDS

_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit
_CONVERT_HINT = (
    "convert a torch.save state dict with robustlab.models.convert_checkpoint(src, dst, "
    "name=..., num_classes=..., in_channels=..., input_size=...), which reads it with "
    "torch.load(weights_only=True), or save with robustlab.models.save_model(model, path)"
)


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().to("cpu").contiguous()
    return t.reshape(-1).view(torch.uint8).numpy().tobytes()


def tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 (hex) over the tensors in sorted name order.

    For each name: the UTF-8 name, a NUL byte, the dtype (``str(dtype)``) and shape
    (``json`` list), a NUL byte, the byte length as 8-byte little-endian, then the raw
    little-endian bytes of the CPU-contiguous tensor. Including dtype, shape and lengths
    makes the digest unambiguous: an edited header (say float32 -> int32) fails it too.
    """
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        data = _tensor_bytes(t)
        h.update(name.encode("utf-8") + b"\0")
        h.update(f"{t.dtype}{json.dumps(list(t.shape))}".encode() + b"\0")
        h.update(struct.pack("<Q", len(data)))
        h.update(data)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike[str], *, chunk: int = 1 << 20) -> str:
    """sha256 (hex) of the bytes of the file at ``path``."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _version() -> str:
    try:
        from robustlab import __version__

        return str(__version__)
    except ImportError:  # pragma: no cover
        return "unknown"


def save_model(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Write ``model.state_dict()`` and its ``robustlab_config`` to a safetensors file.

    The write is atomic: a temporary file in the destination folder is renamed over
    ``path`` only once complete. Parent folders are created. Returns the path.

    Models without ``robustlab_config`` (user models) are saved too; load them with
    ``load_model(path, factory="package.module:function")``.
    """
    from safetensors.torch import save_file

    path = Path(path)
    config = getattr(model, "robustlab_config", None)
    try:
        config_json = json.dumps(config)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model.robustlab_config is not JSON-serialisable: {e}") from e
    tensors: dict[str, torch.Tensor] = {}
    for name, value in model.state_dict().items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"state_dict entry {name!r} is a {type(value).__name__}, not a tensor; "
                f"safetensors stores tensors only."
            )
        # clone: safetensors refuses tensors that share memory (tied weights, views)
        tensors[name] = value.detach().to("cpu").contiguous().clone()
    metadata = {
        "robustlab_config": config_json,
        "robustlab_version": _version(),
        "tensors_sha256": tensors_sha256(tensors),
        "format": "pt",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def _not_safetensors(path: Path, why: str, head: bytes = b"") -> CheckpointError:
    kind = ""
    if head.startswith(b"PK\x03\x04"):
        kind = " It looks like a torch.save (zip) file."
    elif len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5:
        kind = " It looks like a pickle file."
    return CheckpointError(
        f"{path} is not a safetensors file ({why}).{kind} robustlab never unpickles "
        f"checkpoints; {_CONVERT_HINT}."
    )


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse and check the JSON header of a safetensors file without loading tensors.

    Raises :class:`CheckpointError` when the file is not safetensors, or is truncated.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}.")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _not_safetensors(path, f"only {size} bytes", head)
        (n,) = struct.unpack("<Q", head)
        if n == 0 or n > _MAX_HEADER or n > size - 8:
            raise _not_safetensors(path, "no valid header length", head)
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _not_safetensors(path, "its header is not JSON", head) from e
    if not isinstance(header, dict):
        raise _not_safetensors(path, "its header is not a JSON object", head)
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, stop = info["data_offsets"]
            end = max(end, int(stop))
            ok = 0 <= int(begin) <= int(stop)
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise _not_safetensors(path, f"bad entry {name!r} in its header", head)
    if 8 + n + end != size:
        raise CheckpointError(
            f"{path} is truncated or padded: its header describes {8 + n + end} bytes but the "
            f"file has {size}. The file is corrupt; re-save it or re-download it."
        )
    return header


def _import_factory(factory: str) -> Any:
    module_name, sep, attr = factory.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"factory must look like 'package.module:function', got {factory!r}.")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(
            f"cannot import {module_name!r} for factory {factory!r}: {e}. Check the name and "
            f"that the module is on sys.path."
        ) from e
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"module {module_name!r} has no {attr!r} (factory {factory!r}).")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"factory {factory!r} is not callable.")
    return obj


def _first(keys: list[str], n: int = 5) -> str:
    shown = ", ".join(repr(k) for k in keys[:n])
    return shown + (f" (and {len(keys) - n} more)" if len(keys) > n else "")


def _check_state(model: nn.Module, tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    shapes = sorted(
        k
        for k in set(expected) & set(tensors)
        if tuple(expected[k].shape) != tuple(tensors[k].shape)
    )
    problems = []
    if missing:
        problems.append(f"missing keys {_first(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_first(unexpected)}")
    if shapes:
        shown = [
            f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(expected[k].shape)}"
            for k in shapes[:5]
        ]
        problems.append("shape mismatch " + "; ".join(shown))
    if problems:
        raise CheckpointError(
            f"the weights in {path} do not fit the model ({type(model).__name__}): "
            + "; ".join(problems)
            + ". Build the model with the same architecture and parameters it was saved "
            "with (or pass the right factory=)."
        )


def load_model(
    path: str | os.PathLike[str],
    *,
    factory: str | None = None,
    device: str | torch.device = "cpu",
    **factory_kwargs: Any,
) -> nn.Module:
    """Rebuild a model saved by :func:`save_model` and load its weights (``strict=True``).

    Parameters
    ----------
    path:
        A safetensors file. Anything else (a ``torch.save`` pickle, a truncated file,
        random bytes) raises :class:`CheckpointError`: robustlab never unpickles.
    factory:
        ``"package.module:function"`` building a user model: it is imported and called
        with ``factory_kwargs``. Without it the architecture comes from the file's
        ``robustlab_config`` through the model registry.
    device:
        Where the returned model lives.

    The recorded ``tensors_sha256`` is recomputed and compared; a mismatch raises
    :class:`CheckpointError`. The model is returned in **eval mode** (BatchNorm uses its
    running statistics, dropout is off); call ``.train()`` to fine-tune it.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    header = read_header(path)
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise _not_safetensors(path, "its metadata is not a JSON object")
    config: Any = None
    if "robustlab_config" in meta:
        try:
            config = json.loads(meta["robustlab_config"])
        except (TypeError, json.JSONDecodeError) as e:
            raise CheckpointError(
                f"{path} has an unreadable robustlab_config ({e}); the file is corrupt or was "
                f"modified; re-save it or re-download it."
            ) from e

    if factory is None:
        if factory_kwargs:
            raise ConfigError(
                f"keyword arguments {sorted(factory_kwargs)} are only used with factory=; "
                f"registry models are rebuilt from the parameters stored in the file."
            )
        if not (
            isinstance(config, dict)
            and isinstance(config.get("name"), str)
            and isinstance(config.get("params"), dict)
        ):
            raise CheckpointError(
                f"{path} does not say which robustlab model it holds (no usable "
                f"robustlab_config). Pass factory='package.module:function' to build the "
                f"model yourself."
            )

    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise _not_safetensors(path, f"safetensors cannot read it: {e}") from e

    recorded = meta.get("tensors_sha256")
    if recorded is None:
        warnings.warn(
            f"{path} records no tensors_sha256, so its integrity cannot be checked "
            f"(it was not written by robustlab.models.save_model).",
            stacklevel=2,
        )
    else:
        actual = tensors_sha256(tensors)
        if actual != recorded:
            raise CheckpointError(
                f"{path} fails its sha256 check (recorded {recorded[:16]}..., computed "
                f"{actual[:16]}...): the file is corrupt or was modified; re-save it or "
                f"re-download it."
            )

    if factory is not None:
        fn = _import_factory(factory)
        model = fn(**factory_kwargs)
        if not isinstance(model, nn.Module):
            raise ConfigError(
                f"factory {factory!r} returned a {type(model).__name__}, not a torch.nn.Module."
            )
        if not hasattr(model, "input_bounds"):
            setattr(model, "input_bounds", INPUT_BOUNDS)  # noqa: B010
    else:
        from robustlab.models.registry import create

        try:
            model = create(config["name"], **config["params"])
        except (RobustlabError, TypeError) as e:
            raise CheckpointError(
                f"{path} holds model {config['name']!r} with parameters that this robustlab "
                f"({_version()}, file written by {meta.get('robustlab_version', '?')}) cannot "
                f"build: {e}"
            ) from e

    _check_state(model, tensors, path)
    model.load_state_dict(tensors, strict=True)
    return model.to(device).eval()


def _extract_state_dict(obj: Any, src: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model", "net"):
            inner = obj.get(key)
            if (
                isinstance(inner, Mapping)
                and inner
                and all(isinstance(v, torch.Tensor) for v in inner.values())
            ):
                obj = inner
                break
        tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise CheckpointError(
        f"{src} holds no state dict (a mapping from names to tensors); found {type(obj).__name__}."
    )


def convert_checkpoint(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    name: str,
    prefix: str = "",
    strip: str = "module.",
    ignore: tuple[str, ...] = (),
    **create_kwargs: Any,
) -> Path:
    """Convert a ``torch.save`` state dict into a robustlab safetensors checkpoint.

    The source is read with ``torch.load(src, map_location="cpu", weights_only=True)``,
    which refuses arbitrary pickled objects. Weights are loaded into
    ``models.create(name, **create_kwargs)``:

    * ``strip`` is removed from the start of every key (``"module."`` from DataParallel);
    * ``prefix`` is then prepended (``"layers."`` for the official MNIST-net checkpoints);
    * keys starting with any of ``ignore`` are dropped (``("sub_block1.",)`` for TRADES
      WideResNets, which store an unused block);
    * the model's Normalize buffers are kept when the source has none.

    Returns ``dst``.
    """
    from robustlab.models.registry import create

    src = Path(src)
    try:
        obj = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError, EOFError, ...
        raise CheckpointError(
            f"cannot read {src} with torch.load(weights_only=True): {e}. Only plain state "
            f"dicts of tensors can be converted."
        ) from e
    state = _extract_state_dict(obj, src)
    tensors: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if strip and key.startswith(strip):
            key = key[len(strip) :]
        if any(key.startswith(p) for p in ignore):
            continue
        tensors[prefix + key] = value
    model = create(name, **create_kwargs)
    for key, value in model.state_dict().items():
        if key.startswith("normalize.") and key not in tensors:
            tensors[key] = value
    _check_state(model, tensors, src)
    model.load_state_dict(tensors, strict=True)
    return save_model(model, dst)


__all__ = [
    "convert_checkpoint",
    "file_sha256",
    "load_model",
    "read_header",
    "save_model",
    "tensors_sha256",
]
