"""Single-step adversarial training: FGSM-RS (Wong et al. 2020), GradAlign (Andriushchenko &
Flammarion 2020) and AAER (Lin et al. 2023), with the optional catastrophic-overfitting check."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.attacks import ThreatModel
from robustlab.attacks import engine as _engine
from robustlab.attacks.engine import frozen_buffers
from robustlab.errors import ConfigError
from robustlab.losses import Loss
from robustlab.train.adversarial.base import (
    AdversarialObjective,
    clean_accuracy_metric,
    make_attack,
    perturb,
    relative_step,
)
from robustlab.train.monitors import CO_ACTIONS, CatastrophicOverfittingCheck, EpochVerdict
from robustlab.train.objectives import accuracy_metric, objectives
from robustlab.validation import check_bool, check_choice, check_float, check_int, check_subset


class _SingleStep(AdversarialObjective):
    """Shared: the optional catastrophic-overfitting check (see :mod:`monitors`)."""

    default_bn_mode = "train"

    def _init_co(
        self, co_check: bool, co_threshold: float, co_action: str, co_steps: int, co_batch_size: int | None
    ) -> None:
        self.co_check = check_bool(co_check, "co_check")
        # checked whether or not the check is on, so a bad value never waits to be switched on
        check_float(co_threshold, "co_threshold", low=0.0, high=1.0, low_open=True)
        check_choice(co_action, "co_action", CO_ACTIONS)
        check_int(co_steps, "co_steps", minimum=1)
        check_subset(co_batch_size, "co_batch_size")
        self.co = (
            CatastrophicOverfittingCheck(co_threshold, co_action, steps=co_steps, batch_size=co_batch_size)
            if self.co_check
            else None
        )

    def loss(self, model, x, y, index):  # type: ignore[no-untyped-def]
        if self.co is not None:
            self.co.observe(x, y)
        return super().loss(model, x, y, index)

    def end_epoch(self, model: nn.Module, epoch: int) -> EpochVerdict | None:
        """The catastrophic-overfitting check at the full eps (Trainer hook)."""
        if self.co is None:
            return None
        assert self.generator is not None
        return self.co.check(model, self.threat, self.generator, epoch)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.co is not None:
            state["co"] = self.co.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if self.co is not None and "co" in state:
            self.co.load_state_dict(state["co"])


@objectives.register("fgsm-rs", aliases=("fast-at",))
class FGSMRS(_SingleStep):
    """Fast adversarial training, FGSM with random start (Wong, Rice & Kolter 2020, "Fast
    is better than free: Revisiting adversarial training", Alg. 3): one sign-gradient step
    of size ``1.25 eps`` from a uniform random point of the ball, projected back
    (``pgd`` with ``steps=1`` from the attack registry), then the loss at that point.

    Defaults from the official code (locuslab/fast_adversarial): step ``1.25 eps``
    (``alpha = 10/255`` at ``8/255``; 0.375 at 0.3 on MNIST), attack in train mode, and
    the catastrophic-overfitting check (``co_check=True``; see
    :class:`~robustlab.train.monitors.CatastrophicOverfittingCheck`): PGD-5 accuracy on a
    fixed training minibatch after every epoch; a drop of more than ``co_threshold``
    (0.2) rolls back to the previous epoch's weights and stops (``co_action``:
    ``"rollback"``, ``"stop"`` or ``"record"``), and the history says so.

    Metrics: ``adv_accuracy``, ``accuracy`` (clean, eval mode, no state change); per
    epoch ``co_pgd_accuracy`` and ``co_detected``.
    """

    def __init__(
        self,
        loss: str | Loss = "ce",
        loss_params: Mapping[str, Any] | None = None,
        *,
        norm: str = "linf",
        eps: float | str = 8 / 255,
        step_size: float | str | None = None,
        rel_step_size: float | None = None,
        eps_warmup: float = 0.0,
        bn_mode: str | None = None,
        co_check: bool = True,
        co_threshold: float = 0.2,
        co_action: str = "rollback",
        co_steps: int = 5,
        co_batch_size: int | None = None,
    ) -> None:
        super().__init__(loss=loss, loss_params=loss_params, norm=norm, eps=eps, eps_warmup=eps_warmup, bn_mode=bn_mode)
        self.rel_step = relative_step(step_size, rel_step_size, self.threat.eps, 1.25)
        self.attack = make_attack("pgd", steps=1, rel_step_size=self.rel_step, random_start=True, loss="ce")
        self._init_co(co_check, co_threshold, co_action, co_steps, co_batch_size)
        self._record_params(locals())

    def outer(self, model, x, x_adv, y, index, *, metrics=True):  # type: ignore[no-untyped-def]
        logits_adv = model(x_adv)
        return self._supervised(logits_adv, y, index), {
            "adv_accuracy": accuracy_metric(logits_adv, y),
            "accuracy": clean_accuracy_metric(model, x, y),
        }


def _input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """``d/dx sum_i CE(f(x_i), y_i)`` (per-sample input gradients); a graph is kept for
    double backpropagation when ``create_graph``. No parameter ``.grad`` is touched."""
    xr = x.detach().requires_grad_(True)
    with torch.enable_grad():
        ce = F.cross_entropy(model(xr).float(), y, reduction="sum")
        (g,) = torch.autograd.grad(ce, xr, create_graph=create_graph)
    return g if create_graph else g.detach()


def gradient_alignment(g1: torch.Tensor, g2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample cosine of two input gradients and the mask of pairs where both are
    non-zero (the official GradAlign code drops the others)."""
    a, b = g1.flatten(1), g2.flatten(1)
    na, nb = a.norm(dim=1), b.norm(dim=1)
    ok = (na != 0) & (nb != 0)
    cos = (a * b).sum(1) / (na * nb).clamp_min(1e-30)
    return torch.where(ok, cos, torch.zeros_like(cos)), ok


