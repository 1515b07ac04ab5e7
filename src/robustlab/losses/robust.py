"""Robust losses for learning with noisy labels: MAE, GCE, RCE, SCE, focal, NCE, NFL, NGCE.

Formulas follow the official implementations; where a paper and its code differ, the
docstring says which one is implemented. ``p = softmax(z)``, ``y`` is the (possibly
noisy) label, ``K = logits.shape[1]`` is inferred from the logits.

Reference code: HanxunH/Active-Passive-Losses, ``loss.py`` (APL; Ma et al. 2020), which
also carries the reference SCE/RCE/GCE/MAE/focal used in that paper's experiments.
"""

from __future__ import annotations

import torch

from robustlab.losses import functional as Fn
from robustlab.losses.base import Loss, losses, param_name
from robustlab.validation import check_bool, check_float


@losses.register("mae", aliases=("mean_absolute_error",))
class MAE(Loss):
    """Mean absolute error ``scale * (1 - p_y)`` (Ghosh, Kumar & Sastry 2017, "Robust Loss
    Functions under Label Noise for Deep Neural Networks", AAAI).

    Ghosh et al. define MAE as ``||e_y - p||_1 = 2 (1 - p_y)``. APL's
    ``MeanAbsoluteError`` (``loss.py``) implements the "reduced" ``1 - p_y`` (its comment
    derives ``2 - 2 p_y`` and drops the factor 2), and APL's NCE+MAE / NFL+MAE / NGCE+MAE
    use that form. The default ``scale=1`` is APL's convention; ``scale=2`` gives Ghosh
    et al.'s ``||e_y - p||_1``. MAE is symmetric: ``sum_k MAE(z, k) = scale * (K - 1)``.
    """

    def __init__(self, scale: float = 1.0, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.scale = check_float(scale, param_name(self, "scale"), low=0.0, low_open=True)

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return Fn.mae(logits, target, self.scale)


@losses.register("gce", aliases=("lq", "generalized_cross_entropy"))
class GCE(Loss):
    """Generalized cross-entropy / ``L_q`` loss (Zhang & Sabuncu 2018, "Generalized Cross
    Entropy Loss for Training Deep Neural Networks with Noisy Labels", NeurIPS, Eq. 6):
    ``L_q = (1 - p_y^q) / q``.

    ``q -> 0`` recovers cross-entropy and ``q = 1`` gives MAE ``1 - p_y``. ``p_y`` is
    clamped to ``[1e-7, 1]`` as in APL's ``GeneralizedCrossEntropy`` (below the clamp the
    loss is constant and its gradient zero). Default ``q = 0.7`` (the paper's choice and
    every APL config).
    """

    def __init__(self, q: float = 0.7, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.q = check_float(q, param_name(self, "q"), low=0.0, high=1.0, low_open=True)

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return Fn.gce(logits, target, self.q)


@losses.register("rce", aliases=("reverse_cross_entropy",))
class RCE(Loss):
    """Reverse cross-entropy (Wang et al. 2019, "Symmetric Cross Entropy for Robust
    Learning with Noisy Labels", ICCV, Sec. 3.2): ``l_rce = -sum_k p_k log q_k`` with the
    label distribution ``q = e_y`` and ``log 0`` replaced by the constant ``A``, so
    ``l_rce = -A (1 - p_y)``.

    The paper's text uses ``A = -4``; every official implementation (the SCE authors' code
    and APL's ``ReverseCrossEntropy``) instead clamps the one-hot label to ``[1e-4, 1]``,
    i.e. ``A = ln(1e-4) ~ -9.21``, which is the default here (parameter ``A``, negative).
    As in that code ``p`` is clamped to ``[1e-7, 1]`` (without renormalising), so exactly
    ``l_rce = -A * scale * sum_{k != y} max(p_k, 1e-7)``. RCE is symmetric away from the
    clamp: ``sum_k l_rce(z, k) = -A (K - 1)``.
    """

    def __init__(self, A: float = Fn.RCE_A, scale: float = 1.0, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.A = check_float(A, param_name(self, "A", Fn.RCE_A_NOTE), high=0.0, high_open=True)
        self.scale = check_float(scale, param_name(self, "scale"), low=0.0, low_open=True)

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return Fn.rce(logits, target, self.A, self.scale)


@losses.register("sce", aliases=("symmetric_cross_entropy",))
class SCE(Loss):
    """Symmetric cross-entropy (Wang et al. 2019, ICCV, Sec. 3.2):
    ``l_sce = alpha * l_ce + beta * l_rce`` with RCE as in :class:`RCE` (``A = ln(1e-4)``,
    ``p`` clamped to ``[1e-7, 1]``) and unclamped cross-entropy, as in APL's ``SCELoss``.

    Defaults ``alpha = 0.1, beta = 1.0`` are the paper's CIFAR-10 values; see
    ``losses.preset("sce", dataset)`` for MNIST (0.01/1), CIFAR-100 (6/0.1) and
    WebVision-mini (10/1).
    """

    def __init__(
        self, alpha: float = 0.1, beta: float = 1.0, A: float = Fn.RCE_A, reduction: str = "mean"
    ) -> None:
        super().__init__(reduction)
        self.alpha = check_float(alpha, param_name(self, "alpha"), low=0.0)
        self.beta = check_float(beta, param_name(self, "beta"), low=0.0)
        self.A = check_float(A, param_name(self, "A", Fn.RCE_A_NOTE), high=0.0, high_open=True)

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.alpha * Fn.cross_entropy(logits, target) + self.beta * Fn.rce(
            logits, target, self.A
        )


@losses.register("focal", aliases=("focal_loss",))
class Focal(Loss):
    """Focal loss (Lin et al. 2017, "Focal Loss for Dense Object Detection", ICCV, Eq. 4):
    ``FL = -(1 - p_y)^gamma log p_y`` (multi-class, without the ``alpha_t`` class weights).

    ``gamma = 0`` is cross-entropy. Default ``gamma = 2`` (the paper's choice and its
    official Detectron code); APL's configs use ``gamma = 0.5`` (``losses.preset("focal",
    ...)``). ``detach=True`` stops the gradient of the modulating factor ``(1 - p_y)^gamma``
    as APL's ``FocalLoss`` does (``pt = Variable(logpt.data.exp())``): the gradient is then
    ``(1 - p_y)^gamma (p - e_y)``. The default ``detach=False`` is the paper's loss.
    """

    def __init__(self, gamma: float = 2.0, detach: bool = False, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.gamma = check_float(gamma, param_name(self, "gamma"), low=0.0)
        self.detach = check_bool(detach, param_name(self, "detach"))

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return Fn.focal(logits, target, self.gamma, self.detach)


@losses.register("nce", aliases=("normalized_cross_entropy",))
class NCE(Loss):
    """Normalized cross-entropy (Ma et al. 2020, "Normalized Loss Functions for Deep
    Learning with Noisy Labels", ICML, Sec. 3): ``NCE = -log p_y / sum_k (-log p_k)``.

    Any loss normalised this way is symmetric: ``sum_k NCE(z, k) = 1``. ``scale``
    multiplies the loss (APL's ``NormalizedCrossEntropy(scale=...)``), default 1.
    """

    def __init__(self, scale: float = 1.0, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.scale = check_float(scale, param_name(self, "scale"), low=0.0, low_open=True)

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return Fn.nce(logits, target, self.scale)


@losses.register("nfl", aliases=("normalized_focal",))
class NFL(Loss):
    """Normalized focal loss (Ma et al. 2020, ICML, Sec. 3):
    ``NFL = (1 - p_y)^gamma log p_y / sum_k (1 - p_k)^gamma log p_k``.

    ``detach=True`` (default) reproduces APL's ``NormalizedFocalLoss``: the modulating
    factors ``(1 - p_k)^gamma`` are taken from ``logpt.data`` in both the numerator and the
    denominator, so they are constants for autograd while every ``log p_k`` keeps its
    gradient (the denominator is therefore *not* fully detached). ``detach=False`` gives
    the exact gradient of the formula. The value does not depend on ``detach``. Default
    ``gamma = 0.5`` (APL's ``NFLandRCE``/``NFLandMAE`` default and every APL config);
    ``sum_k NFL(z, k) = scale``.
    """

    def __init__(
        self, gamma: float = 0.5, detach: bool = True, scale: float = 1.0, reduction: str = "mean"
    ) -> None:
        super().__init__(reduction)
        self.gamma = check_float(gamma, param_name(self, "gamma"), low=0.0)
        self.detach = check_bool(detach, param_name(self, "detach"))
        self.scale = check_float(scale, param_name(self, "scale"), low=0.0, low_open=True)

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return Fn.nfl(logits, target, self.gamma, self.detach, self.scale)


@losses.register("ngce", aliases=("normalized_gce",))
class NGCE(Loss):
    """Normalized generalized cross-entropy (Ma et al. 2020, ICML, Sec. 3, the normalised
    form of GCE; reference code APL ``NormalizedGeneralizedCrossEntropy``):
    ``NGCE = [(1 - p_y^q)/q] / sum_k [(1 - p_k^q)/q] = (1 - p_y^q) / (K - sum_k p_k^q)``.

    ``p`` is clamped to ``[1e-7, 1]`` as in the reference code. Default ``q = 0.7`` (APL's
    class default; its CIFAR-10/MNIST configs use ``q = 0.1``, see the presets).
    """

    def __init__(self, q: float = 0.7, scale: float = 1.0, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.q = check_float(q, param_name(self, "q"), low=0.0, high=1.0, low_open=True)
        self.scale = check_float(scale, param_name(self, "scale"), low=0.0, low_open=True)

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return Fn.ngce(logits, target, self.q, self.scale)


__all__ = ["GCE", "MAE", "NCE", "NFL", "NGCE", "RCE", "SCE", "Focal"]
