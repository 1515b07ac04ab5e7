"""Saving and loading models as safetensors, never as pickles.

A robustlab checkpoint is a `safetensors <https://huggingface.co/docs/safetensors>`_ file
holding the model's ``state_dict`` with these metadata strings:

``robustlab_config``
    JSON of ``model.robustlab_config`` (``{"name": ..., "params": {...}}``), from which
    :func:`load_model` rebuilds the architecture through the model registry;
``robustlab_version``
    the robustlab version that wrote the file;
``tensors_sha256``
    :func:`tensors_sha256` of the tensors (= :func:`weights_sha256` of the model), checked
    on load so that a flipped byte or an edited file is refused rather than silently
    evaluated;
``format``
    ``"pt"`` (what the ``safetensors`` library expects of PyTorch files);

plus any extra strings given to ``save_model(..., metadata=...)`` (the runner stores a
training run's provenance there: ``robustlab_run_id``, ``robustlab_run_name``,
``robustlab_training``). :func:`read_metadata` reads them from the header alone;
:func:`load_model` exposes the extra ones as ``model.robustlab_metadata``.

The file is written by robustlab itself, byte for byte reproducibly: the header JSON has
sorted keys and no spaces (padded with spaces to a multiple of 8 bytes), the tensors
follow ordered by element size (largest first, so each is aligned) and then by name, so
identical weights, config and metadata give an identical
file (and an identical :func:`file_sha256`). The layout is the safetensors format: an
8-byte little-endian header length, the UTF-8 JSON header ``{name: {"dtype", "shape",
"data_offsets"}, "__metadata__": {str: str}}``, then the raw little-endian tensor bytes;
the ``safetensors`` library reads it unchanged.

Files are written atomically (:func:`robustlab._atomic.atomic_path`), so an interrupted
or failed save (disk full, file too large) never leaves half a checkpoint behind and
raises :class:`~robustlab.errors.WriteError` naming the cause. Loading never unpickles
anything: a registry model's declared architecture is checked against the file's tensor
shapes on the ``meta`` device before anything is allocated; user models
(``factory="pkg.module:function"``) may also come as ``torch.save(model.state_dict())``
files, read with ``torch.load(..., weights_only=True)`` only. :func:`convert_checkpoint`
turns such a state dict into a robustlab checkpoint.

>>> from robustlab import models
>>> net = models.create("mlp", num_classes=3, in_channels=4, hidden=[8])
>>> path = models.save_model(net, "net.safetensors", metadata={"note": "demo"})  # doctest: +SKIP
>>> models.read_metadata(path)["note"]                                          # doctest: +SKIP
'demo'
>>> same = models.load_model(path)                                              # doctest: +SKIP
>>> same.robustlab_metadata, models.weights_sha256(same) == models.weights_sha256(net)  # doctest: +SKIP
({'note': 'demo'}, True)
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import re
import struct
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustlab._atomic import atomic_path
from robustlab.errors import CheckpointError, ConfigError, RobustlabError
from robustlab.models.layers import INPUT_BOUNDS

_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit
_CONVERT_HINT = (
    "convert a torch.save state dict with robustlab.models.convert_checkpoint(src, dst, "
    "name=..., num_classes=..., in_channels=..., input_size=...), which reads it with "
    "torch.load(weights_only=True), load it with load_model(path, factory='pkg.module:function') "
    "if it holds your own model, or save with robustlab.models.save_model(model, path)"
)

#: torch dtype -> safetensors dtype name (the format's spelling), for every dtype both know.
_DTYPE_NAMES: dict[torch.dtype, str] = {
    dtype: name
    for name, dtype in (
        ("F64", torch.float64),
        ("F32", torch.float32),
        ("F16", torch.float16),
        ("BF16", torch.bfloat16),
        ("I64", torch.int64),
        ("I32", torch.int32),
        ("I16", torch.int16),
        ("I8", torch.int8),
        ("U8", torch.uint8),
        ("BOOL", torch.bool),
        ("C64", torch.complex64),
        ("U16", getattr(torch, "uint16", None)),
        ("U32", getattr(torch, "uint32", None)),
        ("U64", getattr(torch, "uint64", None)),
        ("F8_E4M3", getattr(torch, "float8_e4m3fn", None)),
        ("F8_E5M2", getattr(torch, "float8_e5m2", None)),
    )
    if dtype is not None
}
_DTYPE_SIZES: dict[str, int] = {
    name: torch.empty(0, dtype=dtype).element_size() for dtype, name in _DTYPE_NAMES.items()
}

#: Metadata keys that save_model writes itself (not accepted in ``metadata=``).
RESERVED_METADATA = ("format", "robustlab_config", "robustlab_version", "tensors_sha256")


def _byte_view(t: torch.Tensor) -> Any:
    """The raw (native, i.e. little-endian) bytes of a CPU-contiguous tensor, without a copy."""
    return t.reshape(-1).view(torch.uint8).numpy()


def tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 (hex) over the tensors in sorted name order.

    For each name: the UTF-8 name, a NUL byte, the dtype (``str(dtype)``) and shape
    (``json`` list), a NUL byte, the byte length as 8-byte little-endian, then the raw
    little-endian bytes of the CPU-contiguous tensor. Including dtype, shape and lengths
    makes the digest unambiguous: an edited header (say float32 -> int32) fails it too.
    """
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(name.encode("utf-8") + b"\0")
        h.update(f"{t.dtype}{json.dumps(list(t.shape))}".encode() + b"\0")
        h.update(struct.pack("<Q", t.numel() * t.element_size()))
        h.update(_byte_view(t))
    return h.hexdigest()