@objectives.register("gradalign", aliases=("grad-align",))
class GradAlign(_SingleStep):
    """FGSM training with the GradAlign regulariser (Andriushchenko & Flammarion 2020,
    "Understanding and Improving Fast Adversarial Training", Eq. (6)):

    ``L(f(x + delta_FGSM), y) + lam * (1 - cos(grad_x CE(x, y), grad_x CE(x + eta, y)))``,
    ``eta ~ U(B(x, eps))``,

    trained by double backpropagation through the gradient at ``x + eta``. As in the
    official code (tml-epfl/understanding-fast-adv-training, ``train.py``): the FGSM step
    starts at ``x`` (``fgsm`` from the attack registry; the official ``fgsm_alpha=1.25``
    from a zero start is clipped to ``eps``), the gradient at ``x`` is detached (only the
    one at ``x + eta`` carries the double-backprop graph), pairs with a zero gradient are
    dropped and the cosine is averaged over the rest, gradients are of cross-entropy,
    and everything runs in train mode. ``lam=0.2`` is the official value at
    ``eps=8/255`` on CIFAR-10 (their scripts scale it as ``0.02 * 10**(eps_255 / 8)``
    with eps). Deviations: the noisy point is clipped to the input box (the official code
    does not clip it); the gradient at ``x`` costs one extra forward/backward because
    the attack engine does not return its internal gradient.

    Metrics: ``adv_accuracy``, ``accuracy`` (clean, eval mode), ``gradalign_cos``.
    Optional catastrophic-overfitting check (``co_check``, off by default).
    """

    def __init__(
        self,
        loss: str | Loss = "ce",
        loss_params: Mapping[str, Any] | None = None,
        *,
        lam: float = 0.2,
        norm: str = "linf",
        eps: float | str = 8 / 255,
        eps_warmup: float = 0.0,
        bn_mode: str | None = None,
        co_check: bool = False,
        co_threshold: float = 0.2,
        co_action: str = "rollback",
        co_steps: int = 5,
        co_batch_size: int | None = None,
    ) -> None:
        super().__init__(loss=loss, loss_params=loss_params, norm=norm, eps=eps, eps_warmup=eps_warmup, bn_mode=bn_mode)
        self.lam = check_float(lam, "lam", low=0.0)
        self.attack = make_attack("fgsm", loss="ce")
        self._init_co(co_check, co_threshold, co_action, co_steps, co_batch_size)
        self._record_params(locals())

    def outer(self, model, x, x_adv, y, index, *, metrics=True):  # type: ignore[no-untyped-def]
        logits_adv = model(x_adv)
        per = self._supervised(logits_adv, y, index)
        metrics = {"adv_accuracy": accuracy_metric(logits_adv, y), "accuracy": clean_accuracy_metric(model, x, y)}
        threat = self.current_threat()
        if self.lam > 0 and threat.eps > 0:
            bounds = _engine.model_bounds(model)
            x_noise = threat.random_start(x, bounds, self.generator)
            g1 = _input_gradient(model, x, y, create_graph=False)
            g2 = _input_gradient(model, x_noise, y, create_graph=True)
            cos, ok = gradient_alignment(g1, g2)
            n_ok = int(ok.sum())
            if n_ok:
                # per-sample share so that the batch mean is lam * (1 - mean cos over kept pairs)
                reg = self.lam * (1.0 - cos) * ok.to(cos.dtype) * (len(x) / n_ok)
                per = per + reg.to(per.dtype)
            metrics["gradalign_cos"] = (cos.detach().sum() / max(n_ok, 1)).reshape(())
        return per, metrics


