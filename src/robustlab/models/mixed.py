"""Mixed classifiers: adaptive smoothing of a standard and a robust model.

Y. Bai, B. G. Anderson, A. Kim, S. Sojoudi. "Improving the Accuracy-Robustness Trade-Off
of Classifiers via Adaptive Smoothing." SIAM Journal on Mathematics of Data Science 2024
(arXiv:2301.12554). Official code: github.com/Bai-YT/AdaptiveSmoothing
(``models/comp_model.py``, ``adaptive_smoothing/losses.py``, ``configs/*.yaml``).

The mixed classifier (the paper's Eq. (2), its "composite model") outputs

    h(x) = log( (1 - alpha(x)) * softmax(s_std * g(x)) + alpha(x) * softmax(s_rob * r(x)) )

for a standard (accurate) classifier ``g`` and a robust classifier ``r``, both frozen.
``alpha`` is either one fixed number in ``[0, 1]`` (the paper's Sec. 4, fixed smoothing)
or ``alpha(x) = alpha_min + (alpha_max - alpha_min) * sigmoid(gamma(x))`` from a small
mixing network ``gamma`` that reads both base models' features (Sec. 5, adaptive
smoothing); the mixing network is the only trainable part (objective ``"mixing"`` in
:mod:`robustlab.train.mixing`). The output is a vector of log-probabilities, so every
attack treats it as logits and attacks the composite end to end, mixing network included
(the official ``policy_graph=True``: no gradient is stopped).

>>> from robustlab import models
>>> from robustlab.models.mixed import mix
>>> net = mix(standard_net, robust_net, alpha=0.5)        # doctest: +SKIP
>>> adaptive = mix(standard_net, robust_net, alpha=None)  # a mixing network to train  # doctest: +SKIP

Official defaults kept: logit scales ``s_std = s_rob = 1`` (``std_model_scale``,
``rob_model_scale``); base models in eval mode with ``requires_grad=False``.

Deviations from the official code, and why:

- **features**: the official mixing ("policy") network is a stack of pre-activation
  ResNet blocks over both models' *intermediate* convolutional feature maps, which ties it to
  ResNet/WRN layouts. Here it is an MLP over both models' *penultimate* features (the input
  of each base model's last ``nn.Linear``, captured with a forward pre-hook), so that any
  zoo model can be mixed; ``mixer_hidden`` sets its width.
- **alpha range**: the official code passes ``gamma`` through a non-affine BatchNorm and a
  train/eval-specific scale and bias, and squeezes ``alpha`` into ``(0.2, 0.95)`` at eval
  (``alpha_bias``, ``alpha_scale``). Here ``alpha = alpha_min + (alpha_max - alpha_min) *
  sigmoid(gamma)`` in both modes, with ``alpha_min=0, alpha_max=1`` by default (set them
  to 0.2 and 0.95 for the official range); no BatchNorm on ``gamma``.
- **special cases**: ``alpha=0`` returns ``log_softmax(s_std * g(x))`` and ``alpha=1``
  returns ``log_softmax(s_rob * r(x))`` *exactly* (the mixture is computed as a
  ``logaddexp`` of log-weighted log-probabilities, which is exact at the ends), and only the
  base model that matters is run, as in the official ``gamma = -inf / +inf`` cases.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.errors import ConfigError, ShapeMismatchError
from robustlab.models.layers import INPUT_BOUNDS
from robustlab.models.registry import create, models
from robustlab.validation import check_float, check_int

#: the official composite-loss constants (configs/cifar10_at_apgd.yaml, ``comp_loss_params``)
OFFICIAL_LOSS = {"bce": 1.0, "ce": 0.5, "prod": 0.1, "scale_clean": 2.0, "scale_adv": 1.0}


def check_alpha(alpha: Any, name: str = "alpha") -> float:
    """A mixing weight in ``[0, 1]`` (else :class:`ConfigError` saying so)."""
    return check_float(alpha, f"{name} (the weight of the robust model, 0 = standard only, 1 = robust only)",
                       low=0.0, high=1.0)


def _config(value: Any, which: str) -> dict[str, Any]:
    if not (isinstance(value, Mapping) and isinstance(value.get("name"), str)
            and isinstance(value.get("params"), Mapping)):
        raise ConfigError(
            f"mixed: {which} must be a zoo model's robustlab_config, a mapping "
            f"{{'name': ..., 'params': {{...}}}}, got {value!r}. Build the mixed model from two "
            f"trained zoo models with robustlab.models.mixed.mix(standard, robust, alpha=...)."
        )
    return {"name": value["name"], "params": dict(value["params"])}


def _last_linear(model: nn.Module, which: str) -> nn.Linear:
    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last = m
    if last is None:
        raise ConfigError(
            f"mixed: the {which} model has no nn.Linear layer, so its penultimate features cannot "
            f"be read for the mixing network; use a fixed alpha instead."
        )
    return last


@models.register("mixed", aliases=("adaptive-smoothing",))
class MixedClassifier(nn.Module):
    """``log((1 - alpha) softmax(s_std g(x)) + alpha softmax(s_rob r(x)))`` of two frozen models.

    Parameters
    ----------
    num_classes, in_channels, input_size:
        As for every zoo model; both base models must have them.
    mean, std:
        Accepted for the zoo's common signature and unused: each base model carries its
        own input normalisation.
    standard, robust:
        The base models' ``robustlab_config`` (``{"name": ..., "params": {...}}``); they
        are rebuilt through the registry, so a saved mixed model reloads with
        :func:`robustlab.models.load_model`. :func:`mix` fills them and copies the weights.
    alpha:
        The fixed weight of the robust model in ``[0, 1]``, or ``None`` for a mixing
        network ``alpha(x)`` (default 0.5).
    mixer_hidden:
        Width of the mixing network's hidden layer (``Linear(d_std + d_rob, h) -> ReLU ->
        Linear(h, 1)``), default 64; only used with ``alpha=None``.
    alpha_min, alpha_max:
        Range of the mixing network's ``alpha(x)``, default ``[0, 1]`` (official eval
        range: ``[0.2, 0.95]``).
    standard_scale, robust_scale:
        Logit scales ``s_std``, ``s_rob`` (official default 1).
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        input_size: tuple[int, int] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        standard: Mapping[str, Any] | None = None,
        robust: Mapping[str, Any] | None = None,
        alpha: float | None = 0.5,
        mixer_hidden: int = 64,
        alpha_min: float = 0.0,
        alpha_max: float = 1.0,
        standard_scale: float = 1.0,
        robust_scale: float = 1.0,
    ) -> None:
        super().__init__()
        del mean, std  # each base model normalises its own input
        std_cfg, rob_cfg = _config(standard, "standard"), _config(robust, "robust")
        self.alpha = None if alpha is None else check_alpha(alpha)
        self.alpha_min = check_alpha(alpha_min, "alpha_min")
        self.alpha_max = check_alpha(alpha_max, "alpha_max")
        if self.alpha_max < self.alpha_min:
            raise ConfigError(f"mixed: alpha_max ({alpha_max}) must be >= alpha_min ({alpha_min}).")
        self.standard_scale = check_float(standard_scale, "standard_scale", low=0.0, low_open=True)
        self.robust_scale = check_float(robust_scale, "robust_scale", low=0.0, low_open=True)
        # the device that ``models.create(..., device=)`` (or load_model's meta-device shape
        # check) builds us on; the base models' parameters are parsed on the CPU and built there
        here = torch.empty(0).device
        with torch.device("cpu"):
            self.standard = create(std_cfg["name"], device=here, **std_cfg["params"])
            self.robust = create(rob_cfg["name"], device=here, **rob_cfg["params"])
        for which, m in (("standard", self.standard), ("robust", self.robust)):
            if int(getattr(m, "num_classes", -1)) != int(num_classes):
                raise ShapeMismatchError(
                    f"mixed: the {which} model has {getattr(m, 'num_classes', '?')} classes but the "
                    f"mixed model {num_classes}; mix models of the same task."
                )
            for p in m.parameters():
                p.requires_grad_(False)
            m.eval()
        self._features: dict[str, torch.Tensor] = {}
        self.mixer: nn.Module | None = None
        if self.alpha is None:
            hidden = check_int(mixer_hidden, "mixer_hidden", minimum=1)
            dims = []
            for which, m in (("standard", self.standard), ("robust", self.robust)):
                layer = _last_linear(m, which)
                # bound methods (not closures), so that copy.deepcopy rebinds them to the copy
                layer.register_forward_pre_hook(
                    self._capture_standard if which == "standard" else self._capture_robust)
                dims.append(layer.in_features)
            self.mixer = nn.Sequential(nn.Linear(sum(dims), hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.num_classes = int(num_classes)
        self.input_shape: tuple[int, ...] = (
            (int(in_channels),) if input_size is None else (int(in_channels), *map(int, input_size))
        )
        self.input_bounds = INPUT_BOUNDS

    def _capture_standard(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        self._features["standard"] = args[0]

    def _capture_robust(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        self._features["robust"] = args[0]

    def train(self, mode: bool = True) -> MixedClassifier:
        """Train mode for the mixing network only: the base models stay in eval mode (frozen
        BatchNorm statistics and no dropout), as in the official ``CompositeModel.train``."""
        super().train(mode)
        self.standard.eval()
        self.robust.eval()
        return self

    def gamma(self, x: torch.Tensor) -> torch.Tensor:
        """The mixing network's logit ``gamma(x)``, shape ``(N,)`` (runs both base models)."""
        return self.mix(x)[1]

    def mixing_weight(self, x: torch.Tensor) -> torch.Tensor:
        """``alpha(x)`` per sample, shape ``(N,)``: the fixed alpha or the mixing network's."""
        if self.alpha is not None:
            return torch.full((len(x),), self.alpha, device=x.device)
        g = self.gamma(x)
        return self.alpha_min + (self.alpha_max - self.alpha_min) * torch.sigmoid(g)

    def mix(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log-probabilities (N, K), gamma (N,))``; gamma is ``-inf``/``+inf``/``logit(alpha)``
        for a fixed alpha (the official ``CompositeModel.forward`` returns the same pair)."""
        n = len(x)
        if self.alpha is not None:
            a = self.alpha
            fill = -math.inf if a == 0 else (math.inf if a == 1 else math.log(a / (1 - a)))
            gamma = torch.full((n,), fill, device=x.device)
            if a == 0:
                return F.log_softmax(self.standard(x) * self.standard_scale, dim=1), gamma
            if a == 1:
                return F.log_softmax(self.robust(x) * self.robust_scale, dim=1), gamma
            log_a = torch.full((n, 1), math.log(a), device=x.device)
            log_1ma = torch.full((n, 1), math.log1p(-a), device=x.device)
        self._features.clear()
        log_std = F.log_softmax(self.standard(x) * self.standard_scale, dim=1)
        log_rob = F.log_softmax(self.robust(x) * self.robust_scale, dim=1)
        if self.alpha is None:
            assert self.mixer is not None
            feats = torch.cat([self._features["standard"].flatten(1), self._features["robust"].flatten(1)], dim=1)
            self._features.clear()
            gamma = self.mixer(feats).reshape(-1)
            lo, hi = self.alpha_min, self.alpha_max
            alpha = (lo + (hi - lo) * torch.sigmoid(gamma)).unsqueeze(1)
            if lo == 0.0 and hi == 1.0:  # stable logs of sigmoid(gamma) and 1 - sigmoid(gamma)
                log_a = F.logsigmoid(gamma).unsqueeze(1)
                log_1ma = F.logsigmoid(-gamma).unsqueeze(1)
            else:
                log_a = torch.log(alpha.clamp_min(1e-30))
                log_1ma = torch.log1p(-alpha.clamp_max(1 - 1e-7))
        return torch.logaddexp(log_1ma + log_std, log_a + log_rob), gamma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(x)[0]


def mix(
    standard: nn.Module,
    robust: nn.Module,
    *,
    alpha: float | None = 0.5,
    mixer_hidden: int = 64,
    alpha_min: float = 0.0,
    alpha_max: float = 1.0,
    standard_scale: float = 1.0,
    robust_scale: float = 1.0,
) -> MixedClassifier:
    """The mixed classifier of two trained zoo models (their weights are copied; the
    originals are not changed). Both must have the same ``num_classes`` and
    ``input_shape`` and a ``robustlab_config`` (models built by ``models.create``)."""
    for which, m in (("standard", standard), ("robust", robust)):
        if not isinstance(getattr(m, "robustlab_config", None), Mapping):
            raise ConfigError(
                f"mix: the {which} model has no robustlab_config; build it with "
                f"robustlab.models.create (or load it with load_model) so the mixed model can be saved."
            )
    if tuple(standard.input_shape) != tuple(robust.input_shape):  # type: ignore[arg-type]
        raise ShapeMismatchError(
            f"mix: the standard model takes inputs {tuple(standard.input_shape)} but the robust "  # type: ignore[arg-type]
            f"model {tuple(robust.input_shape)}; mix models of the same data."  # type: ignore[arg-type]
        )
    shape = tuple(int(s) for s in getattr(standard, "input_shape"))  # noqa: B009
    in_channels, size = shape[0], (None if len(shape) == 1 else (shape[1], shape[2]))
    net = create(
        "mixed", num_classes=int(standard.num_classes), in_channels=in_channels,  # type: ignore[arg-type]
        input_size=size, standard=copy.deepcopy(standard.robustlab_config),  # type: ignore[arg-type]
        robust=copy.deepcopy(robust.robustlab_config), alpha=alpha, mixer_hidden=mixer_hidden,
        alpha_min=alpha_min, alpha_max=alpha_max, standard_scale=standard_scale, robust_scale=robust_scale,
    )
    assert isinstance(net, MixedClassifier)
    dev = next(iter(standard.parameters())).device
    net.standard.load_state_dict(standard.state_dict())
    net.robust.load_state_dict(robust.state_dict())
    return net.to(dev).eval()  # type: ignore[return-value]


__all__ = ["OFFICIAL_LOSS", "MixedClassifier", "check_alpha", "mix"]
