"""An adaptive attack on a classifier AND a detector together.

Carlini & Wagner (2017), "Adversarial Examples Are Not Easily Detected: Bypassing Ten
Detection Methods", attack a detector by optimising one loss that both changes the label
and makes the input look natural to the detector; Tramèr, Carlini, Brendel & Madry (2020),
"On Adaptive Attacks to Adversarial Example Defenses", make this the baseline every
detector must be evaluated against. :class:`AdaptivePGD` is PGD (Madry et al. 2018) on::

    L(x') = cls(f(x'), y) + lam * s(x') / score_scale

(with ``selective=True``, the default, the detector term acts only on points whose
label is already wrong at the current iterate: points still classified correctly step on
``cls`` alone, cf. the selective PGD of Bryniarski et al. 2022, "Evading
Adversarial Example Detectors using Orthogonal Projected Gradient Descent"; with
``selective=False`` every point steps on the plain sum). ``cls`` is the cross-entropy (``loss="ce"``) or Carlini & Wagner's logit margin
clipped at ``kappa`` (``loss="margin"``: ``min(max_{j != y} z_j - z_y, kappa)``, which
stops pushing the label once it is wrong by ``kappa`` and lets the detector term act
alone), ``s`` is the detector's score (higher = more in-distribution) and
``score_scale`` (default 1; :func:`robustlab.detect.shifts.shifted_inputs` passes the
standard deviation of the detector's scores on the clean points) makes ``lam``
unit-free.

Why a new attack class and not ``create("pgd", loss=...)``: the template's attack losses
are functions of the logits looked up by name, and the detector needs the model's hidden
features of the same forward pass; a wrapper model whose logits encode the detector would
change the template's success re-check (``argmax`` over the wrapper's outputs). So this
class is a subclass of the template (:class:`robustlab.attacks.base.Attack`: same input
checks, eval mode and frozen parameters, clean-misclassified points skipped, full-precision
success re-check, projection) with its own :meth:`perturb` loop built from the engine's
:class:`~robustlab.attacks.engine.ActiveSet` and the threat model's geometry.

Which iterate is returned: the template counts *misclassification* as success. Within the
loop a point is *done* when it is misclassified AND its score is at least ``threshold``
(the detector's operating threshold, accepted as in-distribution), and it stops there.
Otherwise the best iterate is kept by rank: misclassified with the highest detector score,
else the highest total loss. With ``threshold=None`` no point is done early and the
misclassified iterate with the highest score is returned.

Differentiability: MSP and energy are differentiable as they are; the Mahalanobis score is
differentiated through :meth:`Detector.attack_score` (exact without input preprocessing;
with preprocessing a straight-through / BPDA estimate, Athalye et al. 2018). Forward and
backward counts record one pass per step (Mahalanobis' preprocessing passes not counted);
``amp`` is ignored (full precision).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from robustlab.attacks.base import Attack
from robustlab.attacks.engine import ActiveSet, AttackContext
from robustlab.attacks.threat import ThreatModel
from robustlab.errors import ConfigError
from robustlab.validation import check_bool, check_choice, check_float, check_int

ADAPTIVE_LOSSES = ("ce", "margin")


class AdaptivePGD(Attack):
    """PGD on ``cls(f(x'), y) + lam * s(x') / score_scale`` (see the module docstring).

    Parameters
    ----------
    detector: a fitted :class:`~robustlab.detect.base.Detector`.
    lam: weight of the detector term (0 = plain PGD with the same loop).
    steps, rel_step_size, random_start: as :class:`robustlab.attacks.pgd.PGD` (step
        ``rel_step_size * eps``, default ``2.5 / steps``).
    loss: ``"ce"`` or ``"margin"`` (clipped at ``kappa``).
    kappa: the margin clip (``loss="margin"`` only).
    threshold: detector score at which a misclassified point counts as done (None: run
        every step).
    score_scale: the detector score is divided by it (> 0).
    selective: the detector term only on currently misclassified points (default True).
        Measured on Gaussian blobs with a 1-hidden-layer MLP at L-inf eps 0.2: with the
        plain sum (``selective=False``) and ``lam=1`` PGD broke only 3% of the points
        against MSP (the MSP term pulls towards the true class's confidence), the
        selective loss 100%, 91% of them accepted by the detector.
    """

    norms = ("linf", "l2", "l1")
    targeted_ok = False

    def __init__(
        self,
        detector: Any,
        lam: float = 1.0,
        steps: int = 20,
        rel_step_size: float | None = None,
        random_start: bool = True,
        loss: str = "margin",
        kappa: float = 1.0,
        threshold: float | None = None,
        score_scale: float = 1.0,
        selective: bool = True,
    ) -> None:
        if not hasattr(detector, "attack_score"):
            raise ConfigError(
                f"AdaptivePGD needs a robustlab detector (with attack_score), got {type(detector).__name__}."
            )
        self.detector = detector
        self.lam = check_float(lam, "lam", low=0.0)
        self.steps = check_int(steps, "steps", minimum=1)
        self.rel_step_size = (
            None if rel_step_size is None else check_float(rel_step_size, "rel_step_size", low=0, low_open=True)
        )
        self.random_start = check_bool(random_start, "random_start")
        self.loss = check_choice(loss, "loss", ADAPTIVE_LOSSES)
        self.kappa = check_float(kappa, "kappa", low=0.0)
        self.threshold = None if threshold is None else check_float(threshold, "threshold")
        self.score_scale = check_float(score_scale, "score_scale", low=0.0, low_open=True)
        self.selective = check_bool(selective, "selective")

    def _objective(
        self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample loss, its input gradient, the logits and the detector score."""
        xr = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits, s = self.detector.attack_score(ctx.model, xr)
            logits = logits.float()
            if self.loss == "ce":
                cls = F.cross_entropy(logits, y, reduction="none")
            else:
                z_y = logits.gather(1, y[:, None]).squeeze(1)
                other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
                cls = (other - z_y).clamp_max(self.kappa)
            weight = torch.full_like(cls, self.lam, dtype=torch.float64)
            if self.selective:  # the detector term only where the label is already wrong
                weight = weight * (logits.argmax(1) != y).double()
            total = cls.double() + weight * s.double() / self.score_scale
            (grad,) = torch.autograd.grad(total.sum(), xr)
        ctx.forwards += len(x)
        ctx.backwards += len(x)
        return total.detach(), grad.detach(), logits.detach(), s.detach().double()

    def perturb(
        self,
        ctx: AttackContext,
        x: torch.Tensor,
        y: torch.Tensor,
        threat: ThreatModel,
        target: torch.Tensor | None,
    ) -> torch.Tensor:
        n = len(x)
        alpha = (self.rel_step_size if self.rel_step_size is not None else 2.5 / self.steps) * threat.eps
        best_x = x.detach().clone()
        best_rank = torch.full((n,), -1, dtype=torch.long, device=x.device)
        best_key = torch.full((n,), float("-inf"), dtype=torch.float64, device=x.device)
        act = ActiveSet.everyone(n, x.device)
        xs, ya = x.detach(), y
        xa = threat.random_start(xs, ctx.bounds, ctx.generator) if self.random_start else xs.clone()
        for i in range(self.steps + 1):
            total, grad, logits, s = self._objective(ctx, xa, ya)
            mis = logits.argmax(1) != ya
            accepted = (s >= self.threshold) if self.threshold is not None else torch.zeros_like(mis)
            rank = mis.long() + (mis & accepted).long()
            key = torch.where(mis, s, total)
            rows = act.rows
            better = (rank > best_rank[rows]) | ((rank == best_rank[rows]) & (key >= best_key[rows]))
            better &= best_rank[rows] < 2  # a done point keeps its first accepted iterate
            if bool(better.any()):
                r = rows[better]
                best_x[r] = xa[better].detach().to(best_x.dtype)
                best_rank[r], best_key[r] = rank[better], key[better]
            if i == self.steps:
                break
            done = rank == 2
            xa, xs, ya, grad = act.retire(done, xa, xs, ya, grad)
            if not act:
                break
            step = (
                threat.ascent_direction(grad, sparsity=0.05, x=xa, bounds=ctx.bounds)  # PGD's l1_sparsity
                if threat.norm == "l1"
                else threat.ascent_direction(grad)
            )
            xa = threat.project(xa + alpha * step.to(xa.dtype), xs, ctx.bounds)
        ctx.record_rows("detector_accepted", best_rank == 2, False)
        return best_x


__all__ = ["ADAPTIVE_LOSSES", "AdaptivePGD"]
