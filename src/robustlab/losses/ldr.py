"""Label distributionally robust losses: LDR-KL and adaptive ALDR-KL.

Zhu, Ying & Yang, "Label Distributionally Robust Losses for Multi-class Classification:
Consistency, Robustness and Adaptivity", ICML 2023. Official code:
Optimization-AI/ICML2023_LDR, ``loss.py`` (``LDRLoss_V1``, ``ALDRLoss_V1``) and
``experiment.py`` (the settings used in the paper's runs).

LDR-KL takes the worst case over label distributions ``p`` in the simplex with a KL
penalty towards the uniform distribution:

    ``L_lam(z, y) = max_p sum_k p_k (z_k - z_y + c [k != y]) - lam KL(p, 1/K)
                 = lam log( (1/K) sum_k exp((z_k - z_y + c [k != y]) / lam) )``

with margin ``c``. With ``lam = 1``, ``c = 0`` and raw logits it is cross-entropy minus
``log K``; ``lam -> 0`` gives the Crammer-Singer-type ``max_k (z_k - z_y + c [k != y])``
and ``lam -> inf`` the mean of the margins.

Both official losses first transform the logits: optional ``softplus`` and a division by
``||z||_1 / K`` (``normalize``). ``LDRLoss_V1`` always applies both; ``ALDRLoss_V1``
always normalises and applies softplus only when asked (the paper's CIFAR-100 runs).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from robustlab.losses import functional as Fn
from robustlab.losses.base import Loss, StatefulLoss, losses, param_name
from robustlab.validation import check_bool, check_float


@losses.register("ldr-kl", aliases=("ldr_kl", "ldr"))
class LDRKL(Loss):
    """LDR-KL loss (Zhu, Ying & Yang 2023; official ``LDRLoss_V1``).

    ``lam * log((1/K) sum_k exp((z~_k - z~_y + margin [k != y]) / lam))`` where ``z~``
    are the logits after ``softplus`` (if ``softplus``) and division by ``||z||_1 / K``
    (if ``normalize``).

    Defaults from the official code: ``softplus=True, normalize=True`` (``LDRLoss_V1``
    always does both), ``lam = 10`` and ``margin = 0.1`` (the values ``experiment.py``
    runs with: ``parameter_set = [10]`` and ``--margin`` default 0.1; the class's own
    defaults ``Lambda=1, threshold=2`` are overridden there).
    """

    def __init__(
        self,
        lam: float = 10.0,
        margin: float = 0.1,
        normalize: bool = True,
        softplus: bool = True,
        reduction: str = "mean",
    ) -> None:
        super().__init__(reduction)
        self.lam = check_float(lam, param_name(self, "lam"), low=0.0, low_open=True)
        self.margin = check_float(margin, param_name(self, "margin"), low=0.0)
        self.normalize = check_bool(normalize, param_name(self, "normalize"))
        self.softplus = check_bool(softplus, param_name(self, "softplus"))

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        z = Fn.ldr_logits(logits, self.softplus, self.normalize)
        return Fn.ldr_kl(z, target, self.lam, self.margin)


@losses.register("aldr-kl", aliases=("aldr_kl", "aldr"))
class ALDRKL(StatefulLoss):
    """Adaptive LDR-KL with a per-sample ``lambda`` (Zhu, Ying & Yang 2023; official ``ALDRLoss_V1``).

    ALDR-KL also maximises over ``lam`` with a quadratic penalty around ``lam0``:
    ``max_{p, lam} sum_k p_k d_k - lam KL(p, 1/K) - alpha log K / (2 lam0) (lam - lam0)^2``
    (``d_k = z~_k - z~_y + margin [k != y]``). The official code keeps one ``lam_i`` per
    training sample (initialised to ``lam0``) and on every visit of sample ``i`` does one
    alternating step, which this class reproduces:

    1. ``z~``: logits after optional softplus and division by ``||z||_1 / K``;
    2. ``p = normalize_1(softmax(z~ / lam_i) + 1e-5)`` with the *stored* ``lam_i`` (no
       margin, as in the official code), ``kl = sum_k p_k log(K p_k)``;
    3. ``lam_i <- lam0 - lam0 * kl / (alpha log K)`` (the maximiser over ``lam`` for this
       ``p``; no gradient), stored;
    4. loss ``lam_i * log((1/K) sum_k exp(d_k / lam_i)) - alpha log K / (2 lam0) (lam_i - lam0)^2``
       (the second term is constant for autograd).

    Since ``0 <= kl < log K``, ``lam_i`` stays in ``(lam0 (1 - 1/alpha), lam0]``; the code
    comment requires ``alpha > 1``, which is enforced here. The state is stored in float32
    (as in the official code) and the loss uses the stored value.

    Defaults from the official runs (``experiment.py``/README): ``lam0 = 10``,
    ``alpha = 2``, ``margin = 0.1``, ``normalize = True``, ``softplus = False`` (the
    official runs switch softplus on for CIFAR-100 only; see ``losses.preset``).

    Needs dataset indices: ``loss(logits, target, index)`` (see
    :mod:`robustlab.losses.base`); ``setup(num_samples, num_classes)`` pre-allocates
    ``lam`` (otherwise it grows lazily).
    """

    per_sample_state: ClassVar[dict[str, tuple[float, torch.dtype]]] = {"lam": (0.0, torch.float32)}
    lam: torch.Tensor  # per-sample lambda (buffer)

    def __init__(
        self,
        lam0: float = 10.0,
        alpha: float = 2.0,
        margin: float = 0.1,
        normalize: bool = True,
        softplus: bool = False,
        reduction: str = "mean",
    ) -> None:
        super().__init__(reduction)
        self.lam0 = check_float(lam0, param_name(self, "lam0"), low=0.0, low_open=True)
        self.alpha = check_float(
            alpha,
            param_name(self, "alpha", "> 1 keeps every per-sample lambda positive"),
            low=1.0,
            low_open=True,
        )
        self.margin = check_float(margin, param_name(self, "margin"), low=0.0)
        self.normalize = check_bool(normalize, param_name(self, "normalize"))
        self.softplus = check_bool(softplus, param_name(self, "softplus"))

    def _fill(self, name: str) -> float:
        return self.lam0

    def loss_at_lambda(
        self, logits: torch.Tensor, target: torch.Tensor, lam: torch.Tensor
    ) -> torch.Tensor:
        """Per-sample ALDR-KL value (steps 1 and 4) for given per-sample ``lam`` (held fixed)."""
        z = Fn.ldr_logits(logits, self.softplus, self.normalize)
        lam = lam.to(z.dtype)
        return Fn.ldr_kl(z, target, lam, self.margin) + Fn.aldr_penalty(
            lam, self.lam0, self.alpha, logits.shape[1]
        )

    def per_sample(  # type: ignore[override]
        self, logits: torch.Tensor, target: torch.Tensor, index: torch.Tensor
    ) -> torch.Tensor:
        index = self._ensure_state(logits, index)
        z = Fn.ldr_logits(logits.detach(), self.softplus, self.normalize)
        lam_prev = self.lam[index].to(z.dtype)
        self.lam[index] = Fn.aldr_lambda(z, lam_prev, self.lam0, self.alpha).to(self.lam.dtype)
        return self.loss_at_lambda(logits, target, self.lam[index])


__all__ = ["ALDRKL", "LDRKL"]
