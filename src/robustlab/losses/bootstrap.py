"""Soft and hard bootstrapping (Reed et al. 2015).

Reed, Lee, Anguelov, Szegedy, Erhan & Rabinovich, "Training Deep Neural Networks on Noisy
Labels with Bootstrapping", ICLR 2015 workshop, Sec. 3: the training target is a convex
combination of the (noisy) label ``t = e_y`` and the model's own prediction.

* soft: ``L = -sum_k (beta t_k + (1 - beta) p_k) log p_k`` (``beta = 0.95`` in the paper),
  equivalent to cross-entropy plus ``(1 - beta)`` times the prediction entropy (the paper's
  minimum-entropy-regularisation reading, so the gradient flows through the ``p_k`` of the
  target too);
* hard: ``L = -sum_k (beta t_k + (1 - beta) z_k) log p_k`` with ``z = e_{argmax_k p_k}``
  (``beta = 0.8`` in the paper); the argmax is piecewise constant and carries no gradient.

``beta = 1`` is cross-entropy for both.
"""

from __future__ import annotations

import torch

from robustlab.losses import functional as Fn
from robustlab.losses.base import Loss, losses, param_name
from robustlab.validation import check_bool, check_float


@losses.register("bootstrap-soft", aliases=("bootstrap_soft", "soft_bootstrap"))
class BootstrapSoft(Loss):
    """Soft bootstrapping ``-sum_k (beta e_y + (1 - beta) p)_k log p_k`` (Reed et al. 2015, Sec. 3).

    Default ``beta = 0.95`` (the paper's value). ``detach_target=True`` treats the
    ``(1 - beta) p`` part of the target as a constant pseudo-label (a common
    re-implementation choice); the default ``False`` is the paper's objective.
    """

    def __init__(
        self, beta: float = 0.95, detach_target: bool = False, reduction: str = "mean"
    ) -> None:
        super().__init__(reduction)
        self.beta = check_float(beta, param_name(self, "beta"), low=0.0, high=1.0)
        self.detach_target = check_bool(detach_target, param_name(self, "detach_target"))

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return Fn.bootstrap_soft(logits, target, self.beta, self.detach_target)


@losses.register("bootstrap-hard", aliases=("bootstrap_hard", "hard_bootstrap"))
class BootstrapHard(Loss):
    """Hard bootstrapping ``-(beta log p_y + (1 - beta) log p_{argmax p})`` (Reed et al. 2015, Sec. 3).

    Default ``beta = 0.8`` (the paper's value).
    """

    def __init__(self, beta: float = 0.8, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.beta = check_float(beta, param_name(self, "beta"), low=0.0, high=1.0)

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return Fn.bootstrap_hard(logits, target, self.beta)


__all__ = ["BootstrapHard", "BootstrapSoft"]
