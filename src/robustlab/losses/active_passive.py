"""Active-passive losses (APL): ``alpha * active + beta * passive``.

Ma et al. 2020, "Normalized Loss Functions for Deep Learning with Noisy Labels", ICML,
Sec. 4: a robust *active* loss (normalised: NCE, NFL, NGCE), which only raises ``p_y``,
is paired with a robust *passive* loss (RCE or MAE), which also pushes the other classes
down, to fix the underfitting of normalised losses alone. Reference code:
HanxunH/Active-Passive-Losses ``loss.py`` (``NCEandRCE``, ``NCEandMAE``, ``NFLandRCE``,
``NFLandMAE``, ``NGCEandRCE``, ``NGCEandMAE``), where ``alpha``/``beta`` are the
``scale`` of the two parts. The parts are exactly :func:`~robustlab.losses.functional.nce`,
``nfl``, ``ngce`` (active) and ``rce`` (``A = ln(1e-4)``, ``p`` clamped to ``[1e-7, 1]``),
``mae`` (``1 - p_y``, APL's reduced MAE) (passive).

Defaults ``alpha = beta = 1`` are APL's CIFAR-10 configs; ``losses.preset(name, dataset)``
gives the per-dataset values of the official configs (MNIST 1/10, CIFAR-100 10/0.1 with
RCE or 10/1 with MAE, WebVision-mini 50/0.1 or 50/1).
"""

from __future__ import annotations

import torch

from robustlab.losses import functional as Fn
from robustlab.losses.base import Loss, losses, param_name
from robustlab.validation import check_bool, check_float


class _ActivePassive(Loss):
    """Shared checks for the ``alpha * active + beta * passive`` combinations."""

    def _weights(self, alpha: float, beta: float) -> None:
        self.alpha = check_float(alpha, param_name(self, "alpha"), low=0.0)
        self.beta = check_float(beta, param_name(self, "beta"), low=0.0)

    def _a(self, A: float) -> float:
        return check_float(A, param_name(self, "A", Fn.RCE_A_NOTE), high=0.0, high_open=True)


@losses.register("nce+rce", aliases=("nce_rce", "nceandrce"))
class NCEandRCE(_ActivePassive):
    """APL ``alpha * NCE + beta * RCE`` (Ma et al. 2020, Sec. 4; APL ``NCEandRCE``)."""

    def __init__(
        self, alpha: float = 1.0, beta: float = 1.0, A: float = Fn.RCE_A, reduction: str = "mean"
    ) -> None:
        super().__init__(reduction)
        self._weights(alpha, beta)
        self.A = self._a(A)

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.alpha * Fn.nce(logits, target) + self.beta * Fn.rce(logits, target, self.A)


@losses.register("nce+mae", aliases=("nce_mae", "nceandmae"))
class NCEandMAE(_ActivePassive):
    """APL ``alpha * NCE + beta * MAE`` (Ma et al. 2020, Sec. 4; APL ``NCEandMAE``)."""

    def __init__(self, alpha: float = 1.0, beta: float = 1.0, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self._weights(alpha, beta)

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.alpha * Fn.nce(logits, target) + self.beta * Fn.mae(logits, target)


@losses.register("nfl+rce", aliases=("nfl_rce", "nflandrce"))
class NFLandRCE(_ActivePassive):
    """APL ``alpha * NFL + beta * RCE`` (Ma et al. 2020, Sec. 4; APL ``NFLandRCE``).

    NFL as in :class:`~robustlab.losses.robust.NFL` (``gamma = 0.5``, modulating factors
    detached as in APL's code unless ``detach=False``).
    """

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 1.0,
        gamma: float = 0.5,
        detach: bool = True,
        A: float = Fn.RCE_A,
        reduction: str = "mean",
    ) -> None:
        super().__init__(reduction)
        self._weights(alpha, beta)
        self.gamma = check_float(gamma, param_name(self, "gamma"), low=0.0)
        self.detach = check_bool(detach, param_name(self, "detach"))
        self.A = self._a(A)

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        active = Fn.nfl(logits, target, self.gamma, self.detach)
        return self.alpha * active + self.beta * Fn.rce(logits, target, self.A)


@losses.register("nfl+mae", aliases=("nfl_mae", "nflandmae"))
class NFLandMAE(_ActivePassive):
    """APL ``alpha * NFL + beta * MAE`` (Ma et al. 2020, Sec. 4; APL ``NFLandMAE``)."""

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 1.0,
        gamma: float = 0.5,
        detach: bool = True,
        reduction: str = "mean",
    ) -> None:
        super().__init__(reduction)
        self._weights(alpha, beta)
        self.gamma = check_float(gamma, param_name(self, "gamma"), low=0.0)
        self.detach = check_bool(detach, param_name(self, "detach"))

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        active = Fn.nfl(logits, target, self.gamma, self.detach)
        return self.alpha * active + self.beta * Fn.mae(logits, target)


@losses.register("ngce+rce", aliases=("ngce_rce", "ngceandrce"))
class NGCEandRCE(_ActivePassive):
    """APL ``alpha * NGCE + beta * RCE`` (Ma et al. 2020; APL ``NGCEandRCE``).

    NGCE as in :class:`~robustlab.losses.robust.NGCE` (default ``q = 0.7``, APL's class
    default; its CIFAR-10/MNIST configs use ``q = 0.1``).
    """

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 1.0,
        q: float = 0.7,
        A: float = Fn.RCE_A,
        reduction: str = "mean",
    ) -> None:
        super().__init__(reduction)
        self._weights(alpha, beta)
        self.q = check_float(q, param_name(self, "q"), low=0.0, high=1.0, low_open=True)
        self.A = self._a(A)

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.alpha * Fn.ngce(logits, target, self.q) + self.beta * Fn.rce(
            logits, target, self.A
        )


@losses.register("ngce+mae", aliases=("ngce_mae", "ngceandmae"))
class NGCEandMAE(_ActivePassive):
    """APL ``alpha * NGCE + beta * MAE`` (Ma et al. 2020; APL ``NGCEandMAE``)."""

    def __init__(
        self, alpha: float = 1.0, beta: float = 1.0, q: float = 0.7, reduction: str = "mean"
    ) -> None:
        super().__init__(reduction)
        self._weights(alpha, beta)
        self.q = check_float(q, param_name(self, "q"), low=0.0, high=1.0, low_open=True)

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.alpha * Fn.ngce(logits, target, self.q) + self.beta * Fn.mae(logits, target)


__all__ = ["NCEandMAE", "NCEandRCE", "NFLandMAE", "NFLandRCE", "NGCEandMAE", "NGCEandRCE"]
