"""Training objectives for randomized smoothing: Gaussian augmentation, SmoothAdv, consistency.

A smoothed classifier ``g(x) = argmax_c P(f(x + delta) = c)``, ``delta ~ N(0, sigma^2 I)``
(:mod:`robustlab.certify`) is only as good as its base model ``f`` is under noise. These
objectives train ``f`` for it:

- ``gaussian`` (:class:`GaussianAugmentation`): the loss on one noisy copy of each input
  (Cohen, Rosenfeld & Kolter 2019);
- ``smoothadv`` (:class:`SmoothAdv`): the loss on noisy copies of an adversarial input
  found by attacking the soft smoothed classifier (Salman et al. 2019);
- ``consistency`` (:class:`ConsistencyRegularization`): cross-entropy on ``m`` noisy
  copies plus a term that makes the copies agree (Jeong & Shin 2020).

>>> from robustlab import train
>>> obj = train.create("gaussian", sigma=0.25)
>>> obj = train.create("smoothadv", sigma=0.25, eps=0.25, steps=10, m=2, eps_warmup=10)
>>> obj = train.create("consistency", sigma=0.25, m=2, lam=20.0, eta=0.5)

Conventions shared by the three: noise is added in robustlab's ``[0, 1]`` input space (the
model normalises inside) and the noisy inputs are *not* clipped (as in every reference
implementation: the certificate is about Gaussian noise, which clipping would change);
``sigma`` is the same number later passed to certification. Every batch draws fresh noise
from the objective's :attr:`~robustlab.train.objectives.Objective.generator` (set by the
Trainer each epoch), never from the global RNG, through the one helper
:func:`draw_noise`; ``m`` copies of a batch are laid out copy-major (the reference code's
``torch.cat([x + noise_i for i])``).

Deviation shared by ``smoothadv`` and ``consistency`` with ``m > 1``: the reference scripts
split each loader batch of ``B`` images into ``m`` mini-batches of ``B / m`` images and take
one optimiser step per mini-batch (so a step sees ``B`` noisy inputs); here each Trainer
batch is one step on its ``m * batch_size`` noisy inputs. To match the reference's compute
and number of steps, set the Trainer's ``batch_size`` to ``B / m``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.certify.soft import SoftSmoothed, noisy_copies, standard_noise
from robustlab.errors import ConfigError
from robustlab.losses import Loss
from robustlab.train.adversarial.base import (
    AdversarialObjective,
    clean_accuracy_metric,
    make_attack,
    perturb,
    relative_step,
)
from robustlab.train.objectives import (
    CriterionObjective,
    Objective,
    accuracy_metric,
    apply_loss,
    objectives,
)
from robustlab.validation import check_bool, check_float, check_int

#: the default noise level of every smoothing objective (one of Cohen et al.'s four levels
#: 0.12, 0.25, 0.5, 1.0, and the one most results are reported at)
DEFAULT_SIGMA = 0.25


def check_sigma(sigma: Any) -> float:
    """A noise level: a finite number >= 0 (0 trains on the clean inputs)."""
    return check_float(sigma, "sigma", low=0.0)


def draw_noise(objective: Objective, x: torch.Tensor, m: int) -> torch.Tensor:
    """The ``m`` standard-normal noise draws for batch ``x``, shape ``(m, B, *x.shape[1:])``,
    from the objective's generator (the one place the smoothing objectives draw noise)."""
    if objective.generator is None:
        raise ConfigError(
            f"{type(objective).__name__} has no random generator yet: the Trainer sets one per epoch "
            f"through objective.start_epoch(epoch, generator); call that first when using the "
            f"objective directly."
        )
    return standard_noise(x, m, objective.generator)


def per_copy_accuracy(logits: torch.Tensor, y: torch.Tensor, m: int) -> torch.Tensor:
    """Per-sample share of the ``m`` copy-major noisy copies classified as ``y``."""
    hits = (logits.detach().argmax(1) == y.repeat(m)).float()
    return hits.reshape(m, -1).mean(0)


