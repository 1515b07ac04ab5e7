"""The attack template.

An attack is built with its parameters (``attacks.create("pgd", steps=20)``) and called
as ``attack(model, x, y, threat=ThreatModel("linf", 0.1))``. The public call is fixed
here, in :meth:`Attack.__call__`:

1. it validates inputs (float, finite, inside the model's bounds, labels in range, eps
   allowed for the norm and the bounds, norm supported by the attack);
2. it switches the model to eval mode and turns off parameter gradients, restoring
   both afterwards, so only input gradients are computed;
3. points the model already misclassifies are successes without any work; only the
   remaining points are handed to the subclass's :meth:`Attack.perturb`;
4. it re-checks every returned point with one clean forward pass and reports a
   per-sample ``success`` mask.

Subclasses implement only :meth:`Attack.perturb` (their step logic), using
:class:`AttackContext` for forward/backward passes (counted) and
:class:`BestTracker` to keep the best adversarial example found on any iterate.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.attacks.threat import Bounds, ThreatModel
from robustlab.errors import ConfigError, ShapeMismatchError
from robustlab.registry import Registry
from robustlab.validation import check_inputs, check_labels, check_shape

attacks: Registry[Attack] = Registry("attack")


# -- attack objectives ---------------------------------------------------------------
def margin_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Carlini & Wagner (2017) margin, Eq. (6) with kappa=inf, per sample.

    Untargeted: ``max_{j != y} z_j - z_y`` (positive iff misclassified).
    Targeted: ``z_t - max_{j != t} z_j`` (positive iff classified as t).
    """
    if target is None:
        z_y = logits.gather(1, y[:, None]).squeeze(1)
        other = logits.scatter(1, y[:, None], float("-inf"))
        return other.amax(1) - z_y
    z_t = logits.gather(1, target[:, None]).squeeze(1)
    other = logits.scatter(1, target[:, None], float("-inf"))
    return z_t - other.amax(1)


def ce_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy to maximise (untargeted) or minus CE to the target (targeted)."""
    if target is None:
        return F.cross_entropy(logits, y, reduction="none")
    return -F.cross_entropy(logits, target, reduction="none")


ATTACK_LOSSES = {"ce": ce_loss, "margin": margin_loss, "cw": margin_loss}


def attack_loss(name: str):  # type: ignore[no-untyped-def]
    """Look up a per-sample attack objective by name (``ce``, ``margin``/``cw``)."""
    try:
        return ATTACK_LOSSES[name]
    except KeyError:
        from robustlab.registry import close_matches

        near = close_matches(name, ATTACK_LOSSES)
        hint = f" Did you mean {', '.join(map(repr, near))}?" if near else ""
        raise ConfigError(
            f"unknown attack loss {name!r}.{hint} Available: {', '.join(ATTACK_LOSSES)}."
        ) from None


def is_success(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """Untargeted: prediction != y. Targeted: prediction == target."""
    pred = logits.argmax(1)
    return pred != y if target is None else pred == target


# -- results ---------------------------------------------------------------------------
@dataclass
class AttackResult:
    """What an attack returns.

    ``x_adv``: adversarial inputs (same shape, dtype, device as ``x``);
    ``success``: per-sample bool, the model's prediction on ``x_adv`` is wrong
    (untargeted) or the target (targeted); ``clean_correct``: the prediction on ``x``
    was right; ``forwards``/``backwards``: model passes the attack spent.
    """

    x_adv: torch.Tensor
    success: torch.Tensor
    clean_correct: torch.Tensor
    threat: ThreatModel
    targeted: bool = False
    forwards: int = 0
    backwards: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def robust(self) -> torch.Tensor:
        """Per-sample: correctly classified and not broken (untargeted meaning)."""
        return self.clean_correct & ~self.success

    @property
    def robust_accuracy(self) -> float:
        return float(self.robust.float().mean()) if len(self.robust) else float("nan")


# -- the context handed to subclasses ---------------------------------------------------
class AttackContext:
    """Model access for attack step logic: counted forward passes and input gradients."""

    def __init__(self, model: nn.Module, bounds: Bounds, generator: torch.Generator | None) -> None:
        self.model = model
        self.bounds = bounds
        self.generator = generator
        self.forwards = 0
        self.backwards = 0

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """A forward pass without gradients."""
        self.forwards += len(x)
        with torch.no_grad():
            return self.model(x)

    def value_and_grad(
        self, x: torch.Tensor, loss_fn: Any, *args: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample ``loss_fn(logits, *args)``, its input gradient, and the logits.

        Only the input gradient is computed (parameters do not require gradients
        while an attack runs).
        """
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = self.model(x)
            loss = loss_fn(logits, *args)
            (grad,) = torch.autograd.grad(loss.sum(), x)
        self.forwards += len(x)
        self.backwards += len(x)
        return loss.detach(), grad.detach(), logits.detach()


