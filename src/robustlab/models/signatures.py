"""Robust weight signatures: robustness as a weight difference that patches other models.

R. Cai, Z. Zhang, Z. Wang. "Robust Weight Signatures: Gaining Robustness as Easy as
Patching Weights?" ICML 2023 (arXiv:2302.12480). Official code:
github.com/VITA-Group/Robust_Weight_Signatures (``model_patching.py``, ``tools.py``).

The paper finds that a model trained on corrupted data and its clean counterpart (both
fine-tuned from one pre-trained model) differ mostly in their *shallow* layers, and that this
difference, the robust weight signature (RWS), can be added to another clean model of the
same architecture to give it the robustness::

    RWS = theta_robust[shallow] - theta_base[shallow]
    theta_patched = theta_other + alpha * RWS          (shallow layers only)

>>> from robustlab.models.signatures import apply_signature, extract_signature
>>> sig = extract_signature(robust_net, clean_net, layers=2)      # doctest: +SKIP
>>> patched = apply_signature(other_clean_net, sig, alpha=1.0)    # doctest: +SKIP

``layers``: the number ``k`` of shallowest weight layers (``nn.Conv2d``/``nn.Linear`` in
model order) whose parameters form the signature, together with the normalisation layers
(BatchNorm/GroupNorm/LayerNorm affine parameters) that come before the ``k+1``-th weight
layer; or explicit module names. Default: the shallowest half of the weight layers, rounded
up (the official default ``--keep_num 7`` keeps 7 of VGG-16's 13 conv layers).

Deviations from the official code, and why:

- the official signature is the robust model's difference from the shared *pre-trained*
  weights, with the component along the clean model's own difference projected out
  (``tools.get_projection``), and the BatchNorm parameters of the robust models are copied
  (averaged) rather than added. Here the signature is ``theta_robust - theta_base`` directly
  (the task's definition; it equals the official one when ``base`` is the pre-trained model
  the robust one was fine-tuned from, up to the projection) and normalisation parameters are
  patched by the same arithmetic as weights;
- running statistics (BatchNorm buffers) are not part of the signature (the official ResNet
  selection also leaves them out, and re-estimates them on corrupted data);
- ``alpha`` is restricted to ``[0, 1]`` (0: unchanged, 1: the full signature), the range of
  the paper's rescaling experiments; several signatures compose by applying them in turn
  (the official code averages them with weights ``alpha / n``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from robustlab.errors import ConfigError, ShapeMismatchError
from robustlab.validation import check_float, check_int

_WEIGHT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_NORM_LAYERS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm)


class SignatureMismatchError(ShapeMismatchError):
    """A signature applied to a model it does not fit (another architecture): the message
    names the first layer that is missing or has another shape."""


@dataclass(frozen=True)
class Signature:
    """``deltas``: parameter name -> ``theta_robust - theta_base`` (CPU tensors);
    ``modules``: the module names they belong to (shallowest first); ``architecture``: the
    ``robustlab_config`` name of the models it came from (``None`` for other modules)."""

    deltas: dict[str, torch.Tensor]
    modules: tuple[str, ...]
    architecture: str | None

    @property
    def num_parameters(self) -> int:
        """How many numbers the signature stores."""
        return sum(t.numel() for t in self.deltas.values())

    def norm(self) -> float:
        """Euclidean norm of all deltas together."""
        return float(sum(float((t.double() ** 2).sum()) for t in self.deltas.values())) ** 0.5


def weight_layers(model: nn.Module) -> list[str]:
    """Names of the model's weight layers (``nn.Conv*``, ``nn.Linear``), shallowest first."""
    return [n for n, m in model.named_modules() if isinstance(m, _WEIGHT_LAYERS) and n]


def shallow_modules(model: nn.Module, layers: int | None = None) -> list[str]:
    """The ``layers`` shallowest weight layers plus the normalisation layers before the next
    one (default: half the weight layers, rounded up)."""
    weights = weight_layers(model)
    if not weights:
        raise ConfigError(f"{type(model).__name__} has no Conv/Linear layer to take a signature of.")
    k = (len(weights) + 1) // 2 if layers is None else check_int(layers, "layers", minimum=1, maximum=len(weights))
    out, seen = [], 0
    for name, m in model.named_modules():
        if not name:
            continue
        if isinstance(m, _WEIGHT_LAYERS):
            if seen == k:
                break
            seen += 1
            out.append(name)
        elif isinstance(m, _NORM_LAYERS) and seen > 0 and any(p is not None for p in m.parameters(recurse=False)):
            out.append(name)
    return out