def consistency_terms(
    logits: torch.Tensor, y: torch.Tensor, m: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample ``(ce, kl, entropy)`` of Jeong & Shin's objective for copy-major logits
    ``(m * B, K)`` of ``m`` noisy copies:

    - ``ce = (1/m) sum_i CE(f(x + delta_i), y)``;
    - ``kl = (1/m) sum_i KL(p_hat || softmax(f(x + delta_i)))``;
    - ``entropy = H(p_hat) = -sum_k p_hat_k log p_hat_k``;

    where ``p_hat = (1/m) sum_i softmax(f(x + delta_i))``. Gradients flow through
    ``p_hat`` too (the reference does not detach it). ``log p_hat`` is computed as a
    log-sum-exp, so no clamp is needed.
    """
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()
    k = logits.shape[-1]
    logp = logits.log_softmax(-1).reshape(m, -1, k)  # (m, B, K)
    ce = -logp.gather(2, y.reshape(1, -1, 1).expand(m, -1, 1)).squeeze(2).mean(0)
    log_avg = torch.logsumexp(logp, dim=0) - math.log(m)  # (B, K)
    avg = log_avg.exp()
    kl = (avg.unsqueeze(0) * (log_avg.unsqueeze(0) - logp)).sum(-1).mean(0)
    entropy = -(avg * log_avg).sum(-1)
    return ce, kl, entropy


@objectives.register("gaussian")
class GaussianAugmentation(CriterionObjective):
    """Gaussian data augmentation (Cohen, Rosenfeld & Kolter 2019, "Certified Adversarial
    Robustness via Randomized Smoothing", ICML, Sec. 3.3 "Training the base classifier"):

        min  E_{(x, y)} E_{delta ~ N(0, sigma^2 I)} L(f(x + delta), y),

    one fresh noise draw per input per step, ``L`` cross-entropy in the paper.

    Parameters
    ----------
    sigma: the training noise level; default 0.25 (the paper trains and certifies at
        sigma in {0.12, 0.25, 0.5, 1.0}; its code's ``--noise_sd`` has no useful default).
        Train at the sigma you will certify with.
    loss, loss_params: any per-sample loss of the losses registry (as :class:`ERM`),
        default cross-entropy, the paper's.

    With ``sigma=0`` this is ERM exactly. Metric ``accuracy``: of the base model on the
    noisy inputs it trained on (what the reference's training log reports).

    Deviations from the reference code (locuslab/smoothing, ``code/train.py``): noise
    comes from the objective's generator instead of the global RNG; everything else (noise
    added in the input space before the model's normalisation layer, no clipping) is the same.
    """

    def __init__(
        self,
        sigma: float = DEFAULT_SIGMA,
        loss: str | Loss = "ce",
        loss_params: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.sigma = check_sigma(sigma)
        self._init_criterion(loss, dict(loss_params or {}))

    def loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        z = draw_noise(self, x, 1)
        logits = model(noisy_copies(x, z, self.sigma))
        return apply_loss(self.criterion, logits, y, index), {"accuracy": accuracy_metric(logits, y)}

    def get_params(self) -> dict[str, Any]:
        return {"sigma": self.sigma, "loss": self.loss_name, "loss_params": dict(self.loss_params)}


@objectives.register("smoothadv")
class SmoothAdv(AdversarialObjective):
    """SmoothAdv (Salman et al. 2019, "Provably Robust Deep Learning via Adversarially
    Trained Smoothed Classifiers", NeurIPS, Sec. 3 and its "multiple noise samples" form):
    per batch, draw ``m`` noise vectors ``delta_i = sigma * z_i`` once, find

        x' = argmax_{||x' - x||_2 <= eps}  -log( (1/m) sum_i softmax(f(x' + delta_i))_y )

    (an attack on the soft smoothed classifier) with L2 PGD, reusing the same ``delta_i``
    in every step, then minimise ``(1/m) sum_i CE(f(x' + delta_i), y)`` (the reference's
    ``--train-multi-noise`` training).

    The maximisation is the attack registry's ``pgd`` (norm ``l2``, normalised-gradient
    steps) run through :func:`~robustlab.train.adversarial.base.perturb` on
    :class:`robustlab.certify.soft.SoftSmoothed` with the batch's fixed noise: its output
    is ``log`` of the mean softmax, so PGD's cross-entropy *is* the objective above.

    Defaults: the argparse defaults of the official code (Hadisalman/smoothing-adversarial,
    ``code/train_pgd.py`` and ``code/attacks.py``, class ``PGD_L2``): ``eps=0.25``
    (``--epsilon 64``, divided by 256 in the code), ``steps=10``, step size
    ``2 * eps / steps``, start at ``x`` (the code's delta starts at zero), ``m=1``
    (``--num-noise-vec``), no warm-up (``--warmup 1``, which is full eps from the first
    epoch), attack in eval mode (``bn_mode="eval"``: the code calls ``model.eval()`` for the
    attack). ``sigma`` defaults to 0.25 like the other smoothing objectives (the code's
    ``--noise_sd`` default is 0). The README's worked example is ``sigma=0.12, eps=64/256,
    steps=10, m=2, eps_warmup=10`` with multi-noise training over 150 epochs.

    Parameters
    ----------
    sigma: noise level of the smoothed classifier (>= 0).
    eps: L2 radius of the attack (numbers or fractions such as ``"64/256"``).
    steps: PGD steps.
    m: noise draws per input (``m_train`` in the paper): the attack averages the softmax
        over them and training uses all ``m`` noisy copies.
    step_size, rel_step_size: PGD step, absolute or relative to the current eps; default
        ``2 / steps`` times eps (the official ``max_norm / steps * 2``).
    eps_warmup: the official ``--warmup`` schedule: in (0-based) epoch ``e`` the radius is
        ``eps * min(1, (e + 1) / eps_warmup)``, constant within the epoch; 0 (or 1) means the
        full eps from the start. (This is the reference's per-epoch staircase, not the
        per-step linear ramp of ``pgd-at``'s ``eps_warmup``.)
    bn_mode: module mode during the attack (``"eval"``, ``"train"``, ``"keep"``).
    clean_metrics: also report ``accuracy``, the base model's accuracy on the noisy clean
        copies ``x + delta_i`` (one extra no-grad forward pass in eval mode).

    Metrics: ``adv_accuracy`` (share of the ``m`` noisy adversarial copies classified
    correctly, training mode), ``accuracy`` (see ``clean_metrics``).

    Deviations from the official code: (1) the step is projected onto the L2 ball and then
    clipped to the input box (robustlab's one projection for L2); the reference clips then
    renormalises; both land in the intersection, at different points when both constraints
    bind. (2) A zero input gradient gives a zero step; the reference substitutes a random
    direction for it (from the global RNG). (3) ``-log`` of the mean softmax is computed as a
    log-sum-exp instead of ``log(clamp(mean, 1e-20))``. (4) The batch layout and the number
    of optimiser steps per batch (see the module docstring). (5) The reference's
    single-copy training (without ``--train-multi-noise``: train on copy 0 only) is not
    offered; with ``m=1`` both are the same.
    """

    def __init__(
        self,
        *,
        sigma: float = DEFAULT_SIGMA,
        eps: float | str = 0.25,
        steps: int = 10,
        m: int = 1,
        step_size: float | str | None = None,
        rel_step_size: float | None = None,
        eps_warmup: float = 0.0,
        bn_mode: str | None = None,
        clean_metrics: bool = True,
    ) -> None:
        super().__init__(loss="ce", norm="l2", eps=eps, eps_warmup=eps_warmup, bn_mode=bn_mode)
        self.sigma = check_sigma(sigma)
        self.steps = check_int(steps, "steps", minimum=1)
        self.m = check_int(m, "m", minimum=1)
        self.rel_step = relative_step(step_size, rel_step_size, self.threat.eps, 2.0 / self.steps)
        self.clean_metrics = check_bool(clean_metrics, "clean_metrics")
        self.attack = make_attack("pgd", steps=self.steps, rel_step_size=self.rel_step, random_start=False, loss="ce")
        self._record_params(locals())

    # -- the official per-epoch warm-up ---------------------------------------------------
    def current_eps(self) -> float:
        """``eps * min(1, (epoch + 1) / eps_warmup)`` for the current (0-based) epoch."""
        if self.eps_warmup <= 0:
            return self.threat.eps
        epoch = math.floor(self.progress + 1e-9)
        return self.threat.eps * min(1.0, (epoch + 1) / self.eps_warmup)

    def ramp_epochs(self) -> float:
        """Epochs that end before the radius is full: ``ceil(eps_warmup) - 1``."""
        return float(max(0, math.ceil(self.eps_warmup) - 1))

    # -- the objective --------------------------------------------------------------------
    def smoothed(self, model: nn.Module, noise: torch.Tensor) -> SoftSmoothed:
        """The soft smoothed classifier the attack maximises against (fixed ``noise``)."""
        return SoftSmoothed(model, self.sigma, noise=noise)

    def adversarial_smoothed(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """``x'`` in the L2 ball of the current radius around ``x`` (the attack template)."""
        assert self.attack is not None
        soft = self.smoothed(model, noise)
        return perturb(self.attack, soft, x, y, self.current_threat(), self.generator, self.bn_mode)

    def adversarial(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Adversarial inputs against the soft smoothed classifier under a fresh noise draw
        (:meth:`loss` draws the noise itself, to share it with the training step)."""
        return self.adversarial_smoothed(model, x, y, draw_noise(self, x, self.m))

    def loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        z = draw_noise(self, x, self.m)  # once per batch: the attack and the training share it
        x_adv = self.adversarial_smoothed(model, x, y, z)
        logits = model(noisy_copies(x_adv, z, self.sigma))
        per = F.cross_entropy(logits, y.repeat(self.m), reduction="none").reshape(self.m, -1).mean(0)
        metrics = {"adv_accuracy": per_copy_accuracy(logits, y, self.m)}
        if self.clean_metrics:
            noisy = noisy_copies(x, z, self.sigma)
            metrics["accuracy"] = clean_accuracy_metric(model, noisy, y.repeat(self.m)).reshape(self.m, -1).mean(0)
        return per, metrics


@objectives.register("consistency")
class ConsistencyRegularization(Objective):
    """Consistency regularisation (Jeong & Shin 2020, "Consistency Regularization for
    Certified Robustness of Smoothed Classifiers", NeurIPS, Sec. 3, the total objective):
    with ``m`` noisy copies ``x + delta_i``, ``delta_i ~ N(0, sigma^2 I)``, and
    ``p_hat = (1/m) sum_i softmax(f(x + delta_i))``,

        L = (1/m) sum_i CE(f(x + delta_i), y)
            + lam * (1/m) sum_i KL(p_hat || softmax(f(x + delta_i)))
            + eta * H(p_hat),

    ``H`` the Shannon entropy (added, so it is minimised: the copies should agree on a
    confident prediction). See :func:`consistency_terms`.

    Defaults, from the official code (jh-jeong/smoothing-consistency): ``m=2`` (the paper's
    and README's ``--num-noise-vec 2``; the argparse default 1 makes the KL term vanish),
    ``lam=20`` (``--lbd`` default of the main script ``code/train.py`` and the README's
    Gaussian example; ``code/train_consistency.py`` defaults to 10, and the released CIFAR-10
    certification logs hold runs with 5, 10 and 20), ``eta=0.5`` (the default of
    ``consistency_loss`` in ``code/consistency.py``). ``sigma`` defaults to 0.25 like the other smoothing objectives.
    The direction of the KL (``p_hat`` first), the + sign of the entropy term and the
    gradient through ``p_hat`` follow ``code/consistency.py``.

    Metrics: ``accuracy`` (share of the noisy copies classified correctly), ``kl`` and
    ``entropy`` (the two regularisers, per sample, before weighting).

    Deviations: noise from the objective's generator; ``log p_hat`` as a log-sum-exp
    instead of ``log(clamp(p_hat, 1e-20))``; the batch layout (see the module docstring).
    The official script's SmoothAdv variant (``--adv-training``) is not part of this
    objective.
    """

    def __init__(
        self,
        *,
        sigma: float = DEFAULT_SIGMA,
        m: int = 2,
        lam: float = 20.0,
        eta: float = 0.5,
    ) -> None:
        super().__init__()
        self.sigma = check_sigma(sigma)
        self.m = check_int(m, "m", minimum=1)
        if self.m < 2:
            raise ConfigError(
                f"consistency compares m >= 2 noisy copies of each input, got m={self.m}; use m=2 "
                f"(the paper's) or the 'gaussian' objective for one copy."
            )
        self.lam = check_float(lam, "lam", low=0.0)
        self.eta = check_float(eta, "eta", low=0.0)

    def loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        z = draw_noise(self, x, self.m)
        logits = model(noisy_copies(x, z, self.sigma))
        ce, kl, entropy = consistency_terms(logits, y, self.m)
        per = ce + self.lam * kl + self.eta * entropy
        return per, {
            "accuracy": per_copy_accuracy(logits, y, self.m),
            "kl": kl.detach(),
            "entropy": entropy.detach(),
        }

    def get_params(self) -> dict[str, Any]:
        return {"sigma": self.sigma, "m": self.m, "lam": self.lam, "eta": self.eta}


__all__ = [
    "DEFAULT_SIGMA",
    "ConsistencyRegularization",
    "GaussianAugmentation",
    "SmoothAdv",
    "check_sigma",
    "consistency_terms",
    "draw_noise",
    "per_copy_accuracy",
]
