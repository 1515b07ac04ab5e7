"""Transfer attacks: craft on surrogate models, judge on the attacked model.

Two attacks, both registered in the attack registry and both taking
``surrogates: list[nn.Module]`` (``None``, the default, crafts on the attacked model
itself, so each is also an ordinary white-box attack):

- ``mi-fgsm``: the momentum iterative fast gradient sign method (Dong et al. 2018,
  "Boosting Adversarial Attacks with Momentum", CVPR), over an ensemble of surrogates
  by averaging their logits (their Sec. 3.2, Eq. (9), equal weights), optionally with
  the input diversity of Xie et al. (2019) (``diversity_prob``);
- ``cwa``: the Common Weakness Attack (Chen et al. 2024, "Rethinking Model Ensemble in
  Transfer-based Adversarial Attacks", ICLR; MI-CWA, their Algorithm 1), which looks for
  a point that is adversarial for every surrogate *and* lies in a flat region of their
  common loss landscape: a reverse step on the ensemble, per-model momentum steps, and
  an outer momentum step.

How the template is used. Crafting never queries the attacked model when surrogates
are given (``black_box`` is then True on the instance, which the audit's
``black-box-stronger`` check reads through ensembles); the template's one full-precision
re-check on the attacked model decides ``success``. Both attacks run all their
iterations and return the final iterate, like the official codes (no early stop, no
best-iterate tracking: a transfer attacker cannot see the target's predictions), so
``create("mi-fgsm", surrogates=[copy])(model, ...)`` returns exactly what
``create("mi-fgsm")(model, ...)`` returns when ``copy`` computes the same function as
``model``. ``forwards``/``backwards`` count passes through the attacked model only;
passes through surrogates are in ``info["surrogate_forwards"]`` and
``info["surrogate_backwards"]``.

Surrogates must speak the attacked model's language: the same input box, the same
per-sample input shape (when they declare one, and as far as one forward pass shows)
and the same number of classes, on the inputs' device; otherwise the call raises
:class:`~robustlab.errors.ShapeMismatchError` or
:class:`~robustlab.errors.InvalidInputError` before any work. An empty surrogate list
is a :class:`~robustlab.errors.ConfigError`.

Input diversity (Xie et al. 2019, "Improving Transferability of Adversarial Examples
with Input Diversity", CVPR, Sec. 3.2 and the official cihangxie/DI-2-FGSM code): with
probability ``diversity_prob`` per gradient step (one draw for the whole batch, as the
official code), the batch is resized (nearest neighbour) to a random side ``H + k`` and
zero-padded at a random offset to ``H + m``. The official code maps 299-pixel images to
``[299, 330)`` and pads to 330 pixels; here the margin scales with the image:
``m = max(2, round(min(H, W) * 31 / 299))`` (28 -> 31 pixels for MNIST, 32 -> 35 for
CIFAR, 8 -> 10 for the sklearn digits: with a one-pixel margin the only padded row
would sit where the nearest-neighbour resize back drops it, and the transform would be
the identity) and ``k`` is uniform in ``{0, ..., m-1}``. Unlike
Inception, our models take one fixed input size, so the padded image is resized back to
``H x W`` (nearest neighbour), as the later official code of Dong et al. (2019, TI)
does. The padding value is the centre of the model's input box: the official code pads
with 0 in Inception's ``[-1, 1]`` input range, i.e. mid-grey.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.attacks.base import Attack, attacks
from robustlab.attacks.engine import (
    AttackContext,
    attack_mode,
    eval_mode,
    model_bounds,
    model_device,
)
from robustlab.attacks.losses import attack_loss, loss_min_classes
from robustlab.attacks.threat import Bounds, ThreatModel, draw
from robustlab.errors import ConfigError, InvalidInputError, ShapeMismatchError
from robustlab.validation import check_float, check_int, check_shape

DI_MARGIN = 31 / 299
"""Input diversity's padding margin relative to the image side: the official code pads
299-pixel images to 330 pixels (Xie et al. 2019)."""

CWA_INNER_STEP = 250.0 / ((16 / 255) * math.sqrt(3 * 224 * 224))
"""The official CWA inner step, 250 on unit-L2 gradients of 224x224x3 images at
eps 16/255, as a multiple of ``eps * sqrt(d)`` (about 10.27), so that one inner step
moves each coordinate by the same root-mean-square amount relative to eps at any size."""


# -- surrogates ------------------------------------------------------------------------------
def as_surrogates(surrogates: nn.Module | Sequence[nn.Module] | None) -> tuple[nn.Module, ...] | None:
    """Normalise the ``surrogates`` parameter: None (white-box), one module, or a
    non-empty sequence of modules; anything else is a ConfigError."""
    if surrogates is None:
        return None
    if isinstance(surrogates, nn.Module):
        return (surrogates,)
    if isinstance(surrogates, (str, bytes)) or not isinstance(surrogates, Sequence):
        raise ConfigError(
            f"surrogates must be a list of torch models (nn.Module), got {type(surrogates).__name__}."
        )
    items = tuple(surrogates)
    if not items:
        raise ConfigError(
            "surrogates=[] names no model to craft on: pass at least one surrogate model, or "
            "surrogates=None to attack the model itself (white-box)."
        )
    for i, s in enumerate(items):
        if not isinstance(s, nn.Module):
            raise ConfigError(f"surrogate {i} is a {type(s).__name__}, not a torch model (nn.Module).")
    return items


def check_surrogates(
    surrogates: Sequence[nn.Module],
    model: nn.Module,
    x: torch.Tensor,
    *,
    names: Sequence[str] | None = None,
    model_name: str = "the attacked model",
) -> None:
    """Refuse surrogates that do not fit the attacked ``model`` on inputs ``x``: another
    input box or device (InvalidInputError), another declared input shape, inputs they
    cannot take, or another number of classes (ShapeMismatchError). Runs one no-grad,
    eval-mode forward pass of one sample through the model and each surrogate. Messages
    call surrogate ``i`` by ``names[i]`` when given, and the model ``model_name``."""
    label = [f"surrogate {i}" if names is None else f"model {names[i]!r}" for i in range(len(surrogates))]
    bounds = model_bounds(model)
    for i, s in enumerate(surrogates):
        if model_bounds(s) != bounds:
            raise InvalidInputError(
                f"{label[i]} takes inputs in {model_bounds(s)} but {model_name} in {bounds}; "
                f"a perturbation crafted in one input space means nothing in the other. Put both "
                f"models behind the same input range (normalisation belongs inside the model)."
            )
        dev = model_device(s)
        if dev is not None and dev != x.device:
            raise InvalidInputError(
                f"{label[i]} is on {dev} but the inputs are on {x.device}; move it with "
                f".to(x.device)."
            )
        expected = getattr(s, "input_shape", None)
        if expected is not None:
            check_shape(x, expected, what=label[i])
    if not len(x):
        return
    with torch.no_grad(), eval_mode(model):
        k_model = model(x[:1]).shape[-1]
    k_model = int(getattr(model, "num_classes", k_model))
    for i, s in enumerate(surrogates):
        try:
            with torch.no_grad(), eval_mode(s):
                out = s(x[:1])
        except RuntimeError as exc:
            raise ShapeMismatchError(
                f"{label[i]} cannot take inputs of per-sample shape {tuple(x.shape[1:])} "
                f"({str(exc).splitlines()[0]}); surrogates must accept the inputs of {model_name}."
            ) from exc
        k = int(out.shape[-1]) if out.dim() == 2 else -1
        if out.dim() != 2 or k != k_model:
            got = f"{k} classes" if out.dim() == 2 else f"outputs of shape {tuple(out.shape)}"
            raise ShapeMismatchError(
                f"{label[i]} returns {got} but {model_name} has {k_model} classes; a "
                f"transfer attack needs surrogates trained on the same label set (logits of "
                f"shape (N, {k_model}))."
            )


# -- input diversity -------------------------------------------------------------------------
def diverse_input(
    x: torch.Tensor, prob: float, generator: torch.Generator | None, bounds: Bounds
) -> torch.Tensor:
    """Xie et al.'s (2019) random resize-and-pad with probability ``prob`` (one draw for
    the batch), scaled to the image size and resized back (see the module docstring).
    Differentiable (nearest-neighbour resizing and constant padding). Images
    ``(N, C, H, W)`` only."""
    if prob <= 0:
        return x
    coin = float(draw((1,), x, generator)[0])
    if coin >= prob:
        return x
    h, w = int(x.shape[-2]), int(x.shape[-1])
    m = max(2, round(min(h, w) * DI_MARGIN))
    k = min(m - 1, int(float(draw((1,), x, generator)[0]) * m))
    rem = m - k
    top = min(rem - 1, int(float(draw((1,), x, generator)[0]) * rem))
    left = min(rem - 1, int(float(draw((1,), x, generator)[0]) * rem))
    resized = F.interpolate(x, size=(h + k, w + k), mode="nearest")
    fill = 0.5 * (bounds[0] + bounds[1])
    padded = F.pad(resized, (left, rem - left, top, rem - top), value=fill)
    return F.interpolate(padded, size=(h, w), mode="nearest")


# -- gradients over several models -----------------------------------------------------------
class _Crafter:
    """Input gradients of an attack objective on the surrogates (or on the attacked model
    through ``ctx``), with passes counted where they belong."""

    def __init__(self, ctx: AttackContext, surrogates: tuple[nn.Module, ...] | None, loss: str, prob: float) -> None:
        self.ctx = ctx
        self.models: tuple[nn.Module, ...] = surrogates if surrogates is not None else (ctx.model,)
        self.white_box = surrogates is None
        self.loss_fn = attack_loss(loss)
        self.prob = prob
        self.forwards = 0
        self.backwards = 0

    def grad(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
        members: Sequence[int] | None = None,
        *,
        combine: str = "mean",
        diverse: bool = True,
    ) -> torch.Tensor:
        """``grad_x loss(combine_k f_k(T(x)), y)`` over the surrogates ``members`` (all by
        default): logits averaged (``"mean"``) or summed (``"sum"``); ``T`` is input
        diversity when ``diverse`` and ``diversity_prob > 0`` (one draw shared by the
        members, as in the official code)."""
        idx = range(len(self.models)) if members is None else members
        xr = x.detach().requires_grad_(True)
        with torch.enable_grad():
            xt = diverse_input(xr, self.prob, self.ctx.generator, self.ctx.bounds) if diverse else xr
            total: torch.Tensor | None = None
            with self.ctx.autocast(x.device):
                for i in idx:
                    out = self.models[i](xt)
                    out = out if out.dtype in (torch.float32, torch.float64) else out.float()
                    total = out if total is None else total + out
            assert total is not None
            if combine == "mean":
                total = total / len(idx)
            loss = self.loss_fn(total, y, target)
            (g,) = torch.autograd.grad(loss.sum(), xr)
        n = len(x) * len(idx)
        if self.white_box:
            self.ctx.forwards += n
            self.ctx.backwards += n
        else:
            self.forwards += n
            self.backwards += n
        return g.detach()

    def record(self) -> None:
        if not self.white_box:
            self.ctx.info["surrogate_forwards"] = self.ctx.info.get("surrogate_forwards", 0) + self.forwards
            self.ctx.info["surrogate_backwards"] = self.ctx.info.get("surrogate_backwards", 0) + self.backwards
            self.ctx.info["surrogates"] = len(self.models)


def _per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape((len(v),) + (1,) * (like.dim() - 1))


def _l1_normalise(g: torch.Tensor) -> torch.Tensor:
    """``g / ||g||_1`` per sample (zero rows stay zero)."""
    n = g.reshape(len(g), -1).abs().sum(1).clamp_min(1e-12)
    return g / _per_sample(n, g)


def _l2_normalise(g: torch.Tensor) -> torch.Tensor:
    """``g / ||g||_2`` per sample (zero rows stay zero)."""
    n = g.reshape(len(g), -1).norm(p=2, dim=1).clamp_min(1e-12)
    return g / _per_sample(n, g)


class _TransferAttack(Attack):
    """What both transfer attacks share: the surrogates, their checks and their modes."""

    surrogates: tuple[nn.Module, ...] | None
    diversity_prob: float

    def _init_surrogates(self, surrogates: Any, diversity_prob: float) -> None:
        self.surrogates = as_surrogates(surrogates)
        self.black_box = self.surrogates is not None  # type: ignore[misc]
        self.diversity_prob = check_float(diversity_prob, "diversity_prob", low=0, high=1, low_open=False)

    def __repr__(self) -> str:
        params = self.get_params()
        if self.surrogates is not None:
            params["surrogates"] = f"<{len(self.surrogates)} model(s)>"
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' if k != 'surrogates' else f'{k}={v}' for k, v in params.items())})"

    def _check_all(self, model: nn.Module, x: torch.Tensor) -> None:
        if self.diversity_prob > 0 and x.dim() != 4:
            raise ConfigError(
                f"input diversity (diversity_prob={self.diversity_prob:g}) resizes images and needs "
                f"inputs of shape (N, C, H, W); got {tuple(x.shape)}. Use diversity_prob=0."
            )
        if self.surrogates is not None and isinstance(x, torch.Tensor):
            check_surrogates(self.surrogates, model, x)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: Any, **kwargs: Any) -> Any:
        """The template's call (:meth:`Attack.__call__`), after checking the surrogates
        against ``model`` and ``x``."""
        self._check_all(model, x)
        return super().__call__(model, x, y, threat, **kwargs)

    def generate(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, **kwargs: Any) -> torch.Tensor:
        """The template's training/crafting entry point (:meth:`Attack.generate`), after
        checking the surrogates against ``model`` and ``x``."""
        self._check_all(model, x)
        return super().generate(model, x, y, threat, **kwargs)

    @contextlib.contextmanager
    def _surrogate_modes(self) -> Any:
        """Eval mode and frozen parameters for every surrogate while crafting."""
        with contextlib.ExitStack() as stack:
            for s in self.surrogates or ():
                stack.enter_context(attack_mode(s))
            yield


# -- MI-FGSM ---------------------------------------------------------------------------------
@attacks.register("mi-fgsm", aliases=("mifgsm", "mim"))
class MIFGSM(_TransferAttack):
    """Momentum iterative FGSM (Dong et al. 2018, "Boosting Adversarial Attacks with
    Momentum", Algorithm 1, Eq. (6)-(7); L2 form Eq. (8)), on the attacked model or on an
    ensemble of surrogates (Eq. (9): logits averaged with equal weights ``1/K``)::

        g_{t+1} = mu * g_t + grad_x J(x_t) / ||grad_x J(x_t)||_1
        x_{t+1} = Proj_{B(x, eps) ∩ box}(x_t + alpha * sign(g_{t+1}))      (L-inf)
        x_{t+1} = Proj_{B(x, eps) ∩ box}(x_t + alpha * g_{t+1} / ||g_{t+1}||_2)  (L2)

    from ``x_0 = x``, returning ``x_T``. Defaults are the paper's and the official code's
    (dongyp13/Non-Targeted-Adversarial-Attacks): ``steps=10``, ``mu=1.0``,
    ``alpha = eps / steps``, cross-entropy; input diversity (DI²-FGSM / M-DI²-FGSM,
    Xie et al. 2019) off by default, ``diversity_prob=0.5`` in their paper.

    Parameters
    ----------
    surrogates: models to craft on (None: the attacked model itself, white-box).
    steps: iterations ``T``.
    mu: momentum decay.
    step_size: absolute ``alpha``; default ``rel_step_size * eps``.
    rel_step_size: ``alpha / eps`` when ``step_size`` is None; default ``1 / steps``.
    diversity_prob: probability of the input-diversity transform per step (images only).
    loss: attack objective ``J`` (``"ce"``; any objective of
        :mod:`robustlab.attacks.losses` that does not read clean logits).

    Deviations: the official code normalises by the mean absolute gradient instead of
    the L1 norm (a constant factor ``d``, which changes no sign); a zero gradient gives
    a zero direction instead of a division by zero.
    """

    norms = ("linf", "l2")

    def __init__(
        self,
        surrogates: Sequence[nn.Module] | None = None,
        steps: int = 10,
        mu: float = 1.0,
        step_size: float | None = None,
        rel_step_size: float | None = None,
        diversity_prob: float = 0.0,
        loss: str = "ce",
    ) -> None:
        self._init_surrogates(surrogates, diversity_prob)
        self.steps = check_int(steps, "steps", minimum=1)
        self.mu = check_float(mu, "mu", low=0, low_open=False)
        self.step_size = None if step_size is None else check_float(step_size, "step_size", low=0, low_open=True)
        self.rel_step_size = (
            None if rel_step_size is None else check_float(rel_step_size, "rel_step_size", low=0, low_open=True)
        )
        _check_loss(loss)
        self.loss = loss

    def required_classes(self, targeted: bool) -> int:
        return loss_min_classes(self.loss, targeted)

    def _alpha(self, threat: ThreatModel) -> float:
        if self.step_size is not None:
            return float(self.step_size)
        rel = self.rel_step_size if self.rel_step_size is not None else 1.0 / self.steps
        return rel * threat.eps

    def perturb(
        self,
        ctx: AttackContext,
        x: torch.Tensor,
        y: torch.Tensor,
        threat: ThreatModel,
        target: torch.Tensor | None,
    ) -> torch.Tensor:
        crafter = _Crafter(ctx, self.surrogates, self.loss, self.diversity_prob)
        alpha = self._alpha(threat)
        xa = x.detach().clone()
        g = torch.zeros_like(x)
        with self._surrogate_modes():
            for _ in range(self.steps):
                grad = crafter.grad(xa, y, target)
                g = self.mu * g + _l1_normalise(grad)
                step = threat.ascent_direction(g)
                xa = threat.project(xa + alpha * step, x, ctx.bounds)
        crafter.record()
        return xa


# -- CWA -------------------------------------------------------------------------------------
@attacks.register("cwa", aliases=("mi-cwa", "common-weakness"))
class CWA(_TransferAttack):
    """The Common Weakness Attack, MI-CWA (Chen, Zhang, Dong, Yang, Su & Zhu 2024,
    "Rethinking Model Ensemble in Transfer-based Adversarial Attacks", ICLR, Algorithm 1;
    official code huanranchen/AdversarialAttacks, ``MI_CommonWeakness``). Each of the
    ``steps`` outer iterations, from ``x_t``:

    1. reverse step (sharpness, "flatness"): ``x^0 = x_t - r * sign(grad_x J(sum_k f_k(x_t)))``;
    2. one step per surrogate ``k = 1..K`` in turn (closeness to every model's optimum),
       with an inner momentum kept across outer iterations:
       ``m = mu * m + g_k / ||g_k||_2``, ``x^k = Proj(x^{k-1} + beta * m)``, where
       ``g_k = grad_x J(f_k(T(x^{k-1})))`` (``T``: input diversity, inner steps only);
    3. outer momentum on the displacement ``G = x^K - x_t``:
       ``M = mu * M + G / ||G||_1``, ``x_{t+1} = Proj(x_t + alpha * sign(M))``.

    ``Proj`` is the projection onto the L-inf ball around ``x`` intersected with the
    input box. The paper and the official code are L-inf only; for L2 (an extension) the
    reverse and outer steps use ``g / ||g||_2`` and ``M / ||M||_2`` in place of the signs,
    as MI-FGSM's L2 form does. With one surrogate, ``reverse_step_size=0`` and ``inner_mu=0`` the outer
    loop is MI-FGSM on that surrogate whenever no inner step is clipped (then
    ``G / ||G||_1 = g / ||g||_1``).

    Defaults from the official code: ``steps=10``, ``mu=1``, outer step
    ``alpha = eps / 5`` (3.2/255 at eps 16/255), reverse step ``r = eps / 15``, no random
    start, cross-entropy, inner momentum decay equal to ``mu``. The inner step is
    ``beta = 250`` in the official code for 224x224x3 images at eps 16/255; here the
    default is ``beta = 10.27 * eps * sqrt(d)`` (:data:`CWA_INNER_STEP`), which is 250
    at that size and eps and keeps the per-coordinate step relative to eps at any ``d``.

    Parameters
    ----------
    surrogates: models to craft on (None: the attacked model itself).
    steps, mu: outer iterations and momentum decay.
    step_size / rel_step_size: ``alpha`` absolute, or relative to eps (default 1/5).
    reverse_step_size / rel_reverse_step_size: ``r`` absolute, or relative to eps
        (default 1/15).
    inner_step_size / rel_inner_step_size: ``beta`` absolute, or relative to the L2
        radius of the ball, ``eps * sqrt(d)`` for L-inf and ``eps`` for L2 (default
        :data:`CWA_INNER_STEP`).
    inner_mu: inner momentum decay (default: ``mu``, as the official code).
    diversity_prob: input diversity on the inner steps (the official ``DI=True`` option).
    loss: attack objective (``"ce"``).

    Deviations from the official code: ``G`` is normalised by its L1 norm per sample
    (the official code divides by the L1 norm of the whole batch, which makes one
    point's result depend on the others attacked with it); the outer step uses
    ``alpha`` (the official ``end_attack`` uses a fixed ``ksi = 16/255/5`` whatever the
    step size, equal to the default alpha at eps 16/255); a targeted attack takes the
    reverse step on its own objective (the official code skips it when targeted); input
    diversity is Xie et al.'s resize-and-pad (the official option is a random crop with
    padding); the ensemble logits of the reverse step are summed, as in the official code.
    """

    norms = ("linf", "l2")

    def __init__(
        self,
        surrogates: Sequence[nn.Module] | None = None,
        steps: int = 10,
        mu: float = 1.0,
        step_size: float | None = None,
        rel_step_size: float = 1 / 5,
        reverse_step_size: float | None = None,
        rel_reverse_step_size: float = 1 / 15,
        inner_step_size: float | None = None,
        rel_inner_step_size: float = CWA_INNER_STEP,
        inner_mu: float | None = None,
        diversity_prob: float = 0.0,
        loss: str = "ce",
    ) -> None:
        self._init_surrogates(surrogates, diversity_prob)
        self.steps = check_int(steps, "steps", minimum=1)
        self.mu = check_float(mu, "mu", low=0, low_open=False)
        self.step_size = None if step_size is None else check_float(step_size, "step_size", low=0, low_open=True)
        self.rel_step_size = check_float(rel_step_size, "rel_step_size", low=0, low_open=True)
        self.reverse_step_size = (
            None if reverse_step_size is None else check_float(reverse_step_size, "reverse_step_size", low=0, low_open=False)
        )
        self.rel_reverse_step_size = check_float(rel_reverse_step_size, "rel_reverse_step_size", low=0, low_open=False)
        self.inner_step_size = (
            None if inner_step_size is None else check_float(inner_step_size, "inner_step_size", low=0, low_open=True)
        )
        self.rel_inner_step_size = check_float(rel_inner_step_size, "rel_inner_step_size", low=0, low_open=True)
        self.inner_mu = None if inner_mu is None else check_float(inner_mu, "inner_mu", low=0, low_open=False)
        _check_loss(loss)
        self.loss = loss

    def required_classes(self, targeted: bool) -> int:
        return loss_min_classes(self.loss, targeted)

    def steps_for(self, threat: ThreatModel, d: int) -> tuple[float, float, float]:
        """``(alpha, r, beta)`` for ``threat`` and inputs of ``d`` coordinates."""
        alpha = self.step_size if self.step_size is not None else self.rel_step_size * threat.eps
        r = self.reverse_step_size if self.reverse_step_size is not None else self.rel_reverse_step_size * threat.eps
        radius = threat.eps * (math.sqrt(d) if threat.norm == "linf" else 1.0)  # the ball's L2 radius
        beta = self.inner_step_size if self.inner_step_size is not None else self.rel_inner_step_size * radius
        return float(alpha), float(r), float(beta)

    def perturb(
        self,
        ctx: AttackContext,
        x: torch.Tensor,
        y: torch.Tensor,
        threat: ThreatModel,
        target: torch.Tensor | None,
    ) -> torch.Tensor:
        crafter = _Crafter(ctx, self.surrogates, self.loss, self.diversity_prob)
        alpha, r, beta = self.steps_for(threat, x[0].numel())
        inner_mu = self.mu if self.inner_mu is None else self.inner_mu
        xt = x.detach().clone()
        m_in = torch.zeros_like(x)
        m_out = torch.zeros_like(x)
        k = len(crafter.models)
        with self._surrogate_modes():
            for _ in range(self.steps):
                xi = xt
                if r > 0:  # 1. reverse step on the summed logits (not projected, as the official code)
                    g = crafter.grad(xi, y, target, combine="sum", diverse=False)
                    xi = xi - r * threat.ascent_direction(g)
                for j in range(k):  # 2. one momentum step per surrogate
                    g = crafter.grad(xi, y, target, [j])
                    m_in = inner_mu * m_in + _l2_normalise(g)
                    xi = threat.project(xi + beta * m_in, x, ctx.bounds)
                # 3. outer momentum on the displacement of the inner steps
                m_out = self.mu * m_out + _l1_normalise(xi - xt)
                step = threat.ascent_direction(m_out)
                xt = threat.project(xt + alpha * step, x, ctx.bounds)
        crafter.record()
        return xt


def _check_loss(loss: str) -> None:
    from robustlab.attacks.losses import CLEAN_LOSSES

    attack_loss(loss)  # unknown names: ConfigError with close matches
    if loss in CLEAN_LOSSES:
        raise ConfigError(
            f"the {loss!r} objective reads the attacked model's clean logits, which a transfer "
            f"attack does not see; use loss='ce' (the papers') or 'margin'."
        )


__all__ = ["CWA", "CWA_INNER_STEP", "DI_MARGIN", "MIFGSM", "as_surrogates", "check_surrogates", "diverse_input"]