def _arch(model: nn.Module) -> str | None:
    cfg = getattr(model, "robustlab_config", None)
    return cfg.get("name") if isinstance(cfg, dict) else None


def _module_params(model: nn.Module, modules: Sequence[str]) -> dict[str, torch.Tensor]:
    known = dict(model.named_modules())
    out: dict[str, torch.Tensor] = {}
    for name in modules:
        if name not in known:
            raise SignatureMismatchError(f"the model has no layer {name!r}; its weight layers are {weight_layers(model)}.")
        for pname, p in known[name].named_parameters(recurse=False):
            out[f"{name}.{pname}"] = p
    return out


def extract_signature(robust: nn.Module, base: nn.Module, layers: int | Sequence[str] | None = None) -> Signature:
    """``theta_robust - theta_base`` over the shallow layers (see the module docstring).

    ``robust`` and ``base`` must have the same architecture; a layer that one lacks or that
    differs in shape raises :class:`SignatureMismatchError` naming it."""
    if isinstance(layers, str):
        layers = [layers]
    modules = shallow_modules(base, layers) if layers is None or isinstance(layers, int) else list(layers)
    if not modules:
        raise ConfigError("name at least one layer for the signature.")
    b = _module_params(base, modules)
    r = _module_params(robust, modules)
    deltas = {}
    for name, pb in b.items():
        if name not in r or r[name].shape != pb.shape:
            got = "missing" if name not in r else f"shape {tuple(r[name].shape)}"
            raise SignatureMismatchError(
                f"the robust and base models differ at layer {name!r} (base: shape {tuple(pb.shape)}, robust: {got}); "
                f"a signature needs two models of one architecture."
            )
        deltas[name] = (r[name].detach() - pb.detach()).to("cpu").clone()
    return Signature(deltas=deltas, modules=tuple(modules), architecture=_arch(base))


def apply_signature(model: nn.Module, signature: Signature, alpha: float = 1.0, *, inplace: bool = False) -> nn.Module:
    """``model`` with ``alpha * signature`` added to its shallow layers: a patched copy (or
    ``model`` itself with ``inplace=True``). ``alpha`` in ``[0, 1]``.

    Every layer of the signature must exist in ``model`` with the same shape, else
    :class:`SignatureMismatchError` names the first one that does not (a signature of another
    architecture)."""
    alpha = check_float(alpha, "alpha (the fraction of the signature to add, 0 to 1)", low=0.0, high=1.0)
    if not isinstance(signature, Signature):
        raise ConfigError(f"expected a Signature from extract_signature, got {type(signature).__name__}.")
    params = dict(model.named_parameters())
    for name, d in signature.deltas.items():
        if name not in params:
            arch = _arch(model)
            raise SignatureMismatchError(
                f"the signature patches layer {name!r}, which the model "
                f"({arch or type(model).__name__}) does not have; the signature was taken from "
                f"{signature.architecture or 'another model'}. Apply it to a model of the same architecture."
            )
        if tuple(params[name].shape) != tuple(d.shape):
            raise SignatureMismatchError(
                f"the signature's layer {name!r} has shape {tuple(d.shape)} but the model's has "
                f"{tuple(params[name].shape)}; the signature was taken from another architecture "
                f"({signature.architecture or 'unknown'}). Apply it to a model of the same architecture."
            )
    target = model if inplace else copy.deepcopy(model)
    tparams = dict(target.named_parameters())
    with torch.no_grad():
        for name, d in signature.deltas.items():
            p = tparams[name]
            p.add_(d.to(device=p.device, dtype=p.dtype), alpha=alpha)
    return target


__all__ = [
    "Signature",
    "SignatureMismatchError",
    "apply_signature",
    "extract_signature",
    "shallow_modules",
    "weight_layers",
]
