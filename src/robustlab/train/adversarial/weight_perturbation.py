"""Adversarial weight perturbation (Wu, Xia & Wang 2020) around PGD-AT or TRADES."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from robustlab.attacks import ThreatModel
from robustlab.errors import ConfigError
from robustlab.losses import Loss
from robustlab.registry import check_params
from robustlab.train.adversarial.base import AdversarialObjective
from robustlab.train.objectives import Objective, objectives
from robustlab.validation import check_float, check_int

AWP_BASES = ("pgd-at", "trades")
# (gamma, warm-up epochs) from the official code, csdongxian/AWP
_AWP_DEFAULTS = {"pgd-at": (0.01, 0), "trades": (0.005, 9)}


@objectives.register("awp")
class AWP(Objective):
    """Adversarial weight perturbation (Wu, Xia & Wang, NeurIPS 2020, "Adversarial Weight
    Perturbation Helps Robust Generalization", Eq. (8)-(10)), wrapped around ``pgd-at`` or
    ``trades`` (``base``; every other keyword goes to the base objective).

    Per step: the base objective's adversarial inputs ``x'`` are generated; the base's
    outer loss is evaluated on a proxy copy of the model and its gradient ``g`` taken;
    each weight matrix ``w_l`` (parameters with more than one dimension and ``weight``
    in the name, as the official ``diff_in_weights``) is perturbed by
    ``v_l = gamma * ||w_l|| / (||g_l|| + 1e-20) * g_l`` (the official code's normalised
    one-step proxy ascent); the base's outer loss is computed with the perturbed weights
    and back-propagated; then, **before the optimiser step**, every perturbed weight is
    restored exactly with ``copy_`` from a saved copy (no floating-point subtraction), so
    the update is applied to the unperturbed weights with the gradient taken at the
    perturbed ones. (The official code steps first and subtracts ``v`` afterwards, which
    differs only by weight decay acting on ``w + v`` and by rounding.)

    Defaults from the official code: ``pgd-at``: ``gamma=0.01``, no warm-up
    (``AT_AWP/train_cifar10.py``); ``trades``: ``gamma=0.005`` and AWP from the 10th
    epoch (``--awp-warmup 10`` with epochs counted from 1, i.e. ``warmup=9`` epochs
    without AWP here; ``trades_AWP/train_trades_cifar.py``). The proxy forward runs in
    train mode on a copy of the model, so the model's batch-norm statistics are untouched
    by it. Losses with per-sample state are refused (the proxy pass would update it).

    Metrics: the base objective's, plus ``awp_active`` (1 once AWP applies).
    """

    def __init__(
        self,
        base: str = "pgd-at",
        *,
        gamma: float | None = None,
        warmup: int | None = None,
        loss: str | Loss = "ce",
        loss_params: Mapping[str, Any] | None = None,
        **base_params: Any,
    ) -> None:
        super().__init__()
        key = objectives.canonical(base)
        if key not in AWP_BASES:
            raise ConfigError(f"awp wraps one of {', '.join(AWP_BASES)}; got base={base!r}.")
        factory = objectives.get(key)
        check_params(
            factory.__init__,
            base_params,
            what=f"awp (base {key!r})",
            allow_extra=("base", "gamma", "warmup"),
        )
        self.base: AdversarialObjective = objectives.create(key, loss=loss, loss_params=loss_params, **base_params)  # type: ignore[assignment]
        if self.base.needs_indices:
            raise ConfigError(
                "awp cannot use a loss with per-sample state (its proxy pass would update that state "
                "twice per step); use a stateless loss."
            )
        d_gamma, d_warm = _AWP_DEFAULTS[key]
        self.gamma = check_float(d_gamma if gamma is None else gamma, "gamma", low=0.0)
        self.warmup = check_int(d_warm if warmup is None else warmup, "warmup (epochs without weight perturbation)", minimum=0)
        self.base_name = key
        self.epoch = 0
        self._proxy: nn.Module | None = None
        self._saved: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._params = {"base": key, "gamma": self.gamma, "warmup": self.warmup, **self.base.get_params()}

    # -- delegation to the base objective --------------------------------------------
    @property
    def threat(self) -> ThreatModel:
        return self.base.threat

    @property
    def needs_indices(self) -> bool:  # type: ignore[override]
        return self.base.needs_indices

    def setup(self, num_samples: int, num_classes: int) -> None:
        self.base.setup(num_samples, num_classes)

    def start_epoch(self, epoch: int, generator: torch.Generator) -> None:
        super().start_epoch(epoch, generator)
        self.epoch = epoch
        self.base.start_epoch(epoch, generator)

    def set_progress(self, epoch: float, total_epochs: int) -> None:
        super().set_progress(epoch, total_epochs)
        self.base.set_progress(epoch, total_epochs)

    def ramp_epochs(self) -> float:
        return self.base.ramp_epochs()

    def check_training(self, epochs: int) -> None:
        self.base.check_training(epochs)
        if self.gamma > 0 and self.warmup >= epochs:
            raise ConfigError(
                f"AWP's warm-up ({self.warmup} epochs without weight perturbation) is not shorter than "
                f"training ({epochs} epochs), so AWP would never apply; lower warmup or train longer."
            )

    def state_dict(self) -> dict[str, Any]:
        return {"base": self.base.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base.load_state_dict(state.get("base", {}))

    def get_params(self) -> dict[str, Any]:
        return dict(self._params)

    # -- weight perturbation ---------------------------------------------------------
    @staticmethod
    def perturbed_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        """The weights AWP perturbs: matrices/kernels named ``*weight*`` (official code)."""
        return [(n, p) for n, p in model.named_parameters() if p.dim() > 1 and "weight" in n]

    def weight_perturbation(
        self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """``v_l`` for each perturbed weight (computed on a proxy copy in train mode)."""
        if self._proxy is None:
            self._proxy = copy.deepcopy(model)
        proxy = self._proxy
        proxy.load_state_dict(model.state_dict())
        proxy.train()
        names = [n for n, _ in self.perturbed_parameters(model)]
        params = dict(proxy.named_parameters())
        with torch.enable_grad():
            per, _ = self.base.outer(proxy, x, x_adv, y, None, metrics=False)
            grads = torch.autograd.grad(per.float().mean(), [params[n] for n in names], allow_unused=True)
        out: dict[str, torch.Tensor] = {}
        model_params = dict(model.named_parameters())
        for n, g in zip(names, grads, strict=True):
            if g is None:
                continue
            w = model_params[n].detach()
            out[n] = self.gamma * w.norm() / (g.norm() + 1e-20) * g.detach()
        return out

    @torch.no_grad()
    def apply_perturbation(self, model: nn.Module, v: Mapping[str, torch.Tensor]) -> None:
        """Add ``v`` to the model's weights, keeping exact copies of the originals."""
        self.restore()
        params = dict(model.named_parameters())
        for n, d in v.items():
            p = params[n]
            self._saved.append((p, p.detach().clone()))
            p.add_(d.to(p.dtype))

    @torch.no_grad()
    def restore(self) -> None:
        """Put back the saved weights bit for bit (``copy_``) and forget them."""
        for p, orig in self._saved:
            p.copy_(orig)
        self._saved = []

    def after_backward(self, model: nn.Module) -> None:
        """Trainer hook between backward and the optimiser step: restore the weights."""
        self.restore()

    def loss(self, model, x, y, index):  # type: ignore[no-untyped-def]
        x_adv = self.base.adversarial(model, x, y)
        active = self.gamma > 0 and self.epoch >= self.warmup
        if active:
            self.apply_perturbation(model, self.weight_perturbation(model, x, x_adv, y))
        per, metrics = self.base.outer(model, x, x_adv, y, index)
        metrics = dict(metrics)
        metrics["awp_active"] = torch.tensor(float(active))
        return per, metrics
