"""Square Attack: a score-based black-box attack by random search (L-inf and L2).

Andriushchenko, Croce, Flammarion & Hein (2020), "Square Attack: a query-efficient
black-box adversarial attack via random search" (ECCV). Only the model's outputs are
used (no gradients): at each iteration a random square window of the current
perturbation is resampled (Algorithm 1; L-inf update of Algorithm 2, L2 update of
Algorithm 3), and the candidate is kept if it lowers the margin loss
``z_y - max_{j != y} z_j`` (or the point becomes misclassified). The window covers a
fraction ``p`` of the pixels, halved on the official code's schedule (Sec. 3).

Defaults follow the official code (fra31/auto-attack ``square.py``): ``n_queries=5000``,
``p_init=0.8``, one restart, margin loss, the schedule of ``p`` rescaled to
``n_queries`` (the class default ``resc_schedule=True``; AutoAttack's "standard"
ensemble builds Square with ``n_queries=5000, resc_schedule=False``), the
vertical-stripe initialisation for L-inf and the centred grid of square patterns for
L2.

Vectors ``(N, D)`` are treated as one-pixel-high images: a "square" is then a
contiguous segment covering a fraction ``p`` of the coordinates, and the L2 pattern its
one-dimensional analogue.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F

from robustlab.attacks.base import Attack, attacks
from robustlab.attacks.engine import ActiveSet, AttackContext, is_success
from robustlab.attacks.losses import margin_loss
from robustlab.attacks.threat import ThreatModel, draw
from robustlab.validation import check_bool, check_choice, check_float, check_int

# p_selection of the official code: iteration thresholds (out of 10,000) where p halves
_P_SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
SQUARE_LOSSES = ("margin", "ce")


def p_selection(p_init: float, it: int, n_queries: int, rescale: bool = True) -> float:
    """Window fraction at iteration ``it`` (official code's ``p_selection``): ``p_init``
    halved after iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 of a
    10,000-query run; with ``rescale`` those thresholds scale to ``n_queries``."""
    if rescale:
        it = int(it / n_queries * 10000)
    halvings = sum(1 for t in _P_SCHEDULE if it > t)
    return p_init / 2**halvings


def _as_image(x: torch.Tensor) -> torch.Tensor:
    """View ``x`` as ``(N, C, H, W)``: vectors become ``(N, 1, 1, D)``, sequences ``(N, C, 1, L)``."""
    if x.dim() == 4:
        return x
    if x.dim() == 3:
        return x.unsqueeze(2)
    return x.reshape(len(x), 1, 1, -1)


def _centred_rectangles(rows: int, cols: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Nested rectangles around the centre, rectangle ``k`` weighted ``1/(k+1)^2``,
    normalised to unit L2 norm (the official code's ``eta_rectangles``)."""
    if rows == 0 or cols == 0:
        return torch.zeros(rows, cols, dtype=dtype, device=device)
    ci, cj = rows // 2, cols // 2
    levels = max(ci, cj) + 1
    i = torch.arange(rows, device=device)[:, None]
    j = torch.arange(cols, device=device)[None, :]
    ring = torch.maximum((i - ci).abs(), (j - cj).abs())  # the first rectangle that covers (i, j)
    weights = 1.0 / torch.arange(1, levels + 1, dtype=dtype, device=device) ** 2
    tail = weights.flip(0).cumsum(0).flip(0)  # sum_{k >= r} 1/(k+1)^2
    pattern = tail[ring]
    return pattern / pattern.norm()


def _signs(shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.where(draw(shape, like, generator) < 0.5, -1.0, 1.0).to(like.dtype)


def _randint(high: int, generator: torch.Generator | None) -> int:
    """Uniform integer in ``[0, high]``."""
    g_dev = generator.device if generator is not None else torch.device("cpu")
    return int(torch.randint(0, high + 1, (1,), generator=generator, device=g_dev))


def _eta(
    size: tuple[int, int],
    like: torch.Tensor,
    generator: torch.Generator | None,
    cache: dict[tuple[int, int], torch.Tensor],
) -> torch.Tensor:
    """The L2 update pattern of a window (official code's ``eta``): two halves of centred
    rectangles with opposite signs, unit L2 norm, randomly transposed (flipped in 1-D).
    ``cache`` keeps the unflipped pattern per window size for the duration of a run."""
    sh, sw = size
    flip = bool(draw((1,), like, generator) > 0.5)
    pattern = cache.get(size)
    if pattern is None:
        dt, dev = like.dtype, like.device
        if sh == 1:  # one-dimensional window: split along its only axis
            half = sw // 2
            parts = (_centred_rectangles(1, half, dt, dev), -_centred_rectangles(1, sw - half, dt, dev))
            pattern = torch.cat(parts, 1)
        else:
            half = sh // 2
            parts = (_centred_rectangles(half, sw, dt, dev), -_centred_rectangles(sh - half, sw, dt, dev))
            pattern = torch.cat(parts, 0)
        pattern = pattern / pattern.norm().clamp_min(1e-12)
        cache[size] = pattern
    if not flip:
        return pattern
    return pattern.flip(1) if sh == 1 else pattern.t()


@attacks.register("square")
class Square(Attack):
    """Square Attack (Andriushchenko et al. 2020), score-based and gradient-free.

    Each iteration draws one window position (shared by the batch, as in the official
    code) and, per image, new random signs per channel; only still-unbroken points are
    queried. L-inf (Algorithm 2): the window is set to ``x ± eps`` (one sign per channel);
    the start is vertical stripes ``x ± eps`` (one sign per column and channel). L2
    (Algorithm 3): the window receives a fresh centred pattern ``eta`` plus its old
    content, mass is taken from a second random window, and the perturbation is rescaled
    to norm ``eps``; the start is a centred 5x5 grid of such patterns. Every candidate is
    projected onto the ball ∩ box by the threat model.

    Parameters (defaults from the official code)
    ----------
    n_queries: iterations per restart (each one query of the still-unbroken points; the
        start costs one more query per point).
    p_init: initial fraction of pixels the window covers, in (0, 1].
    n_restarts: runs; later runs attack only points still unbroken.
    loss: ``"margin"`` (``z_y - max_{j != y} z_j``; targeted: ``max_{j != t} z_j - z_t``)
        or ``"ce"`` (minus cross-entropy; targeted: cross-entropy to the target). The
        official code always uses cross-entropy when targeted; here ``loss`` applies to
        both modes.
    resc_schedule: rescale the schedule of ``p`` to ``n_queries``.
    """

    norms = ("linf", "l2")
    black_box: ClassVar[bool] = True  # uses model outputs only

    def __init__(
        self,
        n_queries: int = 5000,
        p_init: float = 0.8,
        n_restarts: int = 1,
        loss: str = "margin",
        resc_schedule: bool = True,
    ) -> None:
        self.n_queries = check_int(n_queries, "n_queries", minimum=1)
        self.n_restarts = check_int(n_restarts, "n_restarts", minimum=1)
        self.p_init = check_float(p_init, "p_init", low=0, high=1, low_open=True)  # official default 0.8
        self.loss = check_choice(loss, "loss", SQUARE_LOSSES)
        self.resc_schedule = check_bool(resc_schedule, "resc_schedule")

    # -- scores ---------------------------------------------------------------------------
    def _query(
        self,
        ctx: AttackContext,
        img: torch.Tensor,
        shape: torch.Size,
        y: torch.Tensor,
        target: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One counted query: the loss to minimise and the success mask."""
        logits = ctx.logits(img.reshape((len(img),) + tuple(shape[1:])))
        if self.loss == "margin":
            loss = -margin_loss(logits, y, target)
        elif target is None:
            loss = -F.cross_entropy(logits, y, reduction="none")
        else:
            loss = F.cross_entropy(logits, target, reduction="none")
        return loss, is_success(logits, y, target)

    def _window(self, p: float, h: int, w: int, c: int, l2: bool) -> tuple[int, int]:
        """Window size for fraction ``p``: a square of side ``round(sqrt(p h w))`` (at least
        1 for L-inf, an odd side >= 3 for L2, as in the official code), or a segment of
        ``round(p w)`` coordinates for one-pixel-high inputs; never larger than the input."""
        if h == 1:
            s = int(round(p * w))
            limit = w
        else:
            s = int(round(math.sqrt(p * h * w)))
            limit = min(h, w)
        if l2:
            s = max(s, 3)
            if s % 2 == 0:
                s += 1
        s = max(min(s, limit), 1)
        return (1, s) if h == 1 else (s, s)

    # -- the attack -----------------------------------------------------------------------
    def perturb(
        self,
        ctx: AttackContext,
        x: torch.Tensor,
        y: torch.Tensor,
        threat: ThreatModel,
        target: torch.Tensor | None,
    ) -> torch.Tensor:
        img = _as_image(x)
        x_best = img.clone()
        success = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        for restart in range(self.n_restarts):
            act = ActiveSet(~success)  # later runs attack only the points still unbroken
            if not act:
                break
            xb, ok = self._run(ctx, act.gather(img), x.shape, act.gather(y), act.gather(target), threat)
            # the first run's best points are kept; a later run replaces them where it succeeds
            act.scatter(x_best, xb, ok if restart > 0 else None)
            act.scatter(success, True, ok)
        return x_best.reshape(x.shape)

    def _run(
        self,
        ctx: AttackContext,
        x: torch.Tensor,
        shape: torch.Size,
        y: torch.Tensor,
        target: torch.Tensor | None,
        threat: ThreatModel,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One restart on images ``x (n, C, H, W)``: returns the best points and success."""
        n, c, h, w = x.shape
        eps, bounds, gen = threat.eps, ctx.bounds, ctx.generator
        l2 = threat.norm == "l2"
        patterns: dict[tuple[int, int], torch.Tensor] = {}
        if l2:
            x_best = threat.project(x + eps * _l2_unit(self._l2_init(x, gen, patterns)), x, bounds)
        else:
            x_best = threat.project(x + eps * _signs((n, c, 1, w), x, gen), x, bounds)
        loss_best, success = self._query(ctx, x_best, shape, y, target)
        # the state of the still-unbroken points; broken points retire
        act = ActiveSet(~success)
        xa, xb, ya, lb = act.gather(x), act.gather(x_best), act.gather(y), act.gather(loss_best)
        ta = act.gather(target)
        for it in range(self.n_queries):
            if not act:
                break
            p = p_selection(self.p_init, it, self.n_queries, self.resc_schedule)
            sh, sw = self._window(p, h, w, c, l2)
            vh, vw = _randint(h - sh, gen), _randint(w - sw, gen)
            if l2:
                cand = self._l2_candidate(xa, xb, (sh, sw), (vh, vw), eps, gen, patterns)
            else:
                cand = xb.clone()
                cand[:, :, vh:vh + sh, vw:vw + sw] += 2 * eps * _signs((len(act), c, 1, 1), xa, gen)
            cand = threat.project(cand, xa, bounds)
            loss, ok = self._query(ctx, cand, shape, ya, ta)
            improved = loss < lb
            lb = torch.where(improved, loss, lb)
            take = (improved | ok).nonzero().squeeze(1)  # rows, not a where: far cheaper on CPU
            xb[take] = cand[take]
            if bool(ok.any()):
                act.scatter(x_best, xb, ok)
                act.scatter(success, True, ok)
                xa, xb, ya, lb, ta = act.retire(ok, xa, xb, ya, lb, ta)
        act.scatter(x_best, xb)
        return x_best, success

    def _l2_init(
        self,
        x: torch.Tensor,
        gen: torch.Generator | None,
        patterns: dict[tuple[int, int], torch.Tensor],
    ) -> torch.Tensor:
        """Centred grid (at most 5x5) of ``eta`` patterns of side ``H // 5``, one random sign
        per image, channel and pattern (official code's L2 initialisation)."""
        n, c, h, w = x.shape
        delta = torch.zeros_like(x)
        if h == 1:
            s = max(w // 5, 1)
            nw = min(5, w // s)
            start = (w - nw * s) // 2
            for k in range(nw):
                pat = _eta((1, s), x, gen, patterns)
                v0 = start + k * s
                delta[:, :, :, v0:v0 + s] += pat * _signs((n, c, 1, 1), x, gen)
            return delta
        s = max(min(h, w) // 5, 1)
        nh, nw = min(5, h // s), min(5, w // s)
        h0, w0 = (h - nh * s) // 2, (w - nw * s) // 2
        for a in range(nh):
            for b in range(nw):
                pat = _eta((s, s), x, gen, patterns)
                vh, vw = h0 + a * s, w0 + b * s
                delta[:, :, vh:vh + s, vw:vw + s] += pat * _signs((n, c, 1, 1), x, gen)
        return delta

    def _l2_candidate(
        self,
        x: torch.Tensor,
        x_best: torch.Tensor,
        size: tuple[int, int],
        pos: tuple[int, int],
        eps: float,
        gen: torch.Generator | None,
        patterns: dict[tuple[int, int], torch.Tensor],
    ) -> torch.Tensor:
        """Algorithm 3: move mass into window 1 (new pattern + its old content) from
        window 2, then rescale the whole perturbation to norm ``eps``."""
        n, c, h, w = x.shape
        sh, sw = size
        vh, vw = pos
        vh2, vw2 = _randint(h - sh, gen), _randint(w - sw, gen)
        delta = x_best - x
        win1 = delta[:, :, vh:vh + sh, vw:vw + sw]
        win1_norm = win1.pow(2).sum((-2, -1), keepdim=True).sqrt()
        mask = torch.zeros((1, 1, h, w), dtype=torch.bool, device=x.device)
        mask[:, :, vh:vh + sh, vw:vw + sw] = True
        mask[:, :, vh2:vh2 + sh, vw2:vw2 + sw] = True
        image_norm = _l2(delta)
        windows_norm = _l2(delta * mask)
        new = _eta(size, x, gen, patterns) * _signs((n, c, 1, 1), x, gen) + win1 / (1e-12 + win1_norm)
        budget = ((eps**2 - image_norm**2).clamp_min(0) / c + windows_norm**2).sqrt()
        new = new / (1e-12 + new.pow(2).sum((-2, -1), keepdim=True).sqrt()) * budget
        delta = delta.clone()
        delta[:, :, vh2:vh2 + sh, vw2:vw2 + sw] = 0.0
        delta[:, :, vh:vh + sh, vw:vw + sw] = new
        return x + eps * _l2_unit(delta)


def _l2(v: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm, shaped to broadcast against ``v``."""
    return v.reshape(len(v), -1).norm(dim=1).reshape((len(v),) + (1,) * (v.dim() - 1))


def _l2_unit(v: torch.Tensor) -> torch.Tensor:
    return v / (_l2(v) + 1e-12)


__all__ = ["Square", "p_selection"]
