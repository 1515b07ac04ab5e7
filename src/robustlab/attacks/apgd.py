"""Auto-PGD: APGD-CE, APGD-DLR, APGD-T, L1-APGD and the Probability Margin Attack.

Croce & Hein (2020), "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks" (Algorithm 1, Sec. 3), and for L1, Croce & Hein (2021),
"Mind the box: l1-APGD for sparse adversarial attacks on image classifiers" (Sec. 3).
The algorithm follows the official code (fra31/auto-attack, ``autopgd_base.py``) step
for step:

- random start (``ThreatModel.random_start(kind="apgd")``): L-inf ``eps * t/||t||_inf``
  with ``t ~ U[-1,1]^d``, L2 ``eps * t/||t||_2`` with ``t ~ N(0, I)``, L1 the projection
  of ``t ~ N(0, I)`` onto the L1 ball intersected with the box;
- initial step ``eta = 2 eps`` (L-inf, L2) or ``1 eps`` (L1), per sample;
- momentum (L-inf, L2): ``z = P(x_k + eta * dir(g_k))``,
  ``x_{k+1} = P(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1}))`` with ``a = 1`` on the first
  step and ``a = 0.75`` afterwards;
- checkpoints (L-inf, L2): after ``w_1 = max(int(0.22 N), 1)`` iterations, then windows
  shrinking by ``max(int(0.03 N), 1)`` down to ``max(int(0.06 N), 1)`` (the paper's
  ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``); at a checkpoint the step is
  halved and the iterate (and its gradient) reset to the best point for every sample
  where (1) at most ``rho * k`` of the last ``k`` steps increased the loss, or (2) the
  step was not reduced at the previous checkpoint and the best loss did not improve
  since. As in the official code, condition (1) uses ``<=`` and the first window's
  first comparison is against 0 (the code's zero-initialised loss buffer) rather than
  against the loss of the starting point;
- L1 (Mind the box, Sec. 3.2-3.3): no momentum; the sparse direction over the top
  ``topk`` share of coordinates (initially 0.2); every ``max(int(0.04 N), 1)``
  iterations the sparsity ``topk`` becomes ``||x_best - x||_0 / d / 1.5`` and the step
  is reset to ``eps`` (and the iterate to the best point) where the sparsity of the
  best point fell by more than 5%, else divided by 1.5, within ``[eps/10, eps]``;
  ``large_eps=True`` runs 30% / 30% / 40% of the iterations at 3 eps / 2 eps / eps, each
  stage starting from the previous stage's best point (the official ``use_largereps``,
  including its initialisation).

Departures, none of which change a point's trajectory: points that are already
misclassified stop being computed (they are successes and the official code only
records them), and clean logits are computed once rather than per restart.
"""

from __future__ import annotations

import math

import torch

from robustlab.attacks.base import Attack, attacks
from robustlab.attacks.engine import ActiveSet, AttackContext, BestTracker, is_success
from robustlab.attacks.losses import CLEAN_LOSSES, attack_loss, loss_min_classes
from robustlab.attacks.pgd import check_targets, ranked_targets
from robustlab.attacks.threat import ThreatModel, _per_sample, draw, project_l1_box
from robustlab.errors import ConfigError
from robustlab.validation import check_bool, check_float, check_int


# -- step-size control as pure, testable pieces ------------------------------------------
def apgd_checkpoints(steps: int) -> list[int]:
    """Iteration counts after which APGD (L-inf/L2) checks its step size.

    ``w_1 = max(int(0.22 N), 1)``; each later window is ``max(int(0.03 N), 1)`` shorter,
    but at least ``max(int(0.06 N), 1)`` (Croce & Hein 2020, Sec. 3.2; the official
    code's ``n_iter_2``, ``size_decr`` and ``n_iter_min``). For ``N = 100``:
    ``[22, 41, 57, 70, 80, 87, 93, 99]``.
    """
    k = max(int(0.22 * steps), 1)
    k_min = max(int(0.06 * steps), 1)
    decr = max(int(0.03 * steps), 1)
    out, pos = [], 0
    while pos + k <= steps:
        pos += k
        out.append(pos)
        k = max(k - decr, k_min)
    return out


