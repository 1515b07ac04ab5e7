"""Projected gradient descent, written once for every norm of :mod:`threat`."""

from __future__ import annotations

import torch

from robustlab.attacks.base import (
    CLEAN_LOSSES,
    Attack,
    AttackContext,
    BestTracker,
    attack_loss,
    attacks,
    is_success,
    loss_min_classes,
)
from robustlab.attacks.threat import ThreatModel, draw
from robustlab.errors import ConfigError


def ranked_targets(clean_logits: torch.Tensor, y: torch.Tensor, k: int) -> list[torch.Tensor]:
    """The ``k`` most likely wrong classes per sample by clean logits (2nd, 3rd, ...
    highest when ``y`` is the prediction), as the official APGD-T code picks them."""
    order = clean_logits.scatter(1, y[:, None], float("-inf")).sort(dim=1)[1]
    return [order[:, -(j + 1)] for j in range(k)]


def check_targets(targets: int, num_classes: int | None, attack: str) -> None:
    """``targets`` wrong classes need ``num_classes - 1 >= targets``; else ConfigError."""
    if num_classes is not None and targets > num_classes - 1:
        raise ConfigError(
            f"{attack} asks for {targets} target classes but the model has {num_classes} "
            f"classes, so at most {num_classes - 1} wrong classes exist. Set targets <= "
            f"{num_classes - 1}."
        )


