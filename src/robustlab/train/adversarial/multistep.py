"""Multi-step adversarial training: PGD-AT (Madry et al. 2018)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from robustlab.losses import Loss
from robustlab.train.adversarial.base import (
    AdversarialObjective,
    clean_accuracy_metric,
    make_attack,
    relative_step,
)
from robustlab.train.objectives import accuracy_metric, objectives
from robustlab.validation import check_bool, check_int


@objectives.register("pgd-at", aliases=("madry",))
class PGDAT(AdversarialObjective):
    """PGD adversarial training (Madry et al. 2018, "Towards Deep Learning Models Resistant
    to Adversarial Attacks", Eq. (2.1)): ``min_theta E max_{x' in B(x, eps)} L(f(x'), y)``,
    the inner maximum approximated by ``pgd`` from the attack registry (uniform random
    start, ``steps`` sign-gradient steps, final iterate).

    Defaults from the official PGD-AT code of Rice, Wong & Kolter (2020, "Overfitting in
    adversarially robust deep learning", locuslab/robust_overfitting): 10 steps of size
    ``eps/4`` (2/255 at 8/255), random start, attack in train mode (``bn_mode="train"``).
    (Madry et al.'s MNIST setting is ``eps=0.3, steps=40, step_size=0.01``.)

    ``loss`` may be any loss of the registry (``pgd-at`` with ``loss="gce"`` trains GCE on
    the adversarial inputs); the attack always maximises cross-entropy.

    Metrics: ``adv_accuracy`` (on the adversarial inputs, training mode) and, when
    ``clean_metrics``, ``accuracy`` (clean inputs, one extra no-grad forward pass in eval
    mode that changes no state).
    """

    default_bn_mode = "train"

    def __init__(
        self,
        loss: str | Loss = "ce",
        loss_params: Mapping[str, Any] | None = None,
        *,
        norm: str = "linf",
        eps: float | str = 8 / 255,
        steps: int = 10,
        step_size: float | str | None = None,
        rel_step_size: float | None = None,
        random_start: bool = True,
        eps_warmup: float = 0.0,
        bn_mode: str | None = None,
        clean_metrics: bool = True,
    ) -> None:
        super().__init__(loss=loss, loss_params=loss_params, norm=norm, eps=eps, eps_warmup=eps_warmup, bn_mode=bn_mode)
        self.steps = check_int(steps, "steps", minimum=1)
        self.rel_step = relative_step(step_size, rel_step_size, self.threat.eps, 0.25)
        self.random_start = check_bool(random_start, "random_start")
        self.clean_metrics = check_bool(clean_metrics, "clean_metrics")
        self.attack = make_attack(
            "pgd", steps=self.steps, rel_step_size=self.rel_step, random_start=self.random_start, loss="ce"
        )
        self._record_params(locals())

    def outer(self, model, x, x_adv, y, index, *, metrics=True):  # type: ignore[no-untyped-def]
        logits_adv = model(x_adv)
        per = self._supervised(logits_adv, y, index)
        out = {"adv_accuracy": accuracy_metric(logits_adv, y)}
        if self.clean_metrics and metrics:
            out["accuracy"] = clean_accuracy_metric(model, x, y)
        return per, out