class APGDStepSchedule:
    """Per-sample step size of APGD for L-inf and L2 (Croce & Hein 2020, Sec. 3.2).

    Feed the loss of each iterate with :meth:`record` (returns which samples improved
    their best loss, strictly) and call :meth:`check` after each record: at checkpoints
    it halves ``step`` where needed and returns the mask of samples to restart from
    their best point (``None`` between checkpoints). Pure tensor logic, so it can be
    checked on a hand-written loss sequence.
    """

    def __init__(self, steps: int, loss0: torch.Tensor, step0: float, rho: float = 0.75) -> None:
        self.steps, self.rho = int(steps), float(rho)
        self.k = max(int(0.22 * steps), 1)
        self.k_min = max(int(0.06 * steps), 1)
        self.decr = max(int(0.03 * steps), 1)
        self.counter = 0
        n = len(loss0)
        # row i holds the loss of iterate i+1; zero-initialised like the official buffer
        self.history = torch.zeros(self.steps, n, dtype=torch.float32, device=loss0.device)
        self.best = loss0.detach().clone()
        self.best_last_check = self.best.clone()
        self.reduced_last_check = torch.ones(n, dtype=torch.bool, device=loss0.device)
        self.step = torch.full((n,), float(step0), dtype=torch.float32, device=loss0.device)
        self.i = -1

    def record(self, i: int, loss: torch.Tensor) -> torch.Tensor:
        """Store the loss of iterate ``i+1``; returns the samples whose best loss improved."""
        self.i = i
        loss = loss.detach()
        self.history[i] = loss.float()
        improved = loss > self.best
        self.best = torch.where(improved, loss, self.best)
        self.counter += 1
        return improved

    def check(self) -> torch.Tensor | None:
        """At a checkpoint: halve the step where needed, return the restart mask."""
        if self.counter < self.k:
            return None
        i, k = self.i, self.k
        idx = torch.arange(i - k + 1, i + 1, device=self.history.device)
        # idx - 1 == -1 reads the last (still zero) row, as the official code does
        increases = (self.history[idx] > self.history[idx - 1]).sum(0)
        oscillating = increases.float() <= k * self.rho
        stalled = ~self.reduced_last_check & (self.best_last_check >= self.best)
        reduce = oscillating | stalled
        self.reduced_last_check = reduce
        self.best_last_check = self.best.clone()
        self.step = torch.where(reduce, self.step / 2.0, self.step)
        self.k = max(self.k - self.decr, self.k_min)
        self.counter = 0
        return reduce

    def keep(self, mask: torch.Tensor) -> None:
        """Drop the samples where ``mask`` is False (compaction of the active set)."""
        self.history = self.history[:, mask]
        self.best = self.best[mask]
        self.best_last_check = self.best_last_check[mask]
        self.reduced_last_check = self.reduced_last_check[mask]
        self.step = self.step[mask]


class L1SparsitySchedule:
    """Step size and sparsity of L1-APGD (Croce & Hein 2021, Sec. 3.3; official code).

    Every ``k = max(int(0.04 N), 1)`` iterations, with ``s`` the L0 norm of the best
    point's perturbation: ``topk = s / d / 1.5``; where ``s / s_old < 0.95`` the step
    goes back to ``eta_0`` and the iterate to the best point, elsewhere the step is
    divided by 1.5; the step stays within ``[eta_0 / 10, eta_0]``.
    """

    def __init__(
        self, steps: int, loss0: torch.Tensor, step0: float, d: int, init_l0: torch.Tensor | None = None
    ) -> None:
        n = len(loss0)
        dev = loss0.device
        self.k = max(int(0.04 * steps), 1)
        self.counter = 0
        self.d = d
        self.step0 = float(step0)
        self.best = loss0.detach().clone()
        self.step = torch.full((n,), self.step0, dtype=torch.float32, device=dev)
        if init_l0 is None:
            self.topk = torch.full((n,), 0.2, dtype=torch.float32, device=dev)
            self.sp_old = torch.full((n,), float(d), dtype=torch.float32, device=dev)
        else:
            self.topk = init_l0.float() / d / 1.5
            self.sp_old = init_l0.float().clone()

    def record(self, i: int, loss: torch.Tensor) -> torch.Tensor:
        loss = loss.detach()
        improved = loss > self.best
        self.best = torch.where(improved, loss, self.best)
        self.counter += 1
        return improved

    def check(self, best_l0: torch.Tensor) -> torch.Tensor | None:
        if self.counter != self.k:
            return None
        sp = best_l0.float()
        reset = (sp / self.sp_old) < 0.95
        self.topk = sp / self.d / 1.5
        self.step = torch.where(reset, torch.full_like(self.step, self.step0), self.step / 1.5)
        self.step = self.step.clamp(self.step0 / 10.0, self.step0)
        self.sp_old = sp.clone()
        self.counter = 0
        return reset

    def keep(self, mask: torch.Tensor) -> None:
        self.best = self.best[mask]
        self.step = self.step[mask]
        self.topk = self.topk[mask]
        self.sp_old = self.sp_old[mask]