@attacks.register("pgd")
class PGD(Attack):
    """Projected gradient descent (Madry et al. 2018, "Towards Deep Learning Models
    Resistant to Adversarial Attacks", Eq. (2)):
    ``x^{t+1} = Proj_{B(x, eps) ∩ [lo, hi]^d}(x^t + alpha * dir(grad_x L(f(x^t), y)))``
    where ``dir`` is the steepest-ascent direction of the threat model's norm (sign for
    L-inf, normalised gradient for L2, the box-aware sparse top-k direction of
    Croce & Hein 2021 for L1).

    Parameters
    ----------
    steps: iterations per restart.
    step_size: absolute step ``alpha``; default ``rel_step_size * eps``.
    rel_step_size: step relative to eps when ``step_size`` is None; default
        ``2.5 / steps`` (Madry et al.'s choice, which can cross the ball 1.25 times).
    random_start: start from a uniform point of the ball (else from ``x``).
    init_std: if set, start from ``x + init_std * N(0, I)`` instead (TRADES' official
        code uses 0.001).
    restarts: number of runs; each later run only attacks points still unbroken.
    loss: ``"ce"`` (cross-entropy), ``"margin"``/``"cw"`` (Carlini & Wagner's logit margin),
        ``"dlr"`` (Croce & Hein 2020), ``"pm"`` (probability margin), ``"kl"``
        (TRADES' ``KL(f(x) || f(x'))``) or ``"logit-diff"`` (Mao et al. 2023); the last
        two read the clean logits.
    targets: if > 0, run a *multi-targeted* attack instead (Gowal et al. 2019, "An
        Alternative Surrogate Loss for PGD-based Adversarial Testing"): one targeted
        run per each of the ``targets`` most likely wrong classes (by clean logits),
        stopping for a point at its first success. Ignored when the caller passes an
        explicit ``target``. More targets than ``classes - 1`` is a ConfigError.
    l1_sparsity: share of coordinates moved per L1 step (default 0.05).

    Evaluation (``attack(...)``) stops a point at its first success and returns the best
    iterate; training (``attack.generate(...)``) attacks every point for all steps and
    returns the final iterate (Madry et al.'s and TRADES' official code).
    """

    norms = ("linf", "l2", "l1")

    def __init__(
        self,
        steps: int = 10,
        step_size: float | None = None,
        rel_step_size: float | None = None,
        random_start: bool = True,
        restarts: int = 1,
        loss: str = "ce",
        targets: int = 0,
        init_std: float | None = None,
        l1_sparsity: float = 0.05,
    ) -> None:
        if steps < 1 or restarts < 1:
            raise ConfigError(f"steps and restarts must be >= 1, got {steps} and {restarts}.")
        if targets < 0:
            raise ConfigError(f"targets must be >= 0, got {targets}.")
        if init_std is not None and init_std < 0:
            raise ConfigError(f"init_std must be >= 0, got {init_std}.")
        if not 0 < l1_sparsity <= 1:
            raise ConfigError(f"l1_sparsity must lie in (0, 1], got {l1_sparsity}.")
        attack_loss(loss)  # validate early
        if loss in CLEAN_LOSSES and targets:
            raise ConfigError(f"the {loss!r} loss is untargeted; use targets=0 with loss={loss!r}.")
        self.steps = int(steps)
        self.step_size = step_size
        self.rel_step_size = rel_step_size
        self.random_start = bool(random_start)
        self.restarts = int(restarts)
        self.loss = loss
        self.targets = int(targets)
        self.init_std = init_std
        self.l1_sparsity = float(l1_sparsity)

    def required_classes(self, targeted: bool) -> int:
        return loss_min_classes(self.loss, targeted or self.targets > 0)

    def needs_clean_logits(self) -> bool:
        return self.loss in CLEAN_LOSSES or self.targets > 0

    def _alpha(self, threat: ThreatModel) -> float:
        if self.step_size is not None:
            return float(self.step_size)
        rel = self.rel_step_size if self.rel_step_size is not None else 2.5 / self.steps
        return rel * threat.eps

    def _start(self, ctx: AttackContext, x: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
        if self.init_std is not None:
            noise = draw(x.shape, x, ctx.generator, normal=True).to(x.dtype)
            return threat.project(x + self.init_std * noise, x, ctx.bounds)
        if self.random_start:
            return threat.random_start(x, ctx.bounds, ctx.generator)
        return x.clone()

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
        clean: torch.Tensor | None,
    ) -> torch.Tensor:
        """One PGD run from a (random) start for the tracked ``rows``; returns the final
        iterate (of every point in training; in evaluation, of the points never broken,
        and the caller reads the tracker instead).

        ``aim`` is the class the loss pushes towards (None: away from ``y``); ``goal``
        is what counts as success (None: any misclassification). They differ only in
        multi-targeted runs, which aim at one wrong class but accept any.
        """
        loss_fn = attack_loss(self.loss)
        alpha = self._alpha(threat)
        xa = self._start(ctx, x, threat)
        # the state of the points still attacked, compacted as points break
        xs, ya, aa, ga, ca, ra = x, y, aim, goal, clean, rows
        stop_early = not ctx.training
        for i in range(self.steps + 1):
            if i == self.steps:  # the last iterate only needs a forward pass
                if stop_early:
                    logits = ctx.logits(xa)
                    tracker.update(xa, loss_fn(logits, ya, aa, ca), is_success(logits, ya, ga), ra)
                return xa
            loss, grad, logits = ctx.value_and_grad(xa, loss_fn, ya, aa, ca)
            if stop_early:
                succ = is_success(logits, ya, ga)
                tracker.update(xa, loss, succ, ra)
                if bool(succ.any()):  # compact: only still-unbroken points take further steps
                    keep = ~succ
                    if not bool(keep.any()):
                        return xa
                    xa, xs, ya, grad, ra = xa[keep], xs[keep], ya[keep], grad[keep], ra[keep]
                    aa, ga, ca = (None if t is None else t[keep] for t in (aa, ga, ca))
            direction = threat.ascent_direction(
                grad, sparsity=self.l1_sparsity, x=xa, bounds=ctx.bounds
            ) if threat.norm == "l1" else threat.ascent_direction(grad)
            xa = threat.project(xa + alpha * direction, xs, ctx.bounds)
        return xa

    def perturb(
        self,
        ctx: AttackContext,
        x: torch.Tensor,
        y: torch.Tensor,
        threat: ThreatModel,
        target: torch.Tensor | None,
    ) -> torch.Tensor:
        tracker = BestTracker(x)
        clean = ctx.clean_logits
        if target is None and self.targets > 0:
            check_targets(self.targets, ctx.num_classes, "pgd")
            logits = clean if clean is not None else ctx.logits(x)
            runs: list[tuple[torch.Tensor | None, torch.Tensor | None]] = [
                (t, None) for t in ranked_targets(logits, y, self.targets)
            ]  # aim at t, accept any
        else:
            runs = [(target, target)]
        final = x.clone()
        for aim, goal in runs:
            for _ in range(self.restarts):
                if ctx.training:  # training: every point, every run; keep the last run's iterate
                    final = self._run(ctx, x, y, threat, aim, goal, tracker, torch.arange(len(x), device=x.device), clean)
                    continue
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
                    None if clean is None else clean[rows],
                )
        return final if ctx.training else tracker.x_best


@attacks.register("fgsm")
class FGSM(PGD):
    """Fast gradient sign method (Goodfellow et al. 2015, "Explaining and Harnessing
    Adversarial Examples", Eq. (3)): one step of size eps along the steepest-ascent
    direction, from ``x`` (no random start). For L2 this is the fast gradient method.
    (FGSM with a random start, Wong et al. 2020's "FGSM-RS", is
    ``create("pgd", steps=1, rel_step_size=1.25)``.)"""

    norms = ("linf", "l2")  # type: ignore[assignment]

    def __init__(self, loss: str = "ce") -> None:
        super().__init__(steps=1, rel_step_size=1.0, random_start=False, restarts=1, loss=loss)
