"""Projected gradient descent, written once for every norm of :mod:`threat`."""

from __future__ import annotations

import torch

from robustlab.attacks.base import Attack, attacks
from robustlab.attacks.engine import ActiveSet, AttackContext, BestTracker, is_success
from robustlab.attacks.losses import CLEAN_LOSSES, attack_loss, loss_min_classes
from robustlab.attacks.threat import ThreatModel, draw
from robustlab.errors import ConfigError
from robustlab.validation import check_bool, check_float, check_int


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
        self.steps = check_int(steps, "steps", minimum=1)
        self.step_size = None if step_size is None else check_float(step_size, "step_size", low=0, low_open=True)
        self.rel_step_size = (
            None if rel_step_size is None else check_float(rel_step_size, "rel_step_size", low=0, low_open=True)
        )
        self.random_start = check_bool(random_start, "random_start")
        self.restarts = check_int(restarts, "restarts", minimum=1)
        attack_loss(loss)  # validate early
        self.loss = loss
        self.targets = check_int(targets, "targets", minimum=0)
        if loss in CLEAN_LOSSES and self.targets:
            raise ConfigError(f"the {loss!r} loss is untargeted; use targets=0 with loss={loss!r}.")
        self.init_std = None if init_std is None else check_float(init_std, "init_std", low=0)
        self.l1_sparsity = check_float(l1_sparsity, "l1_sparsity", low=0, high=1, low_open=True)

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
        act: ActiveSet,
        clean: torch.Tensor | None,
    ) -> torch.Tensor:
        """One PGD run from a (random) start for the rows of ``act`` (``x``, ``y``, ``aim``,
        ``goal``, ``clean`` are the tracked batch's tensors); returns the final iterate
        (of every point in training; in evaluation, of the points never broken, and the
        caller reads the tracker instead).

        ``aim`` is the class the loss pushes towards (None: away from ``y``); ``goal``
        is what counts as success (None: any misclassification). They differ only in
        multi-targeted runs, which aim at one wrong class but accept any.
        """
        loss_fn = attack_loss(self.loss)
        alpha = self._alpha(threat)
        # the state of the points still attacked; broken points retire (evaluation only)
        xs, ya = act.gather(x), act.gather(y)
        aa, ga, ca = act.gather(aim), act.gather(goal), act.gather(clean)
        xa = self._start(ctx, xs, threat)
        stop_early = not ctx.training
        for i in range(self.steps + 1):
            if i == self.steps:  # the last iterate only needs a forward pass
                if stop_early:
                    logits = ctx.logits(xa)
                    tracker.update(xa, loss_fn(logits, ya, aa, ca), is_success(logits, ya, ga), act.rows)
                return xa
            loss, grad, logits = ctx.value_and_grad(xa, loss_fn, ya, aa, ca)
            if stop_early:
                succ = is_success(logits, ya, ga)
                tracker.update(xa, loss, succ, act.rows)
                # only still-unbroken points take further steps
                xa, xs, ya, grad, aa, ga, ca = act.retire(succ, xa, xs, ya, grad, aa, ga, ca)
                if not act:
                    return xa
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
                    everyone = ActiveSet.everyone(len(x), x.device)
                    final = self._run(ctx, x, y, threat, aim, goal, tracker, everyone, clean)
                    continue
                act = ActiveSet(~tracker.success)  # each run attacks the points still unbroken
                if not act:
                    return tracker.x_best
                self._run(ctx, x, y, threat, aim, goal, tracker, act, clean)
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
