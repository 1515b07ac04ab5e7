"""The base of every adversarial objective: threat model, eps warm-up, batch-norm mode, a
composable supervised loss, and the one adapter (:func:`perturb`) that talks to the attack
engine."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from robustlab import attacks as _attacks
from robustlab.attacks import ThreatModel, parse_eps
from robustlab.attacks import engine as _engine
from robustlab.errors import ConfigError, InvalidInputError
from robustlab.losses import Loss
from robustlab.train.objectives import (
    CriterionObjective,
    accuracy_metric,
    apply_loss,
)
from robustlab.validation import check_choice, check_float

BN_MODES = _engine.BN_MODES  # ("eval", "train", "keep")


# =====================================================================================
# The one place that talks to the attack engine.
# =====================================================================================
def make_attack(name: str, /, **params: Any) -> _attacks.Attack:
    """Build an attack from the registry (``robustlab.attacks.create``), for training."""
    return _attacks.create(name, **params)


def perturb(
    attack: _attacks.Attack,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    generator: torch.Generator | None,
    bn_mode: str,
    *,
    clean_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """Training adversarials for ``(x, y)``: the single call into the attack engine.

    Uses :meth:`robustlab.attacks.Attack.generate`. Losses that read the clean logits get
    them computed once per batch by the engine, in the generation mode, without gradients.
    """
    if generator is None:
        raise ConfigError(
            "the objective has no random generator yet: the Trainer sets one per epoch through "
            "objective.start_epoch(epoch, generator); call that first when using an objective directly."
        )
    return attack.generate(model, x, y, threat, generator=generator, bn_mode=bn_mode, clean_logits=clean_logits)


# =====================================================================================
# Shared machinery
# =====================================================================================
def check_eps(value: float | str, name: str = "eps") -> float:
    """A perturbation size: a number or a fraction such as ``"8/255"``, finite and >= 0
    (booleans refused); the norm-specific upper bound is checked by the threat model."""
    if isinstance(value, str):
        try:
            value = parse_eps(value)
        except InvalidInputError:
            raise ConfigError(f"{name} must be a number or a fraction such as 8/255, got {value!r}.") from None
    return check_float(value, name, low=0.0)


def relative_step(step_size: float | str | None, rel_step_size: float | None, eps: float, default: float) -> float:
    """Step size as a multiple of eps (so an eps warm-up scales the step too): from an
    absolute ``step_size`` (fractions such as ``"2/255"`` accepted) or ``rel_step_size``
    (default ``default``); both given is refused."""
    if step_size is not None and rel_step_size is not None:
        raise ConfigError("give step_size (absolute) or rel_step_size (relative to eps), not both.")
    if step_size is not None:
        s = check_eps(step_size, "step_size")
        if s == 0:
            raise ConfigError("step_size must be > 0 (a step of 0 never moves).")
        return s / eps if eps > 0 else 0.0
    if rel_step_size is None:
        return default
    return check_float(rel_step_size, "rel_step_size", low=0.0, low_open=True)


def kl_per_sample(clean_logits: torch.Tensor, adv_logits: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(clean) || softmax(adv))`` per sample (gradient through both)."""
    log_p = clean_logits.log_softmax(1)
    return (log_p.exp() * (log_p - adv_logits.log_softmax(1))).sum(1)


class AdversarialObjective(CriterionObjective):
    """Base class: threat model, eps warm-up, batch-norm mode, composable loss, one attack.

    Subclasses set :attr:`attack` in ``__init__`` (with :func:`make_attack`) and implement
    :meth:`outer` (the loss given adversarial inputs); :meth:`adversarial` generates them.
    """

    default_bn_mode: ClassVar[str] = "eval"

    def __init__(
        self,
        *,
        loss: str | Loss = "ce",
        loss_params: Mapping[str, Any] | None = None,
        norm: str = "linf",
        eps: float | str = 8 / 255,
        eps_warmup: float = 0.0,
        bn_mode: str | None = None,
    ) -> None:
        super().__init__()
        self._init_criterion(loss, dict(loss_params or {}))
        self.threat = ThreatModel(norm, check_eps(eps))  # the threat model checks the norm and eps's bound
        self.eps_warmup = check_float(eps_warmup, "eps_warmup", low=0.0)
        self.bn_mode = check_choice(self.default_bn_mode if bn_mode is None else bn_mode, "bn_mode", BN_MODES)
        self.attack: _attacks.Attack | None = None
        self._params: dict[str, Any] = {}

    def _record_params(self, frame_locals: Mapping[str, Any]) -> None:
        sig = inspect.signature(type(self).__init__)
        for name in sig.parameters:
            if name == "self" or name not in frame_locals:
                continue
            v = frame_locals[name]
            if name == "loss":
                v = self.loss_name
            self._params[name] = v

    # -- Objective hooks ------------------------------------------------------------
    def check_training(self, epochs: int) -> None:
        if self.eps_warmup > epochs:
            raise ConfigError(
                f"the eps warm-up lasts {self.eps_warmup:g} epochs but training has only {epochs}: "
                f"eps would never reach {self.threat.eps:g}. Shorten eps_warmup to at most {epochs} "
                f"or train longer."
            )

    def ramp_epochs(self) -> float:
        """The eps warm-up (``eps_warmup`` epochs)."""
        return self.eps_warmup

    def get_params(self) -> dict[str, Any]:
        return dict(self._params)

    # -- threat and generation ------------------------------------------------------
    def current_eps(self) -> float:
        """eps at the current training progress: ``eps * min(1, progress / eps_warmup)``."""
        if self.eps_warmup <= 0:
            return self.threat.eps
        return self.threat.eps * min(1.0, self.progress / self.eps_warmup)

    def current_threat(self) -> ThreatModel:
        eps = self.current_eps()
        return self.threat if eps == self.threat.eps else self.threat.with_eps(eps)

    def adversarial(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Adversarial inputs for the batch from this objective's attack."""
        assert self.attack is not None
        return perturb(self.attack, model, x, y, self.current_threat(), self.generator, self.bn_mode)

    def outer(
        self,
        model: nn.Module,
        x: torch.Tensor,
        x_adv: torch.Tensor,
        y: torch.Tensor,
        index: torch.Tensor | None,
        *,
        metrics: bool = True,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Per-sample outer loss and metrics given the adversarial inputs (``metrics=False``
        skips metrics that cost extra forward passes)."""
        raise NotImplementedError

    def loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x_adv = self.adversarial(model, x, y)
        return self.outer(model, x, x_adv, y, index)

    def _supervised(self, logits: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        return apply_loss(self.criterion, logits, y, index)


@torch.no_grad()
def clean_accuracy_metric(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample clean correctness in eval mode (no batch-norm update, no dropout draw)."""
    was = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        return accuracy_metric(model(x), y)
    finally:
        for m, t in was:
            m.training = t