class BestTracker:
    """Keeps, per sample, the best adversarial example seen on any iterate.

    A sample that succeeded keeps its first successful iterate; otherwise the iterate
    with the highest attack loss is kept.
    """

    def __init__(self, x: torch.Tensor) -> None:
        self.x_best = x.detach().clone()
        self.loss_best = torch.full((len(x),), float("-inf"), device=x.device, dtype=x.dtype)
        self.success = torch.zeros(len(x), dtype=torch.bool, device=x.device)

    def update(
        self,
        x_iter: torch.Tensor,
        loss: torch.Tensor,
        success: torch.Tensor,
        idx: torch.Tensor | None = None,
    ) -> None:
        """Record iterates ``x_iter`` (for rows ``idx`` of the tracked batch, or all)."""
        if idx is None:
            idx = torch.arange(len(self.x_best), device=x_iter.device)
        done = self.success[idx]
        newly = success & ~done
        better = ~done & ~success & (loss >= self.loss_best[idx])  # ties: keep the later iterate
        take = newly | better
        if bool(take.any()):
            rows = idx[take]
            self.x_best[rows] = x_iter[take].detach()
            self.loss_best[rows] = loss[take].to(self.loss_best.dtype)
            self.success[rows] |= success[take]


@contextlib.contextmanager
def attack_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and frozen parameters for the duration of an attack; both restored."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def model_bounds(model: nn.Module) -> Bounds:
    """The model's declared input box (``model.input_bounds``), default ``(0, 1)``."""
    lo, hi = getattr(model, "input_bounds", (0.0, 1.0))
    return float(lo), float(hi)


# -- the template ------------------------------------------------------------------------
class Attack:
    """Base class of every attack. Subclasses set ``norms`` and implement :meth:`perturb`.

    Constructors store parameters only; :meth:`get_params` returns them.
    """

    norms: ClassVar[tuple[str, ...]] = ("linf", "l2")
    name: ClassVar[str] = "attack"

    def get_params(self) -> dict[str, Any]:
        sig = inspect.signature(type(self).__init__)
        return {n: getattr(self, n) for n in sig.parameters if n != "self" and hasattr(self, n)}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"

    # subclass hook --------------------------------------------------------------------
    def perturb(
        self,
        ctx: AttackContext,
        x: torch.Tensor,
        y: torch.Tensor,
        threat: ThreatModel,
        target: torch.Tensor | None,
    ) -> torch.Tensor:
        """Return adversarial inputs for the still-correct points ``x`` (step logic only)."""
        raise NotImplementedError

    # public call ----------------------------------------------------------------------
    def __call__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        threat: ThreatModel,
        *,
        target: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> AttackResult:
        """Attack ``model`` at ``(x, y)`` within ``threat``.

        ``target`` (optional, one class per sample) makes the attack targeted.
        ``generator`` seeds every random choice; the global RNG is never touched.
        """
        if not isinstance(threat, ThreatModel):
            raise ConfigError(
                f"threat must be a ThreatModel, e.g. ThreatModel('linf', 8/255); got {threat!r}."
            )
        if threat.norm not in self.norms:
            raise ConfigError(
                f"attack {type(self).__name__} supports norms {', '.join(self.norms)}, not "
                f"{threat.norm!r}."
            )
        bounds = model_bounds(model)
        check_inputs(x, bounds=bounds)
        expected = getattr(model, "input_shape", None)
        if expected is not None:
            check_shape(x, expected)
        threat.check_fits(x, bounds)
        device = x.device
        ctx = AttackContext(model, bounds, generator)
        with attack_mode(model):
            clean_logits = ctx.logits(x)
            if clean_logits.dim() != 2:
                raise ShapeMismatchError(
                    f"the model returned outputs of shape {tuple(clean_logits.shape)}; "
                    f"attacks need logits of shape (N, num_classes)."
                )
            num_classes = int(getattr(model, "num_classes", clean_logits.shape[1]))
            check_labels(y, num_classes, n=len(x))
            y = y.to(device).long()
            if target is not None:
                check_labels(target, num_classes, n=len(x), name="target")
                target = target.to(device).long()
            clean_correct = clean_logits.argmax(1) == y
            done = is_success(clean_logits, y, target)
            x_adv = x.detach().clone()
            active = (~done).nonzero().squeeze(1)
            if threat.eps > 0 and len(active):
                xa = self.perturb(
                    ctx,
                    x[active].detach(),
                    y[active],
                    threat,
                    None if target is None else target[active],
                )
                # one projection guards every subclass's output against drift
                x_adv[active] = threat.project(xa.detach(), x[active], bounds)
            final_logits = ctx.logits(x_adv)
            success = is_success(final_logits, y, target)
        return AttackResult(
            x_adv=x_adv,
            success=success,
            clean_correct=clean_correct,
            threat=threat,
            targeted=target is not None,
            forwards=ctx.forwards,
            backwards=ctx.backwards,
        )


def create(name: str, /, **params: Any) -> Attack:
    """Build a registered attack: ``attacks.create("pgd", steps=20)``."""
    return attacks.create(name, **params)


def available(pattern: str = "*") -> list[str]:
    """Names of the registered attacks matching ``pattern``."""
    return attacks.available(pattern)
