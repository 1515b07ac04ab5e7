"""Training the mixing network of a mixed classifier (adaptive smoothing, Bai et al.).

Y. Bai, B. G. Anderson, A. Kim, S. Sojoudi. "Improving the Accuracy-Robustness Trade-Off
of Classifiers via Adaptive Smoothing." SIMODS 2024 (arXiv:2301.12554), Sec. 5.2; official
code github.com/Bai-YT/AdaptiveSmoothing, ``adaptive_smoothing/losses.py:CompLoss`` and
``adaptive_smoothing/trainer.py:get_data_buffer``.

>>> from robustlab import train
>>> from robustlab.models.mixed import mix
>>> from robustlab.train.mixing import MixingObjective
>>> net = mix(standard_net, robust_net, alpha=None)
>>> train.Trainer(net, MixingObjective(eps=0.1), epochs=2, optimizer="adamw", lr=1e-3).fit(train_set)

Only the mixing network learns (the base models' parameters have ``requires_grad=False`` and
the Trainer optimises trainable parameters only; :class:`~robustlab.models.mixed.MixedClassifier`
keeps them in eval mode).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.errors import ConfigError
from robustlab.models.mixed import OFFICIAL_LOSS, MixedClassifier
from robustlab.train.adversarial.base import AdversarialObjective, make_attack, relative_step
from robustlab.train.objectives import accuracy_metric, objectives
from robustlab.validation import check_float, check_int


@objectives.register("mixing", aliases=("adaptive-smoothing",))
class MixingObjective(AdversarialObjective):
    """The composite loss of adaptive smoothing on clean and adversarial inputs.

    For each clean point ``x`` (supervision label ``s = 0``: the standard model should
    decide) and its adversarial ``x'`` found by PGD against the *composite* model
    (``s = 1``: the robust model should decide), with ``gamma`` the mixing network's logit
    and ``h`` the mixed log-probabilities (official ``CompLoss``)::

        l(x, s) = c_bce * BCE(gamma(x), s) + c_ce * CE(h(x), y) + c_prod * BCE * CE

    and the per-sample loss is ``scale_clean * l(x, 0) + scale_adv * l(x', 1)``.

    Defaults from the official ``configs/cifar10_at_apgd.yaml``: ``c_bce=1, c_ce=0.5,
    c_prod=0.1``, ``scale_clean=2, scale_adv=1``; AdamW, lr 1e-4, weight decay 1e-5 there
    (pass them to the Trainer). Deviations: the official adversary is a randomised APGD
    (random eps and momentum per batch, 75 iterations, 9 targeted copies) on 5x buffers of
    data; here it is one PGD (``steps`` steps of ``eps/4``, random start, cross-entropy on
    the composite) per batch, to keep training cheap; no pre-attacked data set.
    """

    def __init__(
        self,
        *,
        norm: str = "linf",
        eps: float | str = 8 / 255,
        steps: int = 10,
        rel_step_size: float | None = None,
        c_bce: float = OFFICIAL_LOSS["bce"],
        c_ce: float = OFFICIAL_LOSS["ce"],
        c_prod: float = OFFICIAL_LOSS["prod"],
        scale_clean: float = OFFICIAL_LOSS["scale_clean"],
        scale_adv: float = OFFICIAL_LOSS["scale_adv"],
    ) -> None:
        super().__init__(loss="ce", norm=norm, eps=eps, bn_mode="eval")
        self.steps = check_int(steps, "steps", minimum=1)
        self.rel_step = relative_step(None, rel_step_size, self.threat.eps, 0.25)
        self.c_bce = check_float(c_bce, "c_bce", low=0.0)
        self.c_ce = check_float(c_ce, "c_ce", low=0.0)
        self.c_prod = check_float(c_prod, "c_prod", low=0.0)
        self.scale_clean = check_float(scale_clean, "scale_clean", low=0.0)
        self.scale_adv = check_float(scale_adv, "scale_adv", low=0.0)
        self.attack = make_attack("pgd", steps=self.steps, rel_step_size=self.rel_step, random_start=True, loss="ce")
        self._record_params(locals())

    def _composite(self, model: MixedClassifier, x: torch.Tensor, y: torch.Tensor, s: float) -> tuple[torch.Tensor, torch.Tensor]:
        log_probs, gamma = model.mix(x)
        ce = F.nll_loss(log_probs, y, reduction="none")
        bce = F.binary_cross_entropy_with_logits(gamma, torch.full_like(gamma, s), reduction="none")
        return self.c_bce * bce + self.c_ce * ce + self.c_prod * bce * ce, log_probs

    def outer(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor,
              index: torch.Tensor | None, *, metrics: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if not isinstance(model, MixedClassifier) or model.mixer is None:
            raise ConfigError(
                "the 'mixing' objective trains the mixing network of a mixed classifier: build the "
                "model with robustlab.models.mixed.mix(standard, robust, alpha=None)."
            )
        clean, lp_clean = self._composite(model, x, y, 0.0)
        adv, lp_adv = self._composite(model, x_adv, y, 1.0)
        per = self.scale_clean * clean + self.scale_adv * adv
        return per, {"accuracy": accuracy_metric(lp_clean, y), "adv_accuracy": accuracy_metric(lp_adv, y)}

    def get_params(self) -> dict[str, Any]:
        params: Mapping[str, Any] = super().get_params()
        return {k: v for k, v in params.items() if k != "loss"}


__all__ = ["MixingObjective"]
