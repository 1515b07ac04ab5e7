"""Carlini-Wagner L2 attack (minimum-norm, with a binary search over the trade-off constant).

Carlini & Wagner (2017), "Towards Evaluating the Robustness of Neural Networks"
(IEEE S&P). With the change of variables of Sec. V-A (Eq. (7) of the L2 attack),

    ``x' = lo + (hi - lo) * (tanh(w) + 1) / 2``

which keeps ``x'`` inside the model's input box ``[lo, hi]`` for every real ``w``, Adam
minimises over ``w``

    ``||x' - x||_2^2 + c * f(x')``,   ``f(x') = max(Z(x')_y - max_{j != y} Z(x')_j, -kappa)``

(Eq. (6), objective ``f_6``; targeted: ``max(max_{j != t} Z_j - Z_t, -kappa)``), and a
per-sample binary search over ``c`` finds the smallest constant that still succeeds:
after a search step that found an adversarial iterate the constant moves halfway down
to the largest failing one, otherwise it moves up (x10 while no success is known).

Defaults are those of cleverhans' PyTorch implementation
(``cleverhans/torch/attacks/carlini_wagner_l2.py``): ``steps=1000`` (max_iterations),
``binary_search_steps=5``, ``initial_const=1e-2``, ``lr=5e-3``, ``kappa=0`` (confidence).
As in the authors' code (``nn_robust_attacks/l2_attack.py``), ``w`` and the Adam state
are reset at the start of every binary-search step, and ``abort_early`` stops a search
step once the objective has not decreased by 0.01% over a tenth of the steps; here
that check is made per sample (the authors check the batch total), so one point's
progress never depends on the others in its batch.

``info["min_norm"]`` of the result holds, per point, the smallest adversarial L2 norm
seen (``inf`` where none was found, ``0`` for points misclassified when clean).

Within a threat model (L2 only), a point is broken when an adversarial iterate with
``||x' - x||_2 <= eps`` was seen; the smallest such iterate is returned. Points without
one return the smallest adversarial iterate found at any norm (or ``x``), which the
template projects onto the eps-ball and re-checks.
"""

from __future__ import annotations

import math

import torch

from robustlab.attacks.base import Attack, attacks
from robustlab.attacks.engine import ActiveSet, AttackContext
from robustlab.attacks.losses import margin_loss
from robustlab.attacks.threat import ThreatModel
from robustlab.validation import check_bool, check_float, check_int

_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8
_NO_UPPER = 1e10  # "no successful constant known yet", as in the reference code


def _hinge(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None, kappa: float) -> torch.Tensor:
    """``max(-margin, -kappa)`` per sample (Eq. (6)); ``margin > 0`` iff adversarial."""
    return torch.clamp(-margin_loss(logits, y, target), min=-kappa)


def _adversarial(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None, kappa: float) -> torch.Tensor:
    """Success with confidence ``kappa``: the margin of Eq. (6) is at least ``kappa``
    (for ``kappa = 0``: misclassified / classified as the target)."""
    if target is None:
        shifted = logits.scatter_add(1, y[:, None], torch.full_like(logits[:, :1], kappa))
        return shifted.argmax(1) != y
    shifted = logits.scatter_add(1, target[:, None], torch.full_like(logits[:, :1], -kappa))
    return shifted.argmax(1) == target


