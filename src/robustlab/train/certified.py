"""Certified training: IBP and CROWN-IBP, objectives whose robust loss is built from sound
bounds on the margins, so the trained model can be *verified* (not only attacked).

- ``ibp`` (:class:`IBPTraining`): Gowal et al. 2018/2019, interval bound propagation;
- ``crown-ibp`` (:class:`CrownIBPTraining`): Zhang et al. ICLR 2020, a mix of the
  CROWN-IBP and the IBP lower bounds that moves from CROWN-IBP to IBP as eps grows.

>>> from robustlab import train
>>> obj = train.create("ibp", eps=0.4, warmup=3, rampup=17)          # MNIST, tested at 0.3
>>> obj = train.create("crown-ibp", eps=0.4, warmup=3, rampup=17)
>>> train.Trainer(model, obj, epochs=40, optimizer="adam", lr=1e-3).fit(train_set)

Both minimise, per sample,

    kappa * CE(z(x), y) + (1 - kappa) * CE(z_hat(x, eps), y),

where ``z(x)`` are the clean logits (the model in training mode, as the official code) and
``z_hat`` are the worst-case logits built from lower bounds ``m_j`` of the margins
``z_y - z_j`` (``j != y``) over the eps ball intersected with the input box:
``z_hat_y = 0`` and ``z_hat_j = -m_j`` (:func:`robust_cross_entropy`). This is the
"elided" form of Gowal et al. (Sec. 3: the last layer merged with the specification
``c = e_y - e_j``, so each margin is bounded directly rather than from separate bounds on
``z_y`` and ``z_j``) and what both official codes compute (deepmind's IBP ``Losses``: the
cross-entropy of the upper bounds of ``z_j - z_y`` with a zero column appended for the true
class; CROWN-IBP's ``train.py``: ``CrossEntropyLoss()(-lb, labels)`` after scattering the
``K - 1`` lower bounds into a row of zeros). Because ``z_hat`` is ``z - z_y`` when the margin
bounds are the true margins, at ``eps = 0`` the robust term equals the clean
cross-entropy.

The bounds come from :func:`robustlab.certify.bounds.compute_bounds` with the margin
specification :func:`~robustlab.certify.bounds.margin_spec` (``K - 1`` rows), so one
bound computation yields all margins and memory stays that of ``K - 1`` outputs; the
bounds are differentiable in the model's parameters and the gradient of the loss flows
through them.

Schedules (:class:`CertifiedSchedule`, per optimiser step through ``set_progress``):
``warmup`` epochs of natural training at eps = 0, then eps grows linearly from 0 to
``eps`` over ``rampup`` epochs, then stays. The weights follow eps linearly, as in the
official CROWN-IBP code (``kappa = 1 - (1 - kappa_final) * eps_t / eps``; the same for
``beta``): kappa goes from 1 to ``kappa_final`` and CROWN-IBP's beta from 1 to
``beta_final`` over the ramp. While eps is 0 no bounds are computed (the loss is the clean
cross-entropy exactly, as the official code switches to natural training then).

Metrics per sample: ``accuracy`` (clean, from the training-mode logits of the loss) and
``verified`` (every margin's lower bound at the *current* eps is positive; during the
warm-up, where eps is 0, that is the clean margin in eval mode). ``verified`` uses the
tightest sound bound the step computed (for ``crown-ibp`` the elementwise larger of the
CROWN-IBP and IBP bounds), so training logs show a verified *training* accuracy at the
current eps; verify test points with :func:`robustlab.certify.bounds.verified_accuracy`.

Deviations shared by both (from the official codes):

- **batch norm**: :func:`~robustlab.certify.bounds.compute_bounds` evaluates the model in
  eval mode, so a BatchNorm layer is the affine map of its *running* statistics in the
  bounds, while the official IBP and CROWN-IBP training propagate bounds with the batch's
  statistics (train mode). For models without BatchNorm (``mlp``, ``mnist_net``) nothing
  differs; for BN models the bounds and their gradient differ from the official ones (no
  gradient flows through the batch statistics).
- **dropout** is off in the bounds (eval mode) and on in the clean logits.
- eps is a per-step linear function of the Trainer's progress; the official codes
  interpolate eps per batch within each epoch (CROWN-IBP) or per global step (IBP) — the
  same ramp up to the rounding of a step.
- the ``smoothed`` eps schedule of CROWN-IBP's CIFAR configs and the L1 weight penalty of
  some of its configs are not offered (use the Trainer's ``weight_decay`` for L2).
- under the Trainer's ``amp`` the bounds are computed under autocast too (low-precision
  bounds: a training signal, not a certificate; verify in float32 after training).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.attacks import ThreatModel
from robustlab.attacks.engine import eval_mode
from robustlab.certify.bounds import BoundedModel, compute_bounds, margin_spec
from robustlab.errors import ConfigError, ShapeMismatchError
from robustlab.train.adversarial.base import check_eps
from robustlab.train.objectives import Objective, accuracy_metric, objectives
from robustlab.validation import check_float

#: official schedule lengths in epochs: CROWN-IBP's ``config/mnist_dm-large_0.2.json``
#: (``schedule_start`` 3, ``schedule_length`` 18, i.e. 3 epochs at eps 0 and a ramp over
#: 17 epochs), which is Gowal et al.'s MNIST schedule (2,000 warm-up and 10,000 ramp-up
#: steps of batch 100 on 60,000 images: 3.3 and 16.7 epochs) rounded to whole epochs
DEFAULT_WARMUP = 3.0
DEFAULT_RAMPUP = 17.0
#: final weight of the clean cross-entropy: ``final-kappa`` of CROWN-IBP's
#: ``defaults.json`` and ``nominal_xent_final`` of the IBP code's MNIST example
DEFAULT_KAPPA_FINAL = 0.5
#: final weight of the CROWN-IBP bound: ``final-beta`` of CROWN-IBP's ``defaults.json``
DEFAULT_BETA_FINAL = 0.0


@dataclass(frozen=True)
class CertifiedSchedule:
    """The eps ramp of certified training and the weights that follow it.

    ``warmup`` epochs at eps 0, then ``eps * (progress - warmup) / rampup`` up to ``eps``
    (a ramp of 0 epochs jumps to ``eps`` at the end of the warm-up). ``progress`` is the
    Trainer's fractional number of epochs done (``epoch + batch / batches``).
    """

    eps: float
    warmup: float
    rampup: float

    def fraction(self, progress: float) -> float:
        """Share of the ramp done at ``progress``: 0 during the warm-up, 1 after the ramp."""
        done = progress - self.warmup
        if done < 0:
            return 0.0
        if self.rampup <= 0 or done >= self.rampup:
            return 1.0
        return done / self.rampup

    def eps_at(self, progress: float) -> float:
        """The training eps at ``progress``."""
        f = self.fraction(progress)
        return self.eps if f == 1.0 else self.eps * f

    def weight_at(self, progress: float, final: float) -> float:
        """A weight that starts at 1 and reaches ``final`` with eps, linearly in eps
        (CROWN-IBP's ``1 - (1 - final) * eps_t / eps``)."""
        return 1.0 - (1.0 - final) * self.fraction(progress)

    @property
    def length(self) -> float:
        """Epochs until eps is full (warm-up plus ramp)."""
        return self.warmup + self.rampup


def robust_cross_entropy(lower: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy of the worst-case logits built from margin lower bounds.

    ``lower`` has shape ``(B, K - 1)``: lower bounds ``m_j`` of ``z_y - z_j`` for the
    ``K - 1`` classes ``j != y`` (the rows of :func:`~robustlab.certify.bounds.margin_spec`).
    The worst-case logits are ``z_hat_y = 0``, ``z_hat_j = -m_j`` (Gowal et al. 2018,
    Sec. 3; CROWN-IBP's ``CrossEntropyLoss()(-lb, labels)``), and their cross-entropy with
    the true class is ``-log(1 / (1 + sum_j exp(-m_j))) = logsumexp([0, -m_1, ...])``,
    which is what is computed (no scatter needed; the order of the ``m_j`` is irrelevant).
    """
    if lower.dim() != 2:
        raise ShapeMismatchError(f"margin lower bounds must have shape (B, K - 1), got {tuple(lower.shape)}.")
    zero = lower.new_zeros(len(lower), 1)
    return torch.logsumexp(torch.cat([zero, -lower], dim=1), dim=1)


def margin_lower_bounds(
    model: nn.Module | BoundedModel, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, method: str,
    num_classes: int,
) -> torch.Tensor:
    """Lower bounds ``(B, K - 1)`` of the margins ``z_y - z_j`` over ``threat``'s ball
    around ``x`` (with the input box), differentiable in the model's parameters.

    ``method`` is ``"ibp"`` or ``"crown-ibp"``; CROWN-IBP is taken *without* the IBP
    intersection and without the upper-bound pass (its gradient is the CROWN-IBP bound's,
    as in Zhang et al.'s training).
    """
    spec = margin_spec(y, num_classes)
    lower, _ = compute_bounds(
        model, x, threat.eps, threat.norm, method, spec, bound_upper=False, intersect_ibp=False
    )
    return lower


class CertifiedObjective(Objective):
    """Base of ``ibp`` and ``crown-ibp``: threat model, schedule, kappa, the loss from
    margin lower bounds. Subclasses implement :meth:`lower_bounds`."""

    #: the registry name, for messages
    method_name: ClassVar[str] = "certified"

    def __init__(
        self,
        *,
        eps: float | str,
        norm: str,
        warmup: float,
        rampup: float,
        kappa_final: float,
    ) -> None:
        super().__init__()
        self.threat = ThreatModel(norm, check_eps(eps))  # checks the norm and the norm's bound on eps
        if self.threat.eps == 0:
            raise ConfigError(
                f"{self.method_name} needs a training eps > 0 (got 0); use the 'erm' objective for natural training."
            )
        self.schedule = CertifiedSchedule(
            self.threat.eps, check_float(warmup, "warmup", low=0.0), check_float(rampup, "rampup", low=0.0)
        )
        self.kappa_final = check_float(kappa_final, "kappa_final", low=0.0, high=1.0)
        self._params: dict[str, Any] = {"eps": eps, "norm": self.threat.norm, "warmup": self.schedule.warmup,
                                        "rampup": self.schedule.rampup, "kappa_final": self.kappa_final}

    # -- schedules ------------------------------------------------------------------
    def current_eps(self) -> float:
        """eps at the current training progress (see :class:`CertifiedSchedule`)."""
        return self.schedule.eps_at(self.progress)

    def current_kappa(self) -> float:
        """Weight of the clean cross-entropy: 1 during the warm-up, ``kappa_final`` after the ramp."""
        return self.schedule.weight_at(self.progress, self.kappa_final)

    # -- Objective hooks ------------------------------------------------------------
    def check_training(self, epochs: int) -> None:
        if self.schedule.length > epochs:
            raise ConfigError(
                f"{self.method_name}'s warm-up ({self.schedule.warmup:g}) plus eps ramp ({self.schedule.rampup:g}) "
                f"last {self.schedule.length:g} epochs but training has only {epochs}: eps would never reach "
                f"{self.threat.eps:g}. Shorten warmup/rampup or train longer."
            )

    def ramp_epochs(self) -> float:
        """Warm-up plus ramp: the Trainer judges training-at-chance only after them."""
        return self.schedule.length

    def get_params(self) -> dict[str, Any]:
        return dict(self._params)

    # -- the loss -------------------------------------------------------------------
    def lower_bounds(
        self, model: nn.Module | BoundedModel, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
        num_classes: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lower, best)``: the margin lower bounds the loss uses and the tightest sound
        lower bounds computed (for the ``verified`` metric), each ``(B, K - 1)``."""
        raise NotImplementedError

    def bind(self, model: nn.Module, seed: int) -> None:
        """Trace the model once for the whole training (the bound graph reads the current
        weights at every step)."""
        self._bounded = BoundedModel(model)

    def bounded(self, model: nn.Module) -> nn.Module | BoundedModel:
        """The traced model when ``model`` is the one bound, else ``model`` itself."""
        b = getattr(self, "_bounded", None)
        return b if b is not None and b.model is model else model

    def loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = model(x)
        if logits.dim() != 2:
            raise ShapeMismatchError(f"the model returns outputs of shape {tuple(logits.shape)}; expected logits (N, K).")
        k = logits.shape[1]
        ce = F.cross_entropy(logits, y, reduction="none")
        eps = self.current_eps()
        metrics = {"accuracy": accuracy_metric(logits, y)}
        if eps == 0:  # warm-up: kappa = 1, no bounds (natural training, as the official codes)
            with torch.no_grad():
                metrics["verified"] = clean_margins_positive(model, x, y)
            return ce, metrics
        threat = self.threat if eps == self.threat.eps else self.threat.with_eps(eps)
        lower, best = self.lower_bounds(self.bounded(model), x, y, threat, k)
        kappa = self.current_kappa()
        per = kappa * ce + (1.0 - kappa) * robust_cross_entropy(lower).to(ce.dtype)
        metrics["verified"] = (best.detach() > 0).all(1).float()
        return per, metrics


@torch.no_grad()
def clean_margins_positive(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per sample, 1.0 when every clean margin ``z_y - z_j`` is positive in eval mode (what
    ``verified`` means at eps 0); modes are restored."""
    with eval_mode(model):
        z = model(x)
    zy = z.gather(1, y[:, None])
    others = torch.ones_like(z, dtype=torch.bool).scatter(1, y[:, None], False)
    return ((zy - z) > 0)[others].reshape(len(z), -1).all(1).float()


@objectives.register("ibp")
class IBPTraining(CertifiedObjective):
    """Interval bound propagation training (Gowal et al. 2018, "On the Effectiveness of
    Interval Bound Propagation for Training Verifiably Robust Models", Sec. 3, "Training
    procedure": the loss ``kappa * l(z_K, y) + (1 - kappa) * l(z_hat_K(eps), y)``, with
    the worst-case logits from the elided last layer; published at ICCV 2019 as "Scalable
    Verified Training for Provably Robust Image Classification").

    The margin lower bounds are IBP's (:func:`~robustlab.certify.bounds.compute_bounds`,
    ``method="ibp"``, the specification merged into the last Linear layer). See the module
    docstring for the loss, the schedules, the metrics and the deviations.

    Parameters
    ----------
    eps: the *training* eps (numbers or fractions such as ``"8/255"``); default ``8/255``
        like robustlab's adversarial objectives. The published protocols train above the
        test eps: 0.2 for MNIST 0.1 and 0.4 for MNIST 0.2-0.4 (Gowal et al. Sec. 4;
        CROWN-IBP's ``mnist_dm-large_0.2.json`` / ``_0.4.json``), 1.1x the test eps on
        CIFAR-10 (CROWN-IBP's ``cifar_dm-large_8_255.json``: 0.03451 for 8/255).
    norm: ``"linf"`` (the papers'); ``"l2"``/``"l1"`` bound the ball by its box in IBP.
    warmup: epochs of natural training at eps 0 before the ramp; default 3.
    rampup: epochs over which eps grows linearly from 0 to ``eps``; default 17. (Both from
        CROWN-IBP's ``mnist_dm-large_0.2.json``, Gowal et al.'s MNIST schedule of 2k + 10k
        steps at batch 100 in whole epochs; ``mnist_dm-large_0.4.json`` uses 10 + 50 of 200
        epochs. Together they must fit into the training's epochs.)
    kappa_final: weight of the clean cross-entropy once eps is full (from 1); default 0.5
        (the IBP code's ``nominal_xent_final`` and CROWN-IBP's ``final-kappa``).

    Deviation from Gowal et al.'s schedule: kappa follows eps (CROWN-IBP's rule); the IBP
    code ramps the loss weights over the same warm-up and ramp steps, linearly, which is
    the same function of the step.
    """

    method_name = "ibp"

    def __init__(
        self,
        *,
        eps: float | str = 8 / 255,
        norm: str = "linf",
        warmup: float = DEFAULT_WARMUP,
        rampup: float = DEFAULT_RAMPUP,
        kappa_final: float = DEFAULT_KAPPA_FINAL,
    ) -> None:
        super().__init__(eps=eps, norm=norm, warmup=warmup, rampup=rampup, kappa_final=kappa_final)

    def lower_bounds(
        self, model: nn.Module | BoundedModel, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
        num_classes: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        lower = margin_lower_bounds(model, x, y, threat, "ibp", num_classes)
        return lower, lower


@objectives.register("crown-ibp")
class CrownIBPTraining(CertifiedObjective):
    """CROWN-IBP training (Zhang et al. ICLR 2020, "Towards Stable and Efficient Training of
    Verifiably Robust Neural Networks", Sec. 3, the CROWN-IBP training objective): the
    margin lower bound

        m = beta * m_CROWN-IBP + (1 - beta) * m_IBP

    in the loss of the module docstring, with beta from 1 to ``beta_final`` and kappa from 1
    to ``kappa_final`` as eps ramps up. ``m_CROWN-IBP`` is one CROWN backward pass from the
    ``K - 1`` margin rows with IBP bounds for every intermediate layer
    (:func:`~robustlab.certify.bounds.compute_bounds`, ``method="crown-ibp"``,
    ``bound_upper=False``, ``intersect_ibp=False``, so its gradient is the CROWN-IBP
    bound's); memory is that of ``K - 1`` outputs. While beta is 0 (after the ramp with the
    default ``beta_final=0``) the CROWN pass is skipped, as in the official code
    (``factor < 1e-5``), and the step costs what ``ibp`` costs.

    Defaults from the official code (huanzhang12/CROWN-IBP): ``kappa_final=0.5`` and
    ``beta_final=0`` (``defaults.json``, ``final-kappa`` and ``final-beta`` of the training
    parameters); ``warmup=3`` and ``rampup=17`` (``config/mnist_dm-large_0.2.json``:
    ``schedule_start`` 3, ``schedule_length`` 18 of 100 epochs; ``mnist_dm-large_0.4.json``,
    the MNIST 0.3 model trained at ``epsilon`` 0.4, uses 10 and 50 of 200 epochs;
    ``cifar_dm-large_8_255.json`` trains at 0.03451 = 1.1 x 8/255 with 320 + 1600 of 3200).
    ``eps`` defaults to 8/255 like robustlab's other objectives: set the training eps of
    the protocol you follow (MNIST: 0.2 for test 0.1, 0.4 for test 0.3; CIFAR-10: 1.1x).

    Parameters: ``eps``, ``norm``, ``warmup``, ``rampup``, ``kappa_final`` as ``ibp``;
    ``beta_final``: weight of the CROWN-IBP bound once eps is full (in [0, 1]).

    Metric ``verified`` uses the larger of the two bounds per margin (both are sound).
    Deviations: those of the module docstring (BatchNorm in eval mode in the bounds; the
    official code uses train-mode statistics). The official ``runnerup_only`` option is not
    offered.
    """

    method_name = "crown-ibp"

    def __init__(
        self,
        *,
        eps: float | str = 8 / 255,
        norm: str = "linf",
        warmup: float = DEFAULT_WARMUP,
        rampup: float = DEFAULT_RAMPUP,
        kappa_final: float = DEFAULT_KAPPA_FINAL,
        beta_final: float = DEFAULT_BETA_FINAL,
    ) -> None:
        super().__init__(eps=eps, norm=norm, warmup=warmup, rampup=rampup, kappa_final=kappa_final)
        self.beta_final = check_float(beta_final, "beta_final", low=0.0, high=1.0)
        self._params["beta_final"] = self.beta_final

    def current_beta(self) -> float:
        """Weight of the CROWN-IBP bound: 1 during the warm-up, ``beta_final`` after the ramp."""
        return self.schedule.weight_at(self.progress, self.beta_final)

    def lower_bounds(
        self, model: nn.Module | BoundedModel, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
        num_classes: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ibp = margin_lower_bounds(model, x, y, threat, "ibp", num_classes)
        beta = self.current_beta()
        if beta == 0:
            return ibp, ibp
        crown = margin_lower_bounds(model, x, y, threat, "crown-ibp", num_classes)
        lower = crown if beta == 1 else beta * crown + (1.0 - beta) * ibp
        return lower, torch.maximum(crown, ibp)


__all__ = [
    "DEFAULT_BETA_FINAL",
    "DEFAULT_KAPPA_FINAL",
    "DEFAULT_RAMPUP",
    "DEFAULT_WARMUP",
    "CertifiedObjective",
    "CertifiedSchedule",
    "CrownIBPTraining",
    "IBPTraining",
    "clean_margins_positive",
    "margin_lower_bounds",
    "robust_cross_entropy",
]
