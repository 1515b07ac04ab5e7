"""Expectation over Transformation: attacks on randomised models.

Athalye, Engstrom, Ilyas & Kwok (2018), "Synthesizing Robust Adversarial Examples", and
Athalye, Carlini & Wagner (2018), "Obfuscated Gradients Give a False Sense of Security",
Sec. 4.3: when the model's forward pass is random, ascend the *expected* loss, whose
gradient is estimated by averaging the input gradient over ``samples`` forward/backward
passes: ``grad ~ (1/n) sum_s grad_x L(f_s(x), y)``. This is AutoAttack's ``eot_iter``
(20 in its ``rand`` version).

>>> eot = attacks.create("eot", attack="apgd-ce", samples=20, params={"steps": 100})
"""

from __future__ import annotations

from typing import Any

import torch

from robustlab.attacks.base import Attack, attacks
from robustlab.attacks.engine import AttackContext
from robustlab.attacks.threat import ThreatModel
from robustlab.errors import ConfigError
from robustlab.validation import check_int


class EOTContext(AttackContext):
    """An :class:`AttackContext` whose passes average over ``samples`` draws of the
    model's randomness: losses, logits and input gradients are sample means."""

    def __init__(self, inner: AttackContext, samples: int) -> None:
        super().__init__(
            inner.model,
            inner.bounds,
            inner.generator,
            num_classes=inner.num_classes,
            clean_logits=inner.clean_logits,
            training=inner.training,
            amp=inner.amp,
            points=inner.points,
        )
        self.inner = inner
        self.samples = samples

    def logits(self, x: torch.Tensor, *, exact: bool = False) -> torch.Tensor:
        total = None
        for _ in range(self.samples):
            out = super().logits(x, exact=exact)
            total = out if total is None else total + out
        assert total is not None
        return total / self.samples

    def value_and_grad(
        self, x: torch.Tensor, loss_fn: Any, *args: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        loss_sum = grad_sum = logit_sum = None
        for _ in range(self.samples):
            loss, grad, logits = super().value_and_grad(x, loss_fn, *args)
            if loss_sum is None:
                loss_sum, grad_sum, logit_sum = loss, grad, logits
            else:
                loss_sum, grad_sum, logit_sum = loss_sum + loss, grad_sum + grad, logit_sum + logits  # type: ignore[operator]
        assert loss_sum is not None and grad_sum is not None and logit_sum is not None
        n = float(self.samples)
        return loss_sum / n, grad_sum / n, logit_sum / n


@attacks.register("eot")
class EOT(Attack):
    """Wrap ``attack`` so every gradient is averaged over ``samples`` passes of a
    randomised model (Athalye et al. 2018, see the module docstring).

    Parameters
    ----------
    attack: registry name (or :class:`Attack`) of the attack to wrap (default ``apgd-ce``).
    samples: passes averaged per gradient (20, AutoAttack's ``rand`` version).
    params: parameters of the wrapped attack, e.g. ``{"steps": 100}``.

    Success inside the wrapped attack is judged on the averaged logits; the template's
    final check is a single full-precision pass, i.e. one draw of the model's randomness.
    """

    def __init__(self, attack: str | Attack = "apgd-ce", samples: int = 20, params: dict[str, Any] | None = None) -> None:
        samples = check_int(samples, "samples", minimum=1)
        if isinstance(attack, Attack):
            if params:
                raise ConfigError("give params only with an attack name, not with an Attack object.")
            self._inner = attack
        else:
            if attack == "eot":
                raise ConfigError("eot cannot wrap itself.")
            self._inner = attacks.create(attack, **(params or {}))
        self.attack = attack if isinstance(attack, str) else getattr(type(attack), "registry_name", type(attack).__name__)
        self.samples = samples
        self.params = dict(params or {}) if isinstance(attack, str) else self._inner.get_params()
        self.norms = self._inner.norms  # type: ignore[misc]
        self.targeted_ok = self._inner.targeted_ok  # type: ignore[misc]
        self.black_box = self._inner.black_box  # type: ignore[misc]

    def required_classes(self, targeted: bool) -> int:
        return self._inner.required_classes(targeted)

    def needs_clean_logits(self) -> bool:
        return self._inner.needs_clean_logits()

    def perturb(
        self,
        ctx: AttackContext,
        x: torch.Tensor,
        y: torch.Tensor,
        threat: ThreatModel,
        target: torch.Tensor | None,
    ) -> torch.Tensor:
        ectx = EOTContext(ctx, self.samples)
        try:
            out = self._inner.perturb(ectx, x, y, threat, target)
        finally:
            ctx.forwards += ectx.forwards
            ctx.backwards += ectx.backwards
            ctx.info.update(ectx.info)
            ctx.row_info.update(ectx.row_info)
        return out
