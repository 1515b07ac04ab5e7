"""Regularised adversarial training: TRADES (Zhang et al. 2019) and MART (Wang et al. 2020),
a clean or boosted term plus a ``beta``-weighted KL term."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from robustlab.losses import Loss
from robustlab.train.adversarial.base import (
    AdversarialObjective,
    kl_per_sample,
    make_attack,
    relative_step,
)
from robustlab.train.objectives import accuracy_metric, objectives
from robustlab.validation import check_float, check_int


class _BetaPGDObjective(AdversarialObjective):
    """Shared constructor of TRADES and MART: a clean term, a ``beta``-weighted KL term, and
    ``pgd`` from the attack registry maximising :attr:`attack_loss` (official defaults:
    ``beta=6``, 10 steps of 0.007 at eps 0.031, start ``x + 0.001 * N(0, I)``)."""

    attack_loss: ClassVar[str] = "ce"

    def __init__(
        self,
        loss: str | Loss = "ce",
        loss_params: Mapping[str, Any] | None = None,
        *,
        beta: float = 6.0,
        norm: str = "linf",
        eps: float | str = 8 / 255,
        steps: int = 10,
        step_size: float | str | None = None,
        rel_step_size: float | None = None,
        init_std: float | None = 0.001,
        eps_warmup: float = 0.0,
        bn_mode: str | None = None,
    ) -> None:
        super().__init__(loss=loss, loss_params=loss_params, norm=norm, eps=eps, eps_warmup=eps_warmup, bn_mode=bn_mode)
        self.beta = check_float(beta, "beta", low=0.0)
        init_std = None if init_std is None else check_float(init_std, "init_std", low=0.0)
        self.steps = check_int(steps, "steps", minimum=1)
        self.rel_step = relative_step(step_size, rel_step_size, self.threat.eps, 0.007 / 0.031)
        self.attack = make_attack(
            "pgd",
            steps=self.steps,
            rel_step_size=self.rel_step,
            random_start=init_std is None,
            init_std=init_std,
            loss=self.attack_loss,
        )
        self._record_params(locals())


@objectives.register("trades")
class TRADES(_BetaPGDObjective):
    """TRADES (Zhang et al. 2019, "Theoretically Principled Trade-off between Robustness
    and Accuracy", Eq. (5)):

    ``L(f(x), y) + beta * KL(p(x) || p(x'))``, ``x' = argmax_{x' in B(x, eps)} KL(p(x) || p(x'))``

    per sample, with ``p = softmax(f)``. The inner maximum is ``pgd`` with ``loss="kl"``
    from the attack registry; ``p(x)`` for the attack is computed **once per batch** (not
    inside the attack loop). In the outer loss the KL gradient flows through both
    ``p(x)`` and ``p(x')``, as in the official code (``criterion_kl(log_softmax(f(x')),
    softmax(f(x)))``, summed and divided by the batch size).

    Defaults from the official code (yaodongyu/TRADES, ``train_trades_cifar10.py`` and
    ``trades.py``): ``beta=6``, 10 steps of 0.007 at eps 0.031 (``rel_step_size =
    0.007/0.031``), start ``x + 0.001 * N(0, I)`` (``init_std=0.001``; ``None`` starts
    uniformly in the ball), attack in eval mode. The official MNIST setting is
    ``eps=0.3, steps=40, step_size=0.01, beta=1``.

    ``loss`` replaces the natural term ``L`` (CE by default); ``beta=0`` is ERM with that
    loss. Metrics: ``accuracy`` (clean, training mode), ``adv_accuracy``, ``trades_kl``.
    """

    attack_loss = "kl"

    def outer(self, model, x, x_adv, y, index, *, metrics=True):  # type: ignore[no-untyped-def]
        logits = model(x)
        logits_adv = model(x_adv)
        natural = self._supervised(logits, y, index)
        kl = kl_per_sample(logits, logits_adv)
        per = natural + self.beta * kl
        return per, {
            "accuracy": accuracy_metric(logits, y),
            "adv_accuracy": accuracy_metric(logits_adv, y),
            "trades_kl": kl.detach(),
        }


def mart_terms(
    logits: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """MART's boosted term ``-log(1.0001 - max_{k != y} p'_k + 1e-12)`` and its weighted
    KL ``KL(p || p') * (1.0000001 - p_y)`` per sample, with the official code's constants
    (``p = softmax(f(x))``, ``p' = softmax(f(x'))``, ``log(p' + 1e-12)`` inside the KL)."""
    adv_probs = logits_adv.softmax(1)
    other = adv_probs.scatter(1, y[:, None], float("-inf")).amax(1)  # the official new_y's prob
    boost = -torch.log(1.0001 - other + 1e-12)
    nat_probs = logits.softmax(1)
    kl = torch.xlogy(nat_probs, nat_probs) - nat_probs * torch.log(adv_probs + 1e-12)
    true_probs = nat_probs.gather(1, y[:, None]).squeeze(1)
    return boost, kl.sum(1) * (1.0000001 - true_probs)


@objectives.register("mart")
class MART(_BetaPGDObjective):
    """MART, misclassification-aware adversarial training (Wang et al. 2020, "Improving
    Adversarial Robustness Requires Revisiting Misclassified Examples", Eq. (9)):

    ``BCE(p(x'), y) + beta * KL(p(x) || p(x')) * (1 - p_y(x))`` per sample, where
    ``BCE = L(f(x'), y) - log(1 - max_{k != y} p_k(x'))``,

    exactly as the official code (YisenWang/MART, ``mart.py``) computes it: the
    constants ``1.0001``, ``1e-12`` and ``1.0000001``, the KL with ``log(p' + 1e-12)``,
    and the weight ``1 - p_y(x)`` not detached. ``x'`` maximises cross-entropy (``pgd``
    from the attack registry). Defaults from the official code: ``beta=6``, 10 steps of
    0.007 at eps 0.031, start ``x + 0.001 * N(0, I)``, attack in eval mode.

    ``loss`` replaces the CE part ``L(f(x'), y)`` of the boosted term (CE by default).
    Metrics: ``accuracy`` (clean, training mode), ``adv_accuracy``.
    """

    attack_loss = "ce"

    def outer(self, model, x, x_adv, y, index, *, metrics=True):  # type: ignore[no-untyped-def]
        logits = model(x)
        logits_adv = model(x_adv)
        boost, weighted_kl = mart_terms(logits, logits_adv, y)
        per = self._supervised(logits_adv, y, index) + boost + self.beta * weighted_kl
        return per, {"accuracy": accuracy_metric(logits, y), "adv_accuracy": accuracy_metric(logits_adv, y)}