def _l2_square(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean over rows of the squared Euclidean distance (AAER's ``l2_square``)."""
    return ((a - b) ** 2).sum(1).mean(0)


@objectives.register("aaer")
class AAER(_SingleStep):
    """Abnormal Adversarial Examples Regularization (Lin, Yu & Liu, NeurIPS 2023,
    "Eliminating Catastrophic Overfitting Via Abnormal Adversarial Examples
    Regularization", Sec. 3.3), as the official training script computes it
    (tmllab/2023_NeurIPS_AAER, ``SVHN/AAER.py`` and ``CIFAR10/AAER.py``).

    Inner step (N-FGSM-style): noise ``eta ~ U[-k eps, k eps]`` clipped to the box, then
    one FGSM step of size ``w_t * alpha * eps`` from ``x_0 = x + eta`` (``fgsm`` from the
    attack registry, with the ball around ``x_0``), clipped to the box and not projected
    back to the eps-ball unless ``clip=True`` (then projected onto ``B(x, w_t * eps)``,
    RS-FGSM style; the official ``--clamp 1``).

    Step-size ramp: ``w_t = min(1, t / step_warmup)`` at training progress ``t`` (epochs,
    updated every optimiser step: the official ``min((epoch + i / len(loader)) / 5, 1)``,
    ``SVHN/AAER.py`` lines 108-111). Only the FGSM step is ramped (and, with ``clip``, the
    projection radius); the noise ``eta`` is not. ``eps_warmup`` (shared by every
    adversarial objective) is a different ramp, of eps itself, which scales noise, step
    and radius together; it is off by default.

    Abnormal adversarial examples (AAEs) are those whose cross-entropy *decreases* after
    the step: ``CE(x_0) > CE(x')``. With ``n_A`` AAEs in a batch of ``B`` (and at least
    one normal example) the loss is

    ``mean_i L(f(x'_i), y_i) + lam1 * n_A / B * (lam2 * mean_{AAE}(CE(x_0) - CE(x'))
    + lam3 * max(V_AAE - V_NAE, 0))``

    where ``V`` is the mean over the group of ``||f(x_0) - f(x')||_2^2`` (logits at
    ``x_0`` detached) and ``V_NAE`` is detached. As in the official code the AAE-CE term
    is computed on detached losses (it contributes to the reported loss, not to the
    gradient).

    Defaults: the official ``SVHN/AAER.py`` (its argument defaults, with which it is run):
    ``lam1=1, lam2=4, lam3=1.5``, noise ``k=2``, ``alpha=1``, no projection, the FGSM step
    ramped over ``step_warmup=5`` epochs, everything in train mode. Batch-norm running
    statistics are updated **twice per optimiser step**, as in the official loop (model
    in train mode throughout): by the forward pass at ``x_0`` and by the one at ``x'``.
    The official CIFAR-10/100, Tiny-ImageNet and ImageNet-100 scripts do not ramp at all
    (``step_warmup=0``), and the README's CIFAR-10 commands at eps 8/255 use ``lam2=1.5,
    lam3=0.15`` (N-AAER) or ``clip=True, noise=1, alpha=1.25, lam2=2.5, lam3=1.5``
    (RS-AAER). ``noise`` defaults to 2, or to 1 with ``clip=True`` (the official
    ``--clamp`` switch sets both). A ramp longer than training is refused.

    Deviations: ``CE(x_0)`` and ``f(x_0)`` come from a separate no-grad forward pass at
    ``x_0`` (the official code reuses the forward pass that gives the FGSM gradient; the
    attack engine does not return it): one extra forward pass per step, whose batch
    statistics equal the official ones, while the attack's own forward pass leaves the
    running statistics untouched (:func:`frozen_buffers`), so that they see the same two
    updates per step (with dropout, the two passes draw different masks; the official
    models have none). The noise comes from the objective's seeded generator, not the
    global RNG. The learning-rate schedule is the Trainer's (official: SGD, momentum 0.9,
    weight decay 5e-4, cyclic lr peaking at 0.05 after 2/5 of 15 epochs on SVHN -- the
    Trainer's ``onecycle`` -- and at 0.2 after 1/2 of 30 epochs on CIFAR-10). The official
    code's commented-out ``* min(epoch / 20, 1)`` warm-up of the regulariser for long
    schedules (``CIFAR10/AAER.py`` line 142) is not offered.

    Metrics: ``aaer_count`` (AAEs, summed per epoch into ``train_aaer_count``),
    ``adv_accuracy``, ``accuracy`` (clean, eval mode). Optional catastrophic-overfitting
    check (``co_check``, off by default).
    """

    def __init__(
        self,
        loss: str | Loss = "ce",
        loss_params: Mapping[str, Any] | None = None,
        *,
        lam1: float = 1.0,
        lam2: float = 4.0,
        lam3: float = 1.5,
        noise: float | None = None,
        alpha: float = 1.0,
        clip: bool = False,
        step_warmup: float = 5.0,
        norm: str = "linf",
        eps: float | str = 8 / 255,
        eps_warmup: float = 0.0,
        bn_mode: str | None = None,
        co_check: bool = False,
        co_threshold: float = 0.2,
        co_action: str = "rollback",
        co_steps: int = 5,
        co_batch_size: int | None = None,
    ) -> None:
        super().__init__(loss=loss, loss_params=loss_params, norm=norm, eps=eps, eps_warmup=eps_warmup, bn_mode=bn_mode)
        self.lam1 = check_float(lam1, "lam1", low=0.0)
        self.lam2 = check_float(lam2, "lam2", low=0.0)
        self.lam3 = check_float(lam3, "lam3", low=0.0)
        self.alpha = check_float(alpha, "alpha", low=0.0, low_open=True)
        self.clip = check_bool(clip, "clip")
        self.noise = (1.0 if self.clip else 2.0) if noise is None else check_float(noise, "noise", low=0.0)
        self.step_warmup = check_float(step_warmup, "step_warmup", low=0.0)
        if self.threat.norm != "linf":
            raise ConfigError("aaer is defined for the linf threat model (sign steps and uniform box noise).")
        self.attack = make_attack("fgsm", loss="ce")
        self._init_co(co_check, co_threshold, co_action, co_steps, co_batch_size)
        self._record_params(locals())
        self._params["noise"] = self.noise
        self._start: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def ramp_epochs(self) -> float:
        """The longer of the eps warm-up and the step-size ramp."""
        return max(self.eps_warmup, self.step_warmup)

    def check_training(self, epochs: int) -> None:
        super().check_training(epochs)
        if self.step_warmup > epochs:
            raise ConfigError(
                f"aaer ramps its FGSM step over step_warmup={self.step_warmup:g} epochs (the official SVHN "
                f"recipe) but training has only {epochs}: the step would never reach alpha * eps. Set "
                f"step_warmup to at most {epochs} (0: no ramp, the official CIFAR-10 recipe) or train longer."
            )

    def step_factor(self) -> float:
        """``w_t = min(1, t / step_warmup)`` at the current training progress ``t`` (1 without a ramp)."""
        if self.step_warmup <= 0:
            return 1.0
        return min(1.0, self.progress / self.step_warmup)

    def adversarial(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        threat = self.current_threat()
        eps = threat.eps
        w = self.step_factor()
        bounds = _engine.model_bounds(model)
        if self.noise > 0 and eps > 0:
            x0 = threat.random_start(x, bounds, self.generator, eps=self.noise * eps)
        else:
            x0 = x.detach().clone()
        with torch.no_grad(), _engine.generation_mode(model, self.bn_mode):
            logits0 = model(x0).float()  # the official forward pass at x_0 (running statistics update 1)
        ce0 = F.cross_entropy(logits0, y, reduction="none")
        self._start = (x0, logits0, ce0)
        step = ThreatModel("linf", min(self.alpha * eps * w, bounds[1] - bounds[0]))
        assert self.attack is not None
        with frozen_buffers(model):  # the same forward pass again, for the gradient: no second update
            x_adv = perturb(self.attack, model, x0, y, step, self.generator, self.bn_mode)
        if self.clip:
            x_adv = threat.with_eps(eps * w).project(x_adv, x, bounds) if w < 1 else threat.project(x_adv, x, bounds)
        return x_adv

    def outer(self, model, x, x_adv, y, index, *, metrics=True):  # type: ignore[no-untyped-def]
        assert self._start is not None
        _, logits0, ce_before = self._start
        self._start = None
        logits_adv = model(x_adv)
        per = self._supervised(logits_adv, y, index)
        ce_after = F.cross_entropy(logits_adv.detach().float(), y, reduction="none")
        abnormal = ce_before > ce_after
        n_ab = int(abnormal.sum())
        n_norm = len(y) - n_ab
        if n_ab and n_norm and self.lam1 > 0:
            la = logits_adv.float()
            var_ab = _l2_square(logits0[abnormal], la[abnormal])
            var_norm = _l2_square(logits0[~abnormal], la[~abnormal]).detach()
            ab_ce = (ce_before - ce_after)[abnormal].sum() / n_ab
            reg = (self.lam1 * n_ab / len(y)) * (self.lam2 * ab_ce + self.lam3 * torch.clamp(var_ab - var_norm, min=0))
            per = per + reg.to(per.dtype)
        return per, {
            "aaer_count": abnormal.float(),
            "adv_accuracy": accuracy_metric(logits_adv, y),
            "accuracy": clean_accuracy_metric(model, x, y),
        }
