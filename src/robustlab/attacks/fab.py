"""Fast Adaptive Boundary attack: untargeted FAB and targeted FAB-T, for L-inf, L2 and L1.

Croce & Hein (2020), "Minimally distorted Adversarial Examples with a Fast Adaptive
Boundary Attack" (ICML). FAB is a *minimum-norm* attack: it walks towards the closest
point of the decision boundary by repeatedly projecting onto the linearised boundary
intersected with the input box, biased back towards the original input, with an
overshoot ``eta`` and a backward step ``beta`` after each success (the paper's
Algorithm 1; the update rules are written out in :class:`FAB`). Defaults are those of
the official code (fra31/auto-attack ``fab_base.py``, version "standard" of
AutoAttack): ``n_restarts=1``, ``n_iter=100``, ``eta=1.05``, ``beta=0.9``,
``alpha_max=0.1``, ``n_target_classes=9``; random restarts start at
``0.5 * min(best norm, eps)`` from the input.

The sub-problem that makes FAB exact on linear models lives here too:
:func:`project_hyperplane_box`, the minimum-Lp-norm step onto ``{z : <w, z> = b}``
intersected with the box (FAB's own projection, not the ball projection of
:class:`~robustlab.attacks.threat.ThreatModel`).

>>> from robustlab import attacks
>>> from robustlab.attacks.fab import fab_min_norm
>>> r = attacks.create("fab-t")(model, x, y, attacks.ThreatModel("l2", 0.5))
>>> found = fab_min_norm(model, x, y, "l2")   # smallest perturbation found, no budget
>>> found.norm                                 # per point (inf where none was found)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from robustlab.attacks.base import Attack, attacks
from robustlab.attacks.engine import ActiveSet, AttackContext, attack_mode, is_success, model_bounds
from robustlab.attacks.losses import margin_loss
from robustlab.attacks.threat import Bounds, ThreatModel, _flat_norm, _per_sample, draw
from robustlab.errors import ConfigError
from robustlab.validation import check_float, check_inputs, check_int, check_labels, check_shape

# AutoAttack's defaults for the random-start radius when no budget is given (fab_base.py).
DEFAULT_START_EPS = {"linf": 0.3, "l2": 1.0, "l1": 5.0}
_FAB_NORMS = ("linf", "l2", "l1")
_EXCLUDED = 1e10  # the true class's logit difference: never the closest boundary


# -- norms -------------------------------------------------------------------------------
def _dual_norm(g: torch.Tensor, norm: str) -> torch.Tensor:
    """Dual norm over the last axis: ``||g||_1`` for L-inf, ``||g||_2`` for L2, ``||g||_inf`` for L1.

    The Lp distance from a point to the hyperplane ``<g, z> = c`` is ``|<g, x> - c| / ||g||_q``
    with ``1/p + 1/q = 1`` (the distance FAB uses to pick the closest linearised boundary).
    """
    if norm == "linf":
        return g.abs().sum(-1)
    if norm == "l2":
        return g.norm(p=2, dim=-1)
    return g.abs().amax(-1)


# -- FAB's sub-problem: projection onto hyperplane ∩ box -----------------------------------
def project_hyperplane_box(
    t: torch.Tensor, w: torch.Tensor, b: torch.Tensor, bounds: Bounds, norm: str
) -> torch.Tensor:
    """Minimum-norm step from ``t`` onto the hyperplane ``<w, z> = b`` inside the box.

    Solves, row by row (``t``, ``w``: ``(N, D)``, ``b``: ``(N,)``),

        ``min_d ||d||_p  s.t.  <w, t + d> = b,  lo <= t + d <= hi``

    for ``p`` in ``{inf, 2, 1}`` (Croce & Hein 2020: the projection onto the linearised
    boundary intersected with the box that FAB applies at every step). Write ``c = <w, t> - b`` and let ``u = sign(c) w``: each coordinate
    moves ``m_i >= 0`` against ``sign(u_i)``, at most ``cap_i`` (its distance to the box
    face it moves towards), and ``sum_i |u_i| m_i = |c|`` is required. Then

    * L2 (KKT): ``m_i = min(lambda |u_i|, cap_i)``;
    * L-inf: ``m_i = min(r, cap_i)`` (every coordinate moves as far as the radius allows);
    * L1 (fractional knapsack): coordinates in decreasing ``|u_i|`` move to their cap
      until the last one closes the gap;

    and the scalar ``lambda`` / ``r`` / cut-off is found exactly: for L2 and L-inf by
    Newton steps on the piecewise-linear ``h`` (:func:`_piecewise_linear_root`, a few
    passes over the coordinates, no sort), for L1 from the breakpoints sorted once and one
    cumulative sum (the official code, ``fab_projections.py``, sorts the breakpoints and
    bisects over them; same solution up to float summation order). When the box does not reach the
    hyperplane, every coordinate moves to its cap (the box vertex closest to the
    hyperplane), as in the official code. Coordinates with ``w_i = 0`` never move.

    Returns ``d`` with the shape of ``t``.
    """
    if norm not in _FAB_NORMS:
        raise ConfigError(f"FAB projects for norms {', '.join(_FAB_NORMS)}, not {norm!r}.")
    lo, hi = bounds
    c = (w * t).sum(1) - b
    gap = c.abs()
    # Masks are carried as 0/1 floats and selections written as products: on the CPU,
    # torch.where and boolean tensors cost 5-20x a float multiply at FAB's sizes, and
    # x * 1 = x, x * 0 = 0, x + 0 = x keep every selected value bit-exact.
    u = w * torch.where(c >= 0, 1.0, -1.0).to(t.dtype)[:, None]  # sign(c) w, exactly
    su, au = u.sign(), u.abs()
    down, up = su.clamp_min(0), (-su).clamp_min(0)  # moves towards lo / towards hi (1.0 or 0.0)
    # distance to the face each coordinate moves towards (0 for coordinates that do not move)
    cap = ((t - lo) * down + (hi - t) * up).clamp_min(0)
    rate_cap = au * cap  # decrease of <u, z> bought by moving a coordinate to its cap
    feasible = rate_cap.sum(1) >= gap
    tiny = torch.finfo(t.dtype).tiny

    if norm == "l1":
        order = au.argsort(1, descending=True)
        au_s, cap_s, rc_s = au.gather(1, order), cap.gather(1, order), rate_cap.gather(1, order)
        cum = rc_s.cumsum(1)
        k = (cum < gap[:, None]).sum(1).clamp_max(t.shape[1] - 1)  # first coordinate that closes it
        before = torch.where(k > 0, cum.gather(1, (k - 1).clamp_min(0)[:, None]).squeeze(1), 0.0)
        last = ((gap - before) / au_s.gather(1, k[:, None]).squeeze(1).clamp_min(tiny))
        last = torch.minimum(last.clamp_min(0), cap_s.gather(1, k[:, None]).squeeze(1))
        pos = torch.arange(t.shape[1], device=t.device)[None, :]
        m_s = torch.where(pos < k[:, None], cap_s, torch.zeros_like(cap_s))
        m_s = m_s.scatter(1, k[:, None], last[:, None])
        m = torch.empty_like(m_s).scatter_(1, order, m_s)
    else:
        # L2: breakpoints lambda_i = cap_i / |u_i|, h(lambda) = sum |u_i| min(lambda |u_i|, cap_i);
        # L-inf: breakpoints r_i = cap_i, h(r) = sum |u_i| min(r, cap_i)
        brk = cap / au.clamp_min(tiny) if norm == "l2" else cap  # cap = 0 where u_i = 0
        slope = au * au if norm == "l2" else au
        scale = _piecewise_linear_root(brk, slope, rate_cap, gap, tiny)[:, None]
        m = torch.minimum(scale * au if norm == "l2" else scale.expand_as(cap), cap)
    far = (~feasible).nonzero().squeeze(1)  # the box does not reach the plane: every coordinate to its cap
    if len(far):
        m = m.clone()
        m[far] = cap[far]
    return -su * m


def _piecewise_linear_root(
    brk: torch.Tensor, slope: torch.Tensor, rate_cap: torch.Tensor, gap: torch.Tensor, tiny: float
) -> torch.Tensor:
    """Per row, the root ``s >= 0`` of ``h(s) = sum_i min(s slope_i, rate_cap_i) = gap`` with
    ``rate_cap_i = slope_i brk_i``: concave, non-decreasing, linear between the breakpoints
    ``brk_i``. Newton's method from ``s = 0`` on the exact pieces:
    ``s <- (gap - sum_{brk_i <= s} rate_cap_i) / sum_{brk_i > s} slope_i``. On a concave
    function it never passes the root, and it stops on the linear piece that holds the root
    (no breakpoint crossed by the last step), where the formula is exact; every step that
    does not stop moves at least one breakpoint into the capped set, so it ends within
    ``D + 1`` steps (3-4 on FAB's MNIST iterates). It replaces a sort of the breakpoints
    (the official code's ``fab_projections.py`` sorts them and bisects): same solution,
    sums taken in coordinate order rather than sorted order. Rows whose box does not reach
    the plane get the largest breakpoint's value or more; the caller caps them."""
    s = torch.zeros_like(gap)
    free = (brk - s[:, None]).sign().clamp_min(0)  # 1.0 where brk_i > s (not yet capped)
    count = free.sum(1)
    for _ in range(brk.shape[1] + 1):
        capped = (rate_cap * (1 - free)).sum(1)
        rest = (slope * free).sum(1)
        s = torch.maximum(((gap - capped) / rest.clamp_min(tiny)).clamp_min(0), s)
        free = (brk - s[:, None]).sign().clamp_min(0)
        new_count = free.sum(1)
        if bool((new_count == count).all()):
            break
        count = new_count
    return s


# -- counted linearisations ----------------------------------------------------------------
def _class_differences(
    ctx: AttackContext, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logit differences ``f_j - f_y`` and their input gradients for every class ``j``
    (from :meth:`AttackContext.jacobian`: one forward pass and one backward pass per
    class). Returns ``(df (N, K), dg (N, K, D))`` with ``df[:, y]`` set to a huge value
    so the true class is never the closest boundary."""
    n = len(x)
    rows = torch.arange(n, device=x.device)
    logits, jac = ctx.jacobian(x)
    jac = jac.reshape(n, logits.shape[1], -1)
    df = logits - logits[rows, y][:, None]
    df[rows, y] = _EXCLUDED
    return df, jac - jac[rows, y][:, None]


def _pair_difference(logits: torch.Tensor, y: torch.Tensor, aim: torch.Tensor) -> torch.Tensor:
    """``f_aim - f_y`` per sample (FAB-T's single boundary, official code's targeted mode)."""
    return logits.gather(1, aim[:, None]).squeeze(1) - logits.gather(1, y[:, None]).squeeze(1)


# -- the attack ------------------------------------------------------------------------------
@attacks.register("fab")
class FAB(Attack):
    """Untargeted Fast Adaptive Boundary attack (Croce & Hein 2020, Algorithm 1).

    At each iterate ``x1`` the boundary to the class ``j`` whose linearised boundary is
    closest, ``argmin_j |f_j - f_y| / ||grad(f_j - f_y)||_q`` (``q`` the dual norm), is
    linearised; FAB projects both ``x1`` and the original ``x0`` onto that hyperplane ∩ box
    (``d1``, ``d2``, :func:`project_hyperplane_box`) and takes the biased step

        ``x1 <- clip((1 - a)(x1 + eta d1) + a (x0 + eta d2))``,
        ``a = min(||d1|| / (||d1|| + ||d2||), alpha_max)``;

    every time ``x1`` is misclassified it is recorded if it is the smallest perturbation
    so far and pulled back, ``x1 <- x0 + beta (x1 - x0)``. Restarts after the
    first start from a random point at distance ``0.5 * min(best norm, eps)`` of ``x0``.

    Within a threat model, a point counts as broken when the smallest adversarial
    perturbation found has norm ``<= eps``; broken points are not attacked by later
    restarts/targets, and unbroken points are returned unchanged (as the official code).
    A broken point also stops being computed within the current run (the official code
    keeps refining its norm until the run ends, which cannot change whether it is
    broken). ``info["min_norm"]`` of the result holds the smallest adversarial norm found
    per point (``inf``: none; ``0``: misclassified when clean). :func:`fab_min_norm`
    instead spends every run on every point and returns the smallest norm found per point.

    Parameters (defaults from fra31/auto-attack ``fab_base.py``)
    ----------
    n_restarts: runs per point (the first from ``x0``, later ones from random starts).
    n_iter: iterations per run.
    eta: overshoot of the projection step (> 1 crosses the boundary).
    beta: backward step towards ``x0`` after a success, in (0, 1].
    alpha_max: largest weight ``a`` of the step from ``x0``, in [0, 1].
    """

    norms = _FAB_NORMS
    def __init__(
        self,
        n_restarts: int = 1,
        n_iter: int = 100,
        eta: float = 1.05,
        beta: float = 0.9,
        alpha_max: float = 0.1,
    ) -> None:
        self.n_restarts = check_int(n_restarts, "n_restarts", minimum=1)
        self.n_iter = check_int(n_iter, "n_iter", minimum=1)
        self.eta = check_float(eta, "eta", low=0, low_open=True)
        self.beta = check_float(beta, "beta", low=0, high=1, low_open=True)
        self.alpha_max = check_float(alpha_max, "alpha_max", low=0, high=1)

    # the runs a point goes through: (kind, class per point or None)
    def _runs(
        self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None
    ) -> list[tuple[str, torch.Tensor | None]]:
        if target is not None:
            return [("target", target)]
        return [("untargeted", None)]

    def perturb(
        self,
        ctx: AttackContext,
        x: torch.Tensor,
        y: torch.Tensor,
        threat: ThreatModel,
        target: torch.Tensor | None,
    ) -> torch.Tensor:
        best, best_norm = self.search(ctx, x, y, threat, target, stop_at=threat.eps)
        # the smallest adversarial norm found per point (inf: none found; an upper bound on
        # the minimal norm, since a point stops being refined once it is within eps)
        ctx.record_rows("min_norm", best_norm, fill=0.0)
        found = _per_sample(best_norm <= threat.eps, x)
        return torch.where(found, best, x)

    def search(
        self,
        ctx: AttackContext,
        x: torch.Tensor,
        y: torch.Tensor,
        threat: ThreatModel,
        target: torch.Tensor | None,
        stop_at: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All runs of FAB on ``x``; returns the smallest adversarial found per point and its
        norm (``inf`` where none was found). A point whose best norm is ``<= stop_at`` stops
        being computed (within the current run and in later runs). ``threat`` gives the
        norm and the start radius (its eps)."""
        best = x.detach().clone()
        best_norm = torch.full((len(x),), math.inf, dtype=x.dtype, device=x.device)
        for kind, cls in self._runs(ctx, x, y, target):
            for restart in range(self.n_restarts):
                act = ActiveSet(best_norm > stop_at)
                if not act:
                    return best, best_norm
                self._run(ctx, x, y, cls, kind, threat, restart > 0, best, best_norm, act, stop_at)
        return best, best_norm

    def _linearise(
        self,
        ctx: AttackContext,
        x1: torch.Tensor,
        y: torch.Tensor,
        cls: torch.Tensor | None,
        kind: str,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``df (N, J)`` and ``dg (N, J, D)``: the boundaries FAB may step to."""
        if kind == "untargeted":
            return _class_differences(ctx, x1, y)
        assert cls is not None
        if kind == "steer":  # FAB-T: the boundary between y and the aimed class
            val, grad, _ = ctx.value_and_grad(x1, _pair_difference, y, cls)
        else:  # an explicit target: the boundary between it and the strongest other class
            val, grad, _ = ctx.value_and_grad(x1, margin_loss, y, cls)
        return val[:, None], grad.reshape(len(x1), 1, -1)

    def _run(
        self,
        ctx: AttackContext,
        x: torch.Tensor,
        y: torch.Tensor,
        cls: torch.Tensor | None,
        kind: str,
        threat: ThreatModel,
        random_start: bool,
        best: torch.Tensor,
        best_norm: torch.Tensor,
        act: ActiveSet,
        stop_at: float,
    ) -> None:
        """One FAB run (Algorithm 1) for the rows of ``act`` (``x``, ``y``, ``cls``,
        ``best``, ``best_norm`` are the searched batch's tensors); updates ``best`` and
        ``best_norm``. Rows whose best norm falls to ``<= stop_at`` retire from the run
        (their trajectory no longer matters; the others' do not depend on them)."""
        norm, bounds = threat.norm, ctx.bounds
        x0, y, cls = act.gather(x), act.gather(y), act.gather(cls)
        goal = cls if kind == "target" else None
        x1 = x0.clone()
        if random_start:
            x1 = threat.clip_to_box(x0 + _random_direction(x0, norm, ctx.generator) * _per_sample(
                0.5 * act.gather(best_norm).clamp_max(threat.eps), x0), bounds)
        for _ in range(self.n_iter):
            n = len(x0)
            x0f, ar = x0.reshape(n, -1), torch.arange(n, device=x0.device)
            df, dg = self._linearise(ctx, x1, y, cls, kind)
            dist = df.abs() / (_dual_norm(dg, norm) + 1e-12)
            j = dist.argmin(1)
            w = dg[ar, j]
            x1f = x1.reshape(n, -1)
            b = (w * x1f).sum(1) - df[ar, j]
            d = project_hyperplane_box(
                torch.cat((x1f, x0f)), torch.cat((w, w)), torch.cat((b, b)), bounds, norm
            )
            d1, d2 = d[:n], d[n:]
            a1 = _flat_norm(d1, norm).clamp_min(1e-8)
            a2 = _flat_norm(d2, norm).clamp_min(1e-8)
            alpha = (a1 / (a1 + a2)).clamp(0.0, self.alpha_max)[:, None]
            step = (x1f + self.eta * d1) * (1 - alpha) + (x0f + self.eta * d2) * alpha
            x1 = threat.clip_to_box(step.reshape(x0.shape), bounds)
            adv = is_success(ctx.logits(x1), y, goal)
            if bool(adv.any()):
                size = _flat_norm(x1 - x0, norm)
                better = adv & (size < act.gather(best_norm))
                if bool(better.any()):
                    act.scatter(best, x1, better)
                    act.scatter(best_norm, size, better)
                back = adv.nonzero().squeeze(1)  # pulled back towards x0 (rows, not a where: faster on CPU)
                x1[back] = x0[back] + self.beta * (x1[back] - x0[back])
                done = ~(act.gather(best_norm) > stop_at)
                x0, x1, y, cls, goal = act.retire(done, x0, x1, y, cls, goal)
                if not act:
                    return


@attacks.register("fab-t")
class FABT(FAB):
    """Targeted FAB, FAB-T (Croce & Hein 2020; the version in AutoAttack's standard suite).

    One FAB run per target class: the 2nd, 3rd, ... ``(n_target_classes + 1)``-th highest
    clean logits (capped at the number of classes - 1). A run steers along the single
    boundary ``f_t = f_y`` but accepts any misclassification as a success, as the
    official code does; points broken within eps are not attacked by later targets.
    When the caller passes ``target``, FAB runs towards that class only and success means
    being classified as it (the boundary is then ``f_t = max_{j != t} f_j``).

    Parameters: as :class:`FAB`, plus ``n_target_classes`` (default 9, as in AutoAttack).
    """

    def __init__(
        self,
        n_restarts: int = 1,
        n_iter: int = 100,
        eta: float = 1.05,
        beta: float = 0.9,
        alpha_max: float = 0.1,
        n_target_classes: int = 9,
    ) -> None:
        super().__init__(n_restarts=n_restarts, n_iter=n_iter, eta=eta, beta=beta, alpha_max=alpha_max)
        self.n_target_classes = check_int(n_target_classes, "n_target_classes", minimum=1)

    def _runs(
        self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None
    ) -> list[tuple[str, torch.Tensor | None]]:
        if target is not None:
            return [("target", target)]
        clean = getattr(ctx, "clean_logits", None)  # row-aligned clean logits, when the template has them
        if clean is None or len(clean) != len(x):
            clean = ctx.logits(x)
        ranked = clean.scatter(1, y[:, None], float("-inf")).argsort(1, descending=True)
        k = min(self.n_target_classes, ranked.shape[1] - 1)
        return [("steer", ranked[:, i]) for i in range(k)]


def _random_direction(x: torch.Tensor, norm: str, generator: torch.Generator | None) -> torch.Tensor:
    """A random direction of unit Lp norm per sample, drawn as in the official code
    (uniform in [-1, 1]^d for L-inf, Gaussian for L2 and L1)."""
    t = 2 * draw(x.shape, x, generator) - 1 if norm == "linf" else draw(x.shape, x, generator, normal=True)
    return t / _per_sample(_flat_norm(t, norm).clamp_min(1e-12), t)


# -- minimum norm, without a budget -------------------------------------------------------------
@dataclass
class MinNorm:
    """Smallest adversarial perturbation a minimum-norm attack found per point.

    ``x_adv``: the adversarial inputs (``x`` where none was found); ``norm``: their
    distance to ``x`` in the attack's norm (``0`` for points already misclassified, or
    already of the target class; ``inf`` where none was found); ``forwards``/``backwards``:
    model passes spent.
    """

    x_adv: torch.Tensor
    norm: torch.Tensor
    forwards: int = 0
    backwards: int = 0


def fab_min_norm(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    norm: str = "l2",
    *,
    targeted: bool = True,
    target: torch.Tensor | None = None,
    n_target_classes: int = 9,
    n_restarts: int = 1,
    n_iter: int = 100,
    eta: float = 1.05,
    beta: float = 0.9,
    alpha_max: float = 0.1,
    start_eps: float | None = None,
    generator: torch.Generator | None = None,
) -> MinNorm:
    """Run FAB (``targeted=True``: FAB-T) with no budget and return the smallest adversarial
    perturbation found for every point (Croce & Hein 2020; see :class:`FAB`, :class:`FABT`).

    Every run (every target class, every restart) is spent on every point, so the result
    is the minimum over all of them. ``start_eps`` is the random-start radius of restarts
    after the first (default: AutoAttack's 0.3 for L-inf, 1.0 for L2, 5.0 for L1).
    ``norm`` must be one the threat models support. Inputs are validated and the model
    is put in eval mode (and restored) as for any attack.
    """
    if targeted:
        attack: FAB = FABT(n_restarts, n_iter, eta, beta, alpha_max, n_target_classes)
    else:
        attack = FAB(n_restarts, n_iter, eta, beta, alpha_max)
    probe = ThreatModel(norm, 1e-3)  # validates the norm name
    eps = DEFAULT_START_EPS[probe.norm] if start_eps is None else start_eps
    threat = ThreatModel(probe.norm, eps)
    bounds = model_bounds(model)
    check_inputs(x, bounds=bounds)
    expected = getattr(model, "input_shape", None)
    if expected is not None:
        check_shape(x, expected)
    ctx = AttackContext(model, bounds, generator)
    with attack_mode(model):
        clean = ctx.logits(x)
        num_classes = int(getattr(model, "num_classes", clean.shape[1]))
        check_labels(y, num_classes, n=len(x))
        y = y.to(x.device).long()
        if target is not None:
            check_labels(target, num_classes, n=len(x), name="target")
            target = target.to(x.device).long()
        done = is_success(clean, y, target)
        x_adv = x.detach().clone()
        sizes = torch.where(
            done,
            torch.zeros((), dtype=x.dtype, device=x.device),
            torch.full((), math.inf, dtype=x.dtype, device=x.device),
        )
        act = ActiveSet(~done)
        if act:
            best, best_norm = attack.search(
                ctx, act.gather(x).detach(), act.gather(y), threat, act.gather(target), stop_at=0.0
            )
            act.scatter(x_adv, best)
            act.scatter(sizes, best_norm)
    return MinNorm(x_adv=x_adv, norm=sizes, forwards=ctx.forwards, backwards=ctx.backwards)


__all__ = ["FAB", "FABT", "MinNorm", "fab_min_norm", "project_hyperplane_box"]