def _state_tensors(model_or_state_dict: nn.Module | Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The state dict as CPU-contiguous tensors (refusing entries that are not tensors)."""
    if isinstance(model_or_state_dict, nn.Module):
        state: Mapping[str, Any] = model_or_state_dict.state_dict()
    elif isinstance(model_or_state_dict, Mapping):
        state = model_or_state_dict
    else:
        raise ConfigError(
            f"expected a torch.nn.Module or a state dict (a mapping from names to tensors), "
            f"got {type(model_or_state_dict).__name__}."
        )
    tensors: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"state_dict entry {name!r} is a {type(value).__name__}, not a tensor; "
                f"safetensors stores tensors only."
            )
        tensors[str(name)] = value.detach().to("cpu").contiguous()
    return tensors


def weights_sha256(model_or_state_dict: nn.Module | Mapping[str, Any]) -> str:
    """The identity of a model's weights: :func:`tensors_sha256` of its ``state_dict``.

    Equal to the ``tensors_sha256`` that :func:`save_model` records, and unchanged by a
    save/load round trip, a re-save with other metadata or a move to another device, so
    evaluations of the same weights can be keyed by it whatever file they came from.
    """
    return tensors_sha256(_state_tensors(model_or_state_dict))


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


def _check_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise ConfigError(
            f"metadata must be a mapping of strings to strings, got {type(metadata).__name__}."
        )
    out: dict[str, str] = {}
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ConfigError(
                f"metadata entries must be strings (safetensors stores str -> str); got "
                f"{key!r}: {type(value).__name__}. Encode other values as JSON first."
            )
        if key in RESERVED_METADATA:
            raise ConfigError(
                f"metadata key {key!r} is written by save_model itself; use another name "
                f"(reserved: {', '.join(RESERVED_METADATA)})."
            )
        out[key] = value
    return out


def _write_safetensors(
    path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]
) -> None:
    """Write a safetensors file deterministically: header keys sorted, tensor data ordered
    by element size (largest first) then name, so every tensor starts at a multiple of its
    element size (the order the safetensors library uses, for aligned zero-copy reads)."""
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    offset = 0
    names = sorted(tensors, key=lambda k: (-tensors[k].element_size(), k))
    for name in names:
        t = tensors[name]
        if name == "__metadata__":
            raise CheckpointError("a tensor cannot be named '__metadata__' in a safetensors file.")
        if t.dtype not in _DTYPE_NAMES:
            raise CheckpointError(
                f"tensor {name!r} has dtype {t.dtype}, which safetensors cannot store; "
                f"convert it (e.g. .float()) before saving."
            )
        nbytes = t.numel() * t.element_size()
        header[name] = {
            "dtype": _DTYPE_NAMES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # align the tensor data to 8 bytes, as safetensors does
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for name in names:
            f.write(_byte_view(tensors[name]))


def save_model(
    model: nn.Module,
    path: str | os.PathLike[str],
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``model.state_dict()`` and its ``robustlab_config`` to a safetensors file.

    Parameters
    ----------
    model:
        A zoo model (``models.create``) or any ``nn.Module``. Models without
        ``robustlab_config`` (user models) are saved too; load them with
        ``load_model(path, factory="package.module:function")``.
    path:
        The destination; parent folders are created. The write is atomic (a temporary
        file beside it is renamed over it once complete); a failed write raises
        :class:`~robustlab.errors.WriteError` and leaves any old file intact.
    metadata:
        Extra ``str -> str`` entries stored in the header (read back by
        :func:`read_metadata` and as ``load_model(path).robustlab_metadata``). The keys in
        :data:`RESERVED_METADATA` are robustlab's own and refused here.

    The file depends on nothing but the tensors, the config, the metadata and the
    robustlab version: saving the same model twice gives byte-identical files.
    Returns the path.
    """
    path = Path(path)
    extra = _check_metadata(metadata)
    config = getattr(model, "robustlab_config", None)
    try:
        config_json = json.dumps(config, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model.robustlab_config is not JSON-serialisable: {e}") from e
    tensors = _state_tensors(model)
    meta = {
        **extra,
        "format": "pt",
        "robustlab_config": config_json,
        "robustlab_version": _version(),
        "tensors_sha256": tensors_sha256(tensors),
    }
    with atomic_path(path) as tmp:
        _write_safetensors(tmp, tensors, meta)
    return path


def _looks_like_torch_save(head: bytes) -> str:
    """``" It looks like ..."`` for the magic bytes of torch.save files and pickles, else ``""``."""
    if head.startswith(b"PK\x03\x04"):
        return " It looks like a torch.save (zip) file."
    if len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return " It looks like a pickle file."
    return ""


def _not_safetensors(path: Path, why: str, head: bytes = b"") -> CheckpointError:
    return CheckpointError(
        f"{path} is not a safetensors file ({why}).{_looks_like_torch_save(head)} robustlab "
        f"never unpickles checkpoints; {_CONVERT_HINT}."
    )


def _check_entry(path: Path, name: str, info: Any, head: bytes) -> tuple[int, int]:
    """Check one tensor entry of a header; return its ``(begin, end)`` data offsets."""
    try:
        dtype, shape, (begin, stop) = info["dtype"], info["shape"], info["data_offsets"]
        ok = (
            isinstance(dtype, str)
            and isinstance(shape, list)
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
            and isinstance(begin, int)
            and isinstance(stop, int)
            and 0 <= begin <= stop
        )
    except (TypeError, KeyError, ValueError):
        ok = False
    if not ok:
        raise _not_safetensors(path, f"bad entry {name!r} in its header", head)
    if dtype not in _DTYPE_SIZES:
        raise CheckpointError(
            f"{path}: tensor {name!r} has dtype {dtype!r}, which this torch cannot load "
            f"(supported: {', '.join(sorted(_DTYPE_SIZES))})."
        )
    if math.prod(shape) * _DTYPE_SIZES[dtype] != stop - begin:
        raise CheckpointError(
            f"{path}: tensor {name!r} declares shape {tuple(shape)} of {dtype} "
            f"({math.prod(shape) * _DTYPE_SIZES[dtype]} bytes) but its data has {stop - begin} "
            f"bytes; the file is corrupt or was modified."
        )
    return begin, stop


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse and check the JSON header of a safetensors file without loading tensors.

    Every tensor entry must have a known dtype, a shape whose size matches its byte
    range, and the byte ranges must tile the data section exactly. Raises
    :class:`CheckpointError` when the file is not safetensors, is truncated or corrupt.
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
    spans = sorted(
        _check_entry(path, name, info, head) for name, info in header.items() if name != "__metadata__"
    )
    end = 0
    for begin, stop in spans:
        if begin != end:
            raise CheckpointError(
                f"{path}: the tensors' byte ranges overlap or leave gaps (at byte {begin}, "
                f"expected {end}); the file is corrupt or was modified."
            )
        end = stop
    if 8 + n + end != size:
        raise CheckpointError(
            f"{path} is truncated or padded: its header describes {8 + n + end} bytes but the "
            f"file has {size}. The file is corrupt; re-save it or re-download it."
        )
    return header


def _metadata_of(header: Mapping[str, Any], path: Path) -> dict[str, str]:
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
    ):
        raise _not_safetensors(path, "its __metadata__ is not a mapping of strings to strings")
    return dict(meta)


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """All ``str -> str`` metadata of a safetensors file, from its header alone.

    For a file written by :func:`save_model` this holds the reserved entries
    (:data:`RESERVED_METADATA`: ``robustlab_config``, ``robustlab_version``,
    ``tensors_sha256``, ``format``) and the extra ``metadata=`` given to it. No tensor is
    read and nothing is verified beyond the header (:func:`load_model` checks the
    ``tensors_sha256``). Raises :class:`CheckpointError` for anything but a safetensors file.
    """
    path = Path(path)
    return _metadata_of(read_header(path), path)


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


def _size_text(n_bytes: int) -> str:
    """``4.0 TB``-style size (powers of 1000)."""
    size = float(n_bytes)
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def _check_state(
    model: nn.Module, shapes: Mapping[str, tuple[int, ...]], path: Path, *, declared: bool = False
) -> None:
    """Refuse ``shapes`` (the file's tensors) that do not fit ``model``'s state dict.

    ``declared=True``: ``model`` is the architecture the file's ``robustlab_config``
    declares, built on the meta device, and the message says so (with its size).
    """
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong = sorted(k for k in set(expected) & set(shapes) if expected[k] != tuple(shapes[k]))
    problems = []
    if missing:
        problems.append(f"missing keys {_first(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_first(unexpected)}")
    if wrong:
        shown = [f"{k}: file {tuple(shapes[k])} vs model {expected[k]}" for k in wrong[:5]]
        problems.append("shape mismatch " + "; ".join(shown))
    if not problems:
        return
    if declared:
        config = getattr(model, "robustlab_config", {})
        n = sum(math.prod(v.shape) for v in model.state_dict().values())
        size = sum(math.prod(v.shape) * v.element_size() for v in model.state_dict().values())
        raise CheckpointError(
            f"{path} declares model {config.get('name')!r} ({n:,} weights, "
            f"{_size_text(size)}) but its tensors do not fit it: " + "; ".join(problems)
            + ". Its robustlab_config was edited or the file is corrupt; it was refused before "
            "building the model. Re-save it or re-download it."
        )
    raise CheckpointError(
        f"the weights in {path} do not fit the model ({type(model).__name__}): "
        + "; ".join(problems)
        + ". Build the model with the same architecture and parameters it was saved "
        "with (or pass the right factory=)."
    )


def _why_torch_load_failed(exc: BaseException) -> str:
    """A short reason from torch.load's error, without torch's advice to unpickle anyway."""
    text = str(exc)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return (
            f"it references the Python object {found.group(1)}, which is not a tensor (a "
            f"pickle can run any code when loaded)"
        )
    if "zip archive" in text or "central directory" in text:
        return "it is a truncated or corrupt torch.save (zip) file"
    if "Unsupported operand" in text or "load key" in text or isinstance(exc, EOFError):
        return "it is not a torch.save file, or it pickles objects other than tensors"
    return f"torch.load failed ({type(exc).__name__})"


def _torch_load_state(path: Path) -> dict[str, torch.Tensor]:
    """A plain state dict from a torch.save file, read with ``weights_only=True`` only."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols; we refuse anyway
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError, EOFError, ...: every failure
        raise CheckpointError(
            f"cannot read {path} as a state dict of tensors: {_why_torch_load_failed(e)}. "
            f"robustlab never unpickles arbitrary objects: it reads torch.save files with "
            f"torch.load(weights_only=True) only. Save the weights alone with "
            f"torch.save(model.state_dict(), path) (and load them with factory=), or make a "
            f"robustlab checkpoint with robustlab.models.convert_checkpoint(src, dst, name=...)."
        ) from None  # torch's message advises weights_only=False, which we never do
    return _extract_state_dict(obj, path)


def _build_factory_model(factory: str, factory_kwargs: Mapping[str, Any]) -> nn.Module:
    fn = _import_factory(factory)
    model = fn(**factory_kwargs)
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"factory {factory!r} returned a {type(model).__name__}, not a torch.nn.Module."
        )
    if not hasattr(model, "input_bounds"):
        setattr(model, "input_bounds", INPUT_BOUNDS)  # noqa: B010
    return model


def _finish(
    model: nn.Module,
    tensors: Mapping[str, torch.Tensor],
    path: Path,
    metadata: Mapping[str, str],
    device: str | torch.device,
) -> nn.Module:
    _check_state(model, {k: tuple(v.shape) for k, v in tensors.items()}, path)
    model.load_state_dict(tensors, strict=True)
    extra = {k: v for k, v in metadata.items() if k not in RESERVED_METADATA}
    setattr(model, "robustlab_metadata", extra)  # noqa: B010
    return model.to(device).eval()


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
        A safetensors file, or with ``factory=`` also a ``torch.save(model.state_dict())``
        file. Anything else (a pickled model or other objects, a truncated file, random
        bytes) raises :class:`CheckpointError`: robustlab never unpickles arbitrary objects.
    factory:
        ``"package.module:function"`` building a user model: it is imported and called
        with ``factory_kwargs``. Without it the architecture comes from the file's
        ``robustlab_config`` through the model registry; that architecture is first built
        on the ``meta`` device and its shapes compared with the file's header, so a file
        that declares a huge model next to small tensors is refused before anything is
        allocated.
    device:
        Where the returned model lives.

    The recorded ``tensors_sha256`` is recomputed and compared; a mismatch raises
    :class:`CheckpointError`. The file's extra metadata (``save_model(..., metadata=)``)
    is ``model.robustlab_metadata`` (a dict; empty for torch.save files). The model is
    returned in **eval mode** (BatchNorm uses its running statistics, dropout is off);
    call ``.train()`` to fine-tune it.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}.")
    if factory is None and factory_kwargs:
        raise ConfigError(
            f"keyword arguments {sorted(factory_kwargs)} are only used with factory=; "
            f"registry models are rebuilt from the parameters stored in the file."
        )
    with open(path, "rb") as f:
        head = f.read(8)
    if factory is not None and _looks_like_torch_save(head):
        tensors = _torch_load_state(path)
        return _finish(_build_factory_model(factory, factory_kwargs), tensors, path, {}, device)

    header = read_header(path)
    meta = _metadata_of(header, path)
    config: Any = None
    if "robustlab_config" in meta:
        try:
            config = json.loads(meta["robustlab_config"])
        except json.JSONDecodeError as e:
            raise CheckpointError(
                f"{path} has an unreadable robustlab_config ({e}); the file is corrupt or was "
                f"modified; re-save it or re-download it."
            ) from e

    if factory is None:
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
        declared = _create_from_config(config, path, meta, device="meta")
        shapes = {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}
        _check_state(declared, shapes, path, declared=True)

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
        model = _build_factory_model(factory, factory_kwargs)
    else:
        model = _create_from_config(config, path, meta)
    return _finish(model, tensors, path, meta, device)


def _create_from_config(
    config: Mapping[str, Any], path: Path, meta: Mapping[str, str], *, device: str | None = None
) -> nn.Module:
    from robustlab.models.registry import create

    try:
        return create(config["name"], device=device, **config["params"])
    except (RobustlabError, TypeError) as e:
        raise CheckpointError(
            f"{path} holds model {config['name']!r} with parameters that this robustlab "
            f"({_version()}, file written by {meta.get('robustlab_version', '?')}) cannot "
            f"build: {e}"
        ) from e


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
    metadata: Mapping[str, str] | None = None,
    **create_kwargs: Any,
) -> Path:
    """Convert a ``torch.save`` state dict into a robustlab safetensors checkpoint.

    The source is read with ``torch.load(src, map_location="cpu", weights_only=True)``,
    which refuses arbitrary pickled objects (a file pickling anything but tensors and
    plain containers raises :class:`CheckpointError`). Weights are loaded into
    ``models.create(name, **create_kwargs)``:

    * ``strip`` is removed from the start of every key (``"module."`` from DataParallel);
    * ``prefix`` is then prepended (``"layers."`` for the official MNIST-net checkpoints);
    * keys starting with any of ``ignore`` are dropped (``("sub_block1.",)`` for TRADES
      WideResNets, which store an unused block);
    * the model's Normalize buffers are kept when the source has none.

    ``metadata`` goes to :func:`save_model` (e.g. where the weights came from).
    Returns ``dst``.
    """
    from robustlab.models.registry import create

    src = Path(src)
    if not src.is_file():
        raise CheckpointError(f"no checkpoint file at {src}.")
    state = _torch_load_state(src)
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
    _check_state(model, {k: tuple(v.shape) for k, v in tensors.items()}, src)
    model.load_state_dict(tensors, strict=True)
    return save_model(model, dst, metadata=metadata)


__all__ = [
    "RESERVED_METADATA",
    "convert_checkpoint",
    "file_sha256",
    "load_model",
    "read_header",
    "read_metadata",
    "save_model",
    "tensors_sha256",
    "weights_sha256",
]