def large_eps_schedule(eps: float, steps: int) -> list[tuple[float, int]]:
    """The official ``use_largereps`` stages: (3 eps, ceil(0.3 N)), (2 eps, ceil(0.3 N)),
    (eps, the remaining iterations)."""
    first = [math.ceil(0.3 * steps), math.ceil(0.3 * steps)]
    return [(3 * eps, first[0]), (2 * eps, first[1]), (eps, steps - sum(first))]


def _l0(delta: torch.Tensor) -> torch.Tensor:
    return (delta.reshape(len(delta), -1) != 0).sum(1)


# -- the attack ---------------------------------------------------------------------------
@attacks.register("apgd")
class APGD(Attack):
    """Auto-PGD with a choice of loss (Croce & Hein 2020, Algorithm 1; L1: Croce & Hein
    2021). See the module docstring for the exact algorithm.

    Parameters (defaults from the official code)
    ----------
    steps: iterations per run (100).
    restarts: random restarts; each later one only attacks points still unbroken (1).
    loss: ``"ce"``, ``"dlr"``, ``"margin"``/``"cw"``, ``"pm"`` (probability margin), or the
        untargeted ``"kl"``/``"logit-diff"`` (read the clean logits).
    targets: 0 for an untargeted run; ``k > 0`` for the multi-targeted version (APGD-T):
        one run per each of the ``k`` most likely wrong classes by clean logits
        (the 2nd, 3rd, ... highest), with the targeted form of ``loss`` aimed at that
        class; any misclassification counts as success.
    rho: the oscillation threshold of the step-size rule (0.75).
    large_eps: L1 only; the official ``use_largereps`` schedule (3 eps -> 2 eps -> eps).
    """

    norms = ("linf", "l2", "l1")

    def __init__(
        self,
        steps: int = 100,
        restarts: int = 1,
        loss: str = "ce",
        targets: int = 0,
        rho: float = 0.75,
        large_eps: bool = False,
    ) -> None:
        self._setup(steps, restarts, loss, targets, rho, large_eps)

    def _setup(self, steps: int, restarts: int, loss: str, targets: int, rho: float, large_eps: bool) -> None:
        self.steps = check_int(steps, "steps", minimum=1)
        self.restarts = check_int(restarts, "restarts", minimum=1)
        attack_loss(loss)
        self.loss = loss
        self.targets = check_int(targets, "targets", minimum=0)
        if loss in CLEAN_LOSSES and self.targets:
            raise ConfigError(f"the {loss!r} loss is untargeted; use targets=0 with loss={loss!r}.")
        self.rho = check_float(rho, "rho", low=0, high=1, low_open=True)
        self.large_eps = check_bool(large_eps, "large_eps")

    def required_classes(self, targeted: bool) -> int:
        return loss_min_classes(self.loss, targeted or self.targets > 0)

    def needs_clean_logits(self) -> bool:
        return self.targets > 0 or self.loss in CLEAN_LOSSES

    def check_threat(self, threat: ThreatModel) -> None:
        if self.large_eps and threat.norm != "l1":
            raise ConfigError("large_eps is the L1 schedule of the official code; use it with norm 'l1'.")

    # -- one run ----------------------------------------------------------------------
    def _single_run(
        self,
        ctx: AttackContext,
        x: torch.Tensor,
        y: torch.Tensor,
        aim: torch.Tensor | None,
        goal: torch.Tensor | None,
        clean: torch.Tensor | None,
        threat: ThreatModel,
        eps: float,
        steps: int,
        tracker: BestTracker,
        act: ActiveSet,
        *,
        x_init: torch.Tensor | None = None,
        final: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """One APGD run at radius ``eps`` on the rows of ``act`` (``x``, ``y``, ``aim``,
        ``goal``, ``clean`` and ``x_init`` hold exactly those rows). ``final``: this
        run's successes count (they are recorded in ``tracker`` and, when evaluating,
        retire from ``act``). Returns ``(last iterate, best-loss point)`` unless rows
        retired (then ``None``: the outputs would no longer cover every row)."""
        loss_fn = attack_loss(self.loss)
        bounds = ctx.bounds
        l1 = threat.norm == "l1"
        d = x[0].numel()
        n_rows = len(act)
        if x_init is None:
            x_adv = threat.random_start(x, bounds, ctx.generator, kind="apgd", eps=eps)
            init_l0 = None
        else:
            x_adv = threat.clip_to_box(x_init, bounds)
            init_l0 = _l0(x_adv - x)
        track = final and not ctx.training
        loss, grad, logits = ctx.value_and_grad(x_adv, loss_fn, y, aim, clean)
        if l1:
            sched: APGDStepSchedule | L1SparsitySchedule = L1SparsitySchedule(steps, loss, 1.0 * eps, d, init_l0)
        else:
            sched = APGDStepSchedule(steps, loss, 2.0 * eps, self.rho)
        # the per-row state, compacted when rows retire
        s: dict[str, torch.Tensor | None] = {
            "x": x, "y": y, "aim": aim, "goal": goal, "clean": clean,
            "x_adv": x_adv, "x_old": x_adv.clone(), "grad": grad,
            "x_best": x_adv.clone(), "grad_best": grad.clone(),
        }

        def retire(succ: torch.Tensor) -> None:
            before = len(act)
            s.update(zip(s, act.retire(succ, *s.values()), strict=True))
            if len(act) < before:
                sched.keep(~succ)

        if track:
            succ = is_success(logits, y, goal)
            tracker.update(x_adv, loss, succ, act.rows)
            retire(succ)
        for i in range(steps):
            if not act:
                return None
            xs, xa, g = s["x"], s["x_adv"], s["grad"]
            assert xs is not None and xa is not None and g is not None
            step = _per_sample(sched.step.to(xa.dtype), xa)
            with torch.no_grad():
                if l1:
                    assert isinstance(sched, L1SparsitySchedule)
                    direction = threat.ascent_direction(g, sparsity=sched.topk)
                    x_new = threat.project(xa + step * direction, xs, bounds, eps=eps)
                else:
                    momentum = xa - s["x_old"]  # type: ignore[operator]
                    s["x_old"] = xa.clone()
                    a = 0.75 if i > 0 else 1.0
                    z = threat.project(xa + step * threat.ascent_direction(g), xs, bounds, eps=eps)
                    x_new = threat.project(xa + a * (z - xa) + (1 - a) * momentum, xs, bounds, eps=eps)
            loss, grad, logits = ctx.value_and_grad(x_new, loss_fn, s["y"], s["aim"], s["clean"])
            s["x_adv"], s["grad"] = x_new, grad
            improved = sched.record(i, loss)
            if bool(improved.any()):
                s["x_best"][improved] = x_new[improved]  # type: ignore[index]
                s["grad_best"][improved] = grad[improved]  # type: ignore[index]
            if l1:
                reset = sched.check(_l0(s["x_best"] - xs))  # type: ignore[operator, call-arg]
            else:
                reset = sched.check()  # type: ignore[call-arg]
            if reset is not None and bool(reset.any()):
                s["x_adv"] = torch.where(_per_sample(reset, x_new), s["x_best"], x_new)  # type: ignore[arg-type]
                s["grad"] = torch.where(_per_sample(reset, grad), s["grad_best"], grad)  # type: ignore[arg-type]
            if track:
                succ = is_success(logits, s["y"], s["goal"])  # type: ignore[arg-type]
                tracker.update(x_new, loss, succ, act.rows)
                retire(succ)
        if len(act) < n_rows:
            return None
        return s["x_adv"], s["x_best"]  # type: ignore[return-value]

    def _attack_rows(
        self,
        ctx: AttackContext,
        x: torch.Tensor,
        y: torch.Tensor,
        aim: torch.Tensor | None,
        goal: torch.Tensor | None,
        clean: torch.Tensor | None,
        threat: ThreatModel,
        tracker: BestTracker,
        act: ActiveSet,
    ) -> torch.Tensor | None:
        """One run (or the large-eps stages) on the rows of ``act``; the tensors are the
        tracked batch's, cut to those rows here."""
        x, y = act.gather(x), act.gather(y)
        aim, goal, clean = act.gather(aim), act.gather(goal), act.gather(clean)
        if not self.large_eps:
            out = self._single_run(ctx, x, y, aim, goal, clean, threat, threat.eps, self.steps, tracker, act)
            return None if out is None else out[0]
        # the official use_largereps initialisation: a Gaussian draw projected as if it
        # were a perturbation (radius 3 eps), then re-projected around x at each stage
        noise = draw(x.shape, x, ctx.generator, normal=True).to(x.dtype)
        stages = large_eps_schedule(threat.eps, self.steps)
        x_init = project_l1_box(x + noise, x, stages[0][0], ctx.bounds)
        out = None
        for j, (eps_j, steps_j) in enumerate(stages):
            x_init = x + project_l1_box(x_init - x, x, eps_j, ctx.bounds)
            last = j == len(stages) - 1
            out = self._single_run(
                ctx, x, y, aim, goal, clean, threat, eps_j, steps_j, tracker, act,
                x_init=x_init, final=last,
            )
            if out is None:
                return None
            x_init = out[1]
        return None if out is None else out[0]

    def perturb(
        self,
        ctx: AttackContext,
        x: torch.Tensor,
        y: torch.Tensor,
        threat: ThreatModel,
        target: torch.Tensor | None,
    ) -> torch.Tensor:
        self.check_threat(threat)
        tracker = BestTracker(x)
        clean = ctx.clean_logits
        runs: list[tuple[torch.Tensor | None, torch.Tensor | None]]
        if target is not None:
            runs = [(target, target)]
        elif self.targets > 0:
            check_targets(self.targets, ctx.num_classes, type(self).__name__)
            logits = clean if clean is not None else ctx.logits(x)
            runs = [(t, None) for t in ranked_targets(logits, y, self.targets)]
        else:
            runs = [(None, None)]
        final = x.clone()
        for aim, goal in runs:
            for _ in range(self.restarts):
                # training: every point, every run; evaluation: the points still unbroken
                act = ActiveSet.everyone(len(x), x.device) if ctx.training else ActiveSet(~tracker.success)
                if not act:
                    return tracker.x_best
                out = self._attack_rows(ctx, x, y, aim, goal, clean, threat, tracker, act)
                if ctx.training and out is not None:
                    final = out
        return final if ctx.training else tracker.x_best


@attacks.register("apgd-ce")
class APGDCE(APGD):
    """APGD on the cross-entropy loss (Croce & Hein 2020), untargeted. Defaults from the
    official code: 100 iterations, 1 restart, rho 0.75."""

    def __init__(self, steps: int = 100, restarts: int = 1, rho: float = 0.75, large_eps: bool = False) -> None:
        self._setup(steps, restarts, "ce", 0, rho, large_eps)


@attacks.register("apgd-dlr")
class APGDDLR(APGD):
    """APGD on the DLR loss (Croce & Hein 2020, Eq. (5)), untargeted; needs >= 3 classes."""

    def __init__(self, steps: int = 100, restarts: int = 1, rho: float = 0.75, large_eps: bool = False) -> None:
        self._setup(steps, restarts, "dlr", 0, rho, large_eps)


@attacks.register("apgd-t")
class APGDT(APGD):
    """Targeted APGD on the targeted DLR loss (Croce & Hein 2020, Eq. (6)), run once per
    each of the ``targets`` most likely wrong classes (AutoAttack's "APGD-T": 9 targets,
    100 iterations, 1 restart per target); needs >= 4 classes and ``targets <= classes - 1``.
    Any misclassification counts as success."""

    def __init__(
        self, steps: int = 100, restarts: int = 1, targets: int = 9, rho: float = 0.75, large_eps: bool = False
    ) -> None:
        check_int(targets, "targets", minimum=1)
        self._setup(steps, restarts, "dlr", targets, rho, large_eps)


@attacks.register("pma")
class PMA(APGD):
    """Probability Margin Attack (Xie et al. 2024, "Towards Million-Scale Adversarial
    Robustness Evaluation With Stronger Individual Attacks", arXiv 2411.15210).

    What is implemented: the probability margin loss ``max_{i != y} p_i - p_y`` with
    ``p = softmax(z)`` (the paper's loss; targeted form ``p_t - max_{i != t} p_i``),
    maximised with the APGD machinery of this module (step size ``2 eps``, momentum
    0.75, checkpoints, restarts from the best point; L1 via L1-APGD).

    How it differs from the authors' code (xieyong0/PMA, ``attacks/MD.py``; also
    OpenTAI/taiadv ``PMA.py``): there the same loss is optimised inside the Margin
    Decomposition schedule of Ma et al. (two runs per restart; step 0 on ``p_y``; until
    half the steps either ``-p_y`` or ``max_{i != y} p_i`` alone; then the full margin;
    sign steps with a cosine step size from ``2 eps``; L-inf only). That schedule is not
    reproduced here. ``targets > 0`` gives a multi-targeted variant (as APGD-T).
    """

    def __init__(
        self, steps: int = 100, restarts: int = 1, targets: int = 0, rho: float = 0.75, large_eps: bool = False
    ) -> None:
        self._setup(steps, restarts, "pm", targets, rho, large_eps)
