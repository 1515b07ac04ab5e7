"""The comp-sum family of Mao, Mohri & Zhong (2023).

"Cross-Entropy Loss Functions: Theoretical Analysis and Applications", ICML 2023, Sec. 2:
comp-sum losses compose ``Phi^tau`` with the sum of exponential margins,

    ``l^tau(z, y) = Phi^tau(u)``,  ``u = sum_{k != y} exp(z_k - z_y)``,
    ``Phi^tau(u) = log(1 + u)`` for ``tau = 1``,
    ``Phi^tau(u) = ((1 + u)^(1 - tau) - 1) / (1 - tau)`` otherwise (``tau >= 0``).

Special cases: ``tau = 0`` is the sum-exponential loss ``u``, ``tau = 1`` cross-entropy,
``tau = 1 + q`` (``q in (0, 1]``) GCE ``(1 - p_y^q) / q`` and ``tau = 2`` MAE ``1 - p_y``.
Computed stably from ``log p_y = -log(1 + u)``.
"""

from __future__ import annotations

import torch

from robustlab.losses import functional as Fn
from robustlab.losses.base import Loss, losses, param_name
from robustlab.validation import check_float


@losses.register("comp-sum", aliases=("comp_sum", "compsum"))
class CompSum(Loss):
    """Comp-sum loss ``Phi^tau(sum_{k != y} exp(z_k - z_y))`` (Mao, Mohri & Zhong 2023).

    ``tau >= 0``; default ``tau = 1`` (cross-entropy). Evaluated as
    ``expm1((tau - 1) log p_y) / (1 - tau)`` (``-log p_y`` at ``tau = 1``), which equals
    the definition because ``1 + u = 1 / p_y``. Unlike :class:`~robustlab.losses.robust.GCE`
    no probability clamp is applied.
    """

    def __init__(self, tau: float = 1.0, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.tau = check_float(tau, param_name(self, "tau"), low=0.0)

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return Fn.comp_sum(logits, target, self.tau)


__all__ = ["CompSum"]
