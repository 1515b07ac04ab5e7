"""Projected gradient descent, written once for every norm of :mod:`threat`."""

from __future__ import annotations

import torch

from robustlab.attacks.base import Attack, AttackContext, BestTracker, attack_loss, attacks, is_success
from robustlab.attacks.threat import ThreatModel
from robustlab.errors import ConfigError


@attacks.register("pgd")
class PGD(Attack):
    """Projected gradient descent (Madry et al. 2018, "Towards Deep Learning Models
    Resistant to Adversarial Attacks", Eq. (2)):
    ``x^{t+1} = Proj_{B(x, eps) ∩ [lo, hi]^d}(x^t + alpha * dir(grad_x L(f(x^t), y)))``
    where ``dir`` is the steepest-ascent direction of the threat model's norm (sign for
    L-inf, normalised gradient for L2).

    Parameters
    ----------
    steps: iterations per restart.
    step_size: absolute step ``alpha``; default ``rel_step_size * eps``.
    rel_step_size: step relative to eps when ``step_size`` is None; default
        ``2.5 / steps`` (Madry et al.'s choice, which can cross the ball 1.25 times).
    random_start: start from a uniform point of the ball (else from ``x``).
    restarts: number of runs; each later run only attacks points still unbroken.
    loss: ``"ce"`` (cross-entropy) or ``"margin"`` (Carlini & Wagner's logit margin).
    targets: if > 0, run a *multi-targeted* attack instead (Gowal et al. 2019, "An
        Alternative Surrogate Loss for PGD-based Adversarial Testing"): one targeted
        run per each of the ``targets`` most likely wrong classes (by clean logits),
        stopping for a point at its first success. Ignored when the caller passes an
        explicit ``target``.
    """

    norms = ("linf", "l2")

    def __init__(
        self,
        steps: int = 10,
        step_size: float | None = None,
        rel_step_size: float | None = None,
        random_start: bool = True,
        restarts: int = 1,
        loss: str = "ce",
        targets: int = 0,
    ) -> None:
        if steps < 1 or restarts < 1:
            raise ConfigError(f"steps and restarts must be >= 1, got {steps} and {restarts}.")
        if targets < 0:
            raise ConfigError(f"targets must be >= 0, got {targets}.")
        attack_loss(loss)  # validate early
        self.steps = int(steps)
        self.step_size = step_size
        self.rel_step_size = rel_step_size
        self.random_start = bool(random_start)
        self.restarts = int(restarts)
        self.loss = loss
        self.targets = int(targets)

    def _alpha(self, threat: ThreatModel) -> float:
        if self.step_size is not None:
            return float(self.step_size)
        rel = self.rel_step_size if self.rel_step_size is not None else 2.5 / self.steps
        return rel * threat.eps

    def _run(
        self,
        ctx: AttackContext,
        x: torch.Tensor,
        y: torch.Tensor,
        threat: ThreatModel,
        aim: torch.Tensor | None,
        goal: torch.Tensor | None,
        tracker: BestTracker,
        rows: torch.Tensor,
    ) -> None:
        """One PGD run from a (random) start for the tracked ``rows``.

        ``aim`` is the class the loss pushes towards (None: away from ``y``); ``goal``
        is what counts as success (None: any misclassification). They differ only in
        multi-targeted runs, which aim at one wrong class but accept any.
        """
        loss_fn = attack_loss(self.loss)
        alpha = self._alpha(threat)
        x_adv = threat.random_start(x, ctx.bounds, ctx.generator) if self.random_start else x.clone()
        active = torch.arange(len(x), device=x.device)
        for i in range(self.steps + 1):
            xa, ya = x_adv[active], y[active]
            aa = None if aim is None else aim[active]
            ga = None if goal is None else goal[active]
            if i == self.steps:  # the last iterate only needs a forward pass
                logits = ctx.logits(xa)
                tracker.update(xa, loss_fn(logits, ya, aa), is_success(logits, ya, ga), rows[active])
                return
            loss, grad, logits = ctx.value_and_grad(xa, loss_fn, ya, aa)
            succ = is_success(logits, ya, ga)
            tracker.update(xa, loss, succ, rows[active])
            keep = ~succ  # compact: only still-unbroken points take further steps
            active = active[keep]
            if not len(active):
                return
            step = xa[keep] + alpha * threat.ascent_direction(grad[keep])
            x_adv[active] = threat.project(step, x[active], ctx.bounds)

    def perturb(
        self,
        ctx: AttackContext,
        x: torch.Tensor,
        y: torch.Tensor,
        threat: ThreatModel,
        target: torch.Tensor | None,
    ) -> torch.Tensor:
        tracker = BestTracker(x)
        if target is None and self.targets > 0:
            ranked = ctx.logits(x).scatter(1, y[:, None], float("-inf")).argsort(1, descending=True)
            k = min(self.targets, ranked.shape[1] - 1)
            runs = [(ranked[:, i], None) for i in range(k)]  # aim at class i, accept any
        else:
            runs = [(target, target)]
        for aim, goal in runs:
            for _ in range(self.restarts):
                rows = (~tracker.success).nonzero().squeeze(1)
                if not len(rows):
                    return tracker.x_best
                self._run(
                    ctx,
                    x[rows],
                    y[rows],
                    threat,
                    None if aim is None else aim[rows],
                    None if goal is None else goal[rows],
                    tracker,
                    rows,
                )
        return tracker.x_best


@attacks.register("fgsm")
class FGSM(PGD):
    """Fast gradient sign method (Goodfellow et al. 2015, "Explaining and Harnessing
    Adversarial Examples", Eq. (3)): one step of size eps along the steepest-ascent
    direction, from ``x`` (no random start). For L2 this is the fast gradient method."""

    def __init__(self, loss: str = "ce") -> None:
        super().__init__(steps=1, rel_step_size=1.0, random_start=False, restarts=1, loss=loss)
