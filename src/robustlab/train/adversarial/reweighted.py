"""Instance-reweighted adversarial training: DONE (Sow et al. 2024)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from robustlab.losses import Loss
from robustlab.train.adversarial.base import (
    AdversarialObjective,
    clean_accuracy_metric,
    make_attack,
    relative_step,
)
from robustlab.train.objectives import accuracy_metric, objectives
from robustlab.validation import check_bool, check_float, check_int


def done_weights(losses: torch.Tensor, r: float) -> torch.Tensor:
    """DONE's instance weights: the solution of the KL-regularised DRO problem
    ``max_{w in simplex} sum_i w_i l_i - r KL(w || uniform)``, i.e.
    ``w = softmax(l / r)`` (computed stably; sums to 1, uniform as ``r -> inf``, one-hot
    on the largest loss as ``r -> 0``)."""
    check_float(r, "r (the DONE temperature)", low=0.0, low_open=True)
    return torch.softmax(losses.detach().double() / r, dim=0).to(losses.dtype)


@objectives.register("done")
class DONE(AdversarialObjective):
    """DONE, doubly robust instance-reweighted adversarial training (Sow, Lin, Wang &
    Liang, ICLR 2024, "Doubly Robust Instance-Reweighted Adversarial Training", the
    KL-regularised DRO weights of their Eq. (3)-(4)).

    Inner maximisation as ``pgd-at`` (``pgd`` from the attack registry). With per-sample
    adversarial losses ``l_i = L(f(x'_i), y_i)`` of the batch, the weights are
    ``w = softmax(l / r)`` (:func:`done_weights`, detached) and the outer loss is
    ``sum_i w_i l_i`` (returned per sample as ``B w_i l_i``, so the batch mean is the
    weighted sum). ``r`` trades uniform weights (``r -> inf``: PGD-AT) against
    worst-example training (``r -> 0``).

    What is implemented vs the paper: the closed-form weights within each minibatch. The
    paper's compositional implicit-differentiation algorithm (a running estimate of the
    normaliser across batches, the log-barrier attack and the implicit hypergradient) is
    not; no official code was available to take defaults from, so ``r=1`` and the attack
    settings of ``pgd-at`` are this library's choices.

    Metrics: ``adv_accuracy``, ``accuracy`` (clean, eval mode), ``done_entropy`` (the
    entropy of the batch weights in nats; ``log B`` when uniform) and
    ``done_max_weight``.
    """

    default_bn_mode = "train"

    def __init__(
        self,
        loss: str | Loss = "ce",
        loss_params: Mapping[str, Any] | None = None,
        *,
        r: float = 1.0,
        norm: str = "linf",
        eps: float | str = 8 / 255,
        steps: int = 10,
        step_size: float | str | None = None,
        rel_step_size: float | None = None,
        random_start: bool = True,
        eps_warmup: float = 0.0,
        bn_mode: str | None = None,
    ) -> None:
        super().__init__(loss=loss, loss_params=loss_params, norm=norm, eps=eps, eps_warmup=eps_warmup, bn_mode=bn_mode)
        self.r = check_float(r, "r (the DONE temperature; r -> 0 weights only the worst example)", low=0.0, low_open=True)
        self.steps = check_int(steps, "steps", minimum=1)
        self.rel_step = relative_step(step_size, rel_step_size, self.threat.eps, 0.25)
        self.attack = make_attack(
            "pgd", steps=self.steps, rel_step_size=self.rel_step,
            random_start=check_bool(random_start, "random_start"), loss="ce"
        )
        self._record_params(locals())

    def outer(self, model, x, x_adv, y, index, *, metrics=True):  # type: ignore[no-untyped-def]
        logits_adv = model(x_adv)
        per = self._supervised(logits_adv, y, index)
        w = done_weights(per, self.r)
        entropy = -(torch.xlogy(w, w)).sum()
        return per * w * len(per), {
            "adv_accuracy": accuracy_metric(logits_adv, y),
            "accuracy": clean_accuracy_metric(model, x, y),
            "done_entropy": entropy.detach(),
            "done_max_weight": w.max().detach(),
        }