@attacks.register("cw-l2")
class CarliniWagnerL2(Attack):
    """Carlini & Wagner's L2 attack (2017), Eq. (6) objective, tanh box, binary search on c.

    Parameters (defaults from cleverhans' PyTorch implementation)
    ----------
    steps: Adam iterations per binary-search step (``max_iterations``).
    binary_search_steps: number of constants tried per point.
    initial_const: the first constant ``c``.
    lr: Adam's learning rate on ``w``.
    kappa: confidence (``kappa = 0`` finds the smallest perturbation).
    abort_early: stop a search step for a point whose objective stalls (see module doc).
    """

    norms = ("l2",)

    def __init__(
        self,
        steps: int = 1000,
        binary_search_steps: int = 5,
        initial_const: float = 1e-2,
        lr: float = 5e-3,
        kappa: float = 0.0,
        abort_early: bool = True,
    ) -> None:
        self.steps = check_int(steps, "steps", minimum=1)
        self.binary_search_steps = check_int(binary_search_steps, "binary_search_steps", minimum=1)
        self.initial_const = check_float(initial_const, "initial_const", low=0, low_open=True)
        self.lr = check_float(lr, "lr", low=0, low_open=True)
        self.kappa = check_float(kappa, "kappa", low=0)
        self.abort_early = check_bool(abort_early, "abort_early")

    def perturb(
        self,
        ctx: AttackContext,
        x: torch.Tensor,
        y: torch.Tensor,
        threat: ThreatModel,
        target: torch.Tensor | None,
    ) -> torch.Tensor:
        n = len(x)
        lo, hi = ctx.bounds
        half, mid = (hi - lo) / 2.0, (hi + lo) / 2.0
        shape1 = (n,) + (1,) * (x.dim() - 1)
        # tanh-space start: x itself (scaled by 0.999999 so atanh stays finite)
        w0 = torch.atanh(((x - mid) / half).clamp(-1.0, 1.0) * 0.999999)

        def filled(value: float) -> torch.Tensor:
            return torch.full((n,), value, dtype=x.dtype, device=x.device)

        const, lower, upper = filled(self.initial_const), filled(0.0), filled(_NO_UPPER)
        best_in, best_in_l2 = x.detach().clone(), filled(math.inf)  # smallest within eps
        best_any, best_any_l2 = x.detach().clone(), filled(math.inf)  # smallest at any norm
        b1, b2 = _ADAM_BETAS
        check_every = max(self.steps // 10, 1)

        def objective(logits: torch.Tensor, y_: torch.Tensor, t_: torch.Tensor | None) -> torch.Tensor:
            return _hinge(logits, y_, t_, self.kappa)

        for _ in range(self.binary_search_steps):
            found = torch.zeros(n, dtype=torch.bool, device=x.device)
            # the state of the points still optimising; points that stall retire (abort_early)
            act = ActiveSet.everyone(n, x.device)
            w, xa, ya, ta = w0.clone(), x, y, target
            ca = const.reshape(shape1)
            m, v = torch.zeros_like(w), torch.zeros_like(w)
            prev = filled(math.inf)
            for step in range(self.steps):
                th = torch.tanh(w)
                x_adv = mid + half * th
                f, grad_f, logits = ctx.value_and_grad(x_adv, objective, ya, ta)
                diff = x_adv - xa
                l2sq = diff.reshape(len(act), -1).pow(2).sum(1)
                # record the current iterate (before the step), as the reference code does
                ok = _adversarial(logits, ya, ta, self.kappa)
                if bool(ok.any()):
                    l2 = l2sq.sqrt()
                    act.scatter(found, True, ok)
                    better = ok & (l2 < act.gather(best_any_l2))
                    act.scatter(best_any_l2, l2, better)
                    act.scatter(best_any, x_adv, better)
                    inside = ok & (l2 <= threat.eps) & (l2 < act.gather(best_in_l2))
                    act.scatter(best_in_l2, l2, inside)
                    act.scatter(best_in, x_adv, inside)
                # Adam step on w (chain rule through the tanh box)
                g = (2.0 * diff + ca * grad_f) * (half * (1.0 - th * th))
                t = step + 1
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                denom = (v / (1 - b2**t)).sqrt_().add_(_ADAM_EPS)
                w = w - (self.lr / (1 - b1**t)) * m / denom
                if self.abort_early and step % check_every == 0:
                    total = l2sq + ca.reshape(-1) * f
                    stalled = ~(total <= prev * 0.9999)
                    prev = total
                    w, xa, ya, ta, ca, m, v, prev = act.retire(stalled, w, xa, ya, ta, ca, m, v, prev)
                    if not act:
                        break
            # binary search on the constant (reference code's update)
            upper = torch.where(found, torch.minimum(upper, const), upper)
            lower = torch.where(found, lower, torch.maximum(lower, const))
            known = upper < _NO_UPPER * 0.1
            const = torch.where(known, (lower + upper) / 2, torch.where(found, const, const * 10))
        # the smallest adversarial L2 norm seen per point (inf: none found)
        ctx.record_rows("min_norm", best_any_l2, fill=0.0)
        inside = (best_in_l2 < math.inf).reshape(shape1)
        return torch.where(inside, best_in, best_any)


__all__ = ["CarliniWagnerL2"]
