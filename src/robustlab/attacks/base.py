"""The attack template.

An attack is built with its parameters (``attacks.create("pgd", steps=20)``) and called
as ``attack(model, x, y, threat=ThreatModel("linf", 0.1))``. The public call is fixed
here, in :meth:`Attack.__call__`:

1. it validates inputs (float, finite, inside the model's bounds, labels in range, eps
   allowed for the norm and the bounds, norm supported by the attack, enough classes
   for the attack's loss, model and inputs on the same device);
2. it switches the model to eval mode and turns off parameter gradients, restoring
   both afterwards, so only input gradients are computed;
3. it warns (:class:`ProbabilityOutputWarning`) when the model's outputs look like
   probabilities (rows non-negative and summing to one): attack losses expect logits;
4. points the model already misclassifies are successes without any work; only the
   remaining points are handed to the subclass's :meth:`Attack.perturb`;
5. it re-checks every returned point with one full-precision forward pass and reports
   a per-sample ``success`` mask (so ``amp=True`` never changes reported numbers);
6. given several threat models (a list), it runs them in increasing eps and hands
   only the points still unbroken to the next budget: an adversarial example found at
   ``eps1`` lies inside every ball of radius ``eps2 > eps1`` and is reused as is.

Randomness comes only from the ``generator`` argument (a fresh ``torch.Generator``
seeded with 0 when omitted); the global RNG is never reseeded or consumed.

Subclasses implement only :meth:`Attack.perturb` (their step logic), using the engine
(:mod:`robustlab.attacks.engine`): :class:`AttackContext` for forward/backward passes
(counted, optionally autocast), :class:`BestTracker` to keep the best adversarial
example found on any iterate and :class:`ActiveSet` for the rows still attacked; and
the objectives of :mod:`robustlab.attacks.losses`. Constructors check every parameter
with the shared validators of :mod:`robustlab.validation` (``steps=2.5`` or
``steps=True`` is a ConfigError naming ``steps``).

Training use: :meth:`Attack.generate` produces adversarial inputs for adversarial
training without the evaluation semantics (every point attacked, no early stop, the
final iterate returned, no re-check, selectable batch-norm mode). Attack losses take
the clean logits as an optional fourth argument, so TRADES' inner maximisation
``KL(f(x) || f(x'))`` is ``create("pgd", loss="kl")`` (see :func:`kl_loss`).

This module keeps the template and the registry; for compatibility it re-exports the
objectives and the engine (``from robustlab.attacks.base import AttackResult`` keeps
working), whose modules never import this one.
"""

from __future__ import annotations

import inspect
import time
import warnings
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from robustlab.attacks.engine import (
    BN_MODES,
    ActiveSet,
    AttackContext,
    AttackResult,
    BestTracker,
    attack_mode,
    generation_mode,
    is_success,
    looks_like_probabilities,
    model_bounds,
    model_device,
)
from robustlab.attacks.losses import (
    ATTACK_LOSSES,
    CLEAN_LOSSES,
    LOSS_MIN_CLASSES,
    AttackLoss,
    attack_loss,
    ce_loss,
    dlr_loss,
    kl_loss,
    logit_change_loss,
    loss_min_classes,
    margin_loss,
    probability_margin_loss,
)
from robustlab.attacks.threat import Bounds, ThreatModel
from robustlab.errors import ConfigError, InvalidInputError, RobustlabWarning, ShapeMismatchError
from robustlab.registry import Registry
from robustlab.validation import (
    check_bool,
    check_float,
    check_inputs,
    check_int,
    check_labels,
    check_shape,
)

attacks: Registry[Attack] = Registry("attack")


class AttackWarning(RobustlabWarning):
    """Something about the model or the data makes an attack's result less trustworthy."""


class ProbabilityOutputWarning(AttackWarning):
    """The model seems to output probabilities; attack losses expect logits."""


# -- parameters ----------------------------------------------------------------------------
# Numbers are checked with robustlab.validation's check_int / check_float, like every other
# room's. Flags have no shared validator yet, so the attacks share this one.
def int_param(name: str, value: object, minimum: int) -> int:
    """Deprecated alias of ``check_int(value, name, minimum=minimum)`` (kept importable)."""
    return check_int(value, name, minimum=minimum)


def float_param(name: str, value: object, low: float = 0.0, high: float | None = None, *, open_low: bool = True) -> float:
    """Deprecated alias of ``check_float(value, name, low=low, high=high, low_open=open_low)``
    (kept importable)."""
    return check_float(value, name, low=low, high=high, low_open=open_low)


def _as_threats(threat: Any) -> tuple[list[ThreatModel], bool]:
    """Normalise a ThreatModel or a sequence of them; returns (list, was_single)."""
    if isinstance(threat, ThreatModel):
        return [threat], True
    if isinstance(threat, Sequence) and not isinstance(threat, (str, bytes)) and len(threat) > 0:
        items = list(threat)
        if all(isinstance(t, ThreatModel) for t in items):
            norms = {t.norm for t in items}
            if len(norms) > 1:
                raise ConfigError(
                    f"one attack call takes threat models of one norm (results are reused "
                    f"across eps); got {', '.join(sorted(norms))}. Call once per norm."
                )
            return items, False
    raise ConfigError(
        f"threat must be a ThreatModel, e.g. ThreatModel('linf', 8/255), or a list of them; got {threat!r}."
    )


# -- the template ------------------------------------------------------------------------
class Attack:
    """Base class of every attack. Subclasses set ``norms`` and implement :meth:`perturb`.

    Constructors store parameters only; :meth:`get_params` returns them.

    Class attributes: ``norms`` (supported norms); ``targeted_ok`` (accepts an explicit
    ``target``); ``black_box`` (uses only forward passes; the audit compares black-box
    and white-box success).
    """

    norms: ClassVar[tuple[str, ...]] = ("linf", "l2")
    name: ClassVar[str] = "attack"
    targeted_ok: ClassVar[bool] = True
    black_box: ClassVar[bool] = False

    def get_params(self) -> dict[str, Any]:
        sig = inspect.signature(type(self).__init__)
        return {n: getattr(self, n) for n in sig.parameters if n != "self" and hasattr(self, n)}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"

    # hooks -----------------------------------------------------------------------------
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

    def required_classes(self, targeted: bool) -> int:
        """The fewest classes this attack works with (e.g. 3 for DLR, 4 for targeted DLR)."""
        return 2

    def needs_clean_logits(self) -> bool:
        """Whether :meth:`perturb` reads ``ctx.clean_logits`` (so :meth:`generate` computes
        them once per batch when the caller does not pass them)."""
        return False

    def check_threat(self, threat: ThreatModel) -> None:
        """Refuse (ConfigError) a threat model this attack's parameters cannot handle;
        called before any work. The norm itself is checked against ``norms``."""

    # shared checks -----------------------------------------------------------------------
    def _check_threats(self, threat: Any) -> tuple[list[ThreatModel], bool]:
        threats, single = _as_threats(threat)
        norm = threats[0].norm
        if norm not in self.norms:
            raise ConfigError(
                f"attack {type(self).__name__} supports norms {', '.join(self.norms)}, not "
                f"{norm!r}."
            )
        for t in threats:
            self.check_threat(t)
        return threats, single

    def _check_model_and_inputs(self, model: nn.Module, x: torch.Tensor) -> Bounds:
        bounds = model_bounds(model)
        check_inputs(x, bounds=bounds)
        expected = getattr(model, "input_shape", None)
        if expected is not None:
            check_shape(x, expected)
        dev = model_device(model)
        if dev is not None and dev != x.device:
            raise InvalidInputError(
                f"the model is on {dev} but the inputs are on {x.device}; attacks run where the "
                f"inputs are: move one of them (model.to(x.device) or x.to({str(dev)!r}))."
            )
        return bounds

    def _check_classes(self, num_classes: int, targeted: bool) -> None:
        need = self.required_classes(targeted)
        if num_classes < need:
            raise ConfigError(
                f"attack {type(self).__name__} needs at least {need} classes"
                f"{' (targeted)' if targeted else ''}, but the model has {num_classes}. "
                f"Use another attack or loss (e.g. 'apgd-ce' or loss='ce')."
            )

    # public call ----------------------------------------------------------------------
    def __call__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        threat: ThreatModel | Sequence[ThreatModel],
        *,
        target: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        amp: bool = False,
    ) -> Any:
        """Attack ``model`` at ``(x, y)`` within ``threat``.

        ``threat``: a :class:`ThreatModel` (returns one :class:`AttackResult`) or a list of
        them with one norm (returns a list of results in the same order; budgets run in
        increasing eps, each on the points the smaller budgets left unbroken).
        ``target`` (optional, one class per sample) makes the attack targeted.
        ``generator`` seeds every random choice (default: a fresh generator seeded with
        0); the global RNG is never touched. ``amp`` runs the attack's forward passes
        under CUDA autocast (no-op on CPU); success is always re-checked in full precision.
        """
        threats, single = self._check_threats(threat)
        bounds = self._check_model_and_inputs(model, x)
        for t in threats:
            t.check_fits(x, bounds)
        if target is not None and not self.targeted_ok:
            raise ConfigError(f"attack {type(self).__name__} is untargeted; do not pass target=.")
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        device = x.device
        ctx = AttackContext(model, bounds, generator, amp=amp, points=len(x))
        results: list[AttackResult | None] = [None] * len(threats)
        with attack_mode(model):
            clean_logits = ctx.logits(x, exact=True)
            if clean_logits.dim() != 2:
                raise ShapeMismatchError(
                    f"the model returned outputs of shape {tuple(clean_logits.shape)}; "
                    f"attacks need logits of shape (N, num_classes)."
                )
            if looks_like_probabilities(clean_logits):
                warnings.warn(
                    "the model's outputs look like probabilities (non-negative rows summing to "
                    "1); attack losses expect logits. Remove the final softmax for evaluation.",
                    ProbabilityOutputWarning,
                    stacklevel=2,
                )
            num_classes = int(getattr(model, "num_classes", clean_logits.shape[1]))
            ctx.num_classes = clean_logits.shape[1]
            check_labels(y, num_classes, n=len(x))
            y = y.to(device).long()
            if target is not None:
                check_labels(target, num_classes, n=len(x), name="target")
                target = target.to(device).long()
            self._check_classes(clean_logits.shape[1], target is not None)
            clean_correct = clean_logits.argmax(1) == y
            success = is_success(clean_logits, y, target)
            x_cur = x.detach().clone()
            carried: dict[str, torch.Tensor] = {}
            for k in sorted(range(len(threats)), key=lambda i: threats[i].eps):
                t = threats[k]
                f0, b0, t0 = ctx.forwards, ctx.backwards, time.perf_counter()
                x_k, succ_k = x_cur.clone(), success.clone()
                ctx.info, ctx.row_info = {}, {}
                act = ActiveSet(~success)  # the points this budget attacks
                if t.eps > 0 and act:
                    xs, ys, ta = act.gather(x).detach(), act.gather(y), act.gather(target)
                    ctx.clean_logits = act.gather(clean_logits)
                    xa = self.perturb(ctx, xs, ys, t, ta)
                    # one projection guards every subclass's output against drift
                    xa = t.project(xa.detach().to(x.dtype), xs, bounds)
                    act.scatter(x_k, xa)
                    act.scatter(succ_k, is_success(ctx.logits(xa, exact=True), ys, ta))
                info = dict(ctx.info)
                for key, (vals, fill) in ctx.row_info.items():
                    full = carried.get(key)
                    if full is None:
                        full = torch.full((len(x),), fill, dtype=vals.dtype, device=device)
                    full = full.clone()
                    act.scatter(full, vals.to(device))
                    carried[key] = full
                info.update({key: val.clone() for key, val in carried.items()})
                results[k] = AttackResult(
                    x_adv=x_k,
                    success=succ_k,
                    clean_correct=clean_correct,
                    threat=t,
                    targeted=target is not None,
                    forwards=ctx.forwards - f0,
                    backwards=ctx.backwards - b0,
                    info=info,
                    seconds=time.perf_counter() - t0,
                )
                success, x_cur = succ_k, x_k
        # the clean forward pass is charged to the first (smallest) budget
        first = min(range(len(threats)), key=lambda i: threats[i].eps)
        results[first].forwards += len(x)  # type: ignore[union-attr]
        return results[0] if single else results

    # training use ---------------------------------------------------------------------
    def generate(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        threat: ThreatModel,
        *,
        generator: torch.Generator | None,
        bn_mode: str = "eval",
        clean_logits: torch.Tensor | None = None,
        target: torch.Tensor | None = None,
        amp: bool = False,
    ) -> torch.Tensor:
        """Adversarial inputs for adversarial *training* (not evaluation).

        Differences with :meth:`__call__`: every point is attacked (also the
        clean-misclassified ones); attacks do not stop early on success and return their
        final iterate (the behaviour of Madry et al.'s and TRADES' official code); there
        is no re-check pass; the module mode during generation is ``bn_mode``
        (``"eval"``: default, TRADES' official code; ``"train"``: batch statistics;
        ``"keep"``: as the model is), restored afterwards. Parameters keep their
        ``requires_grad`` and never receive ``.grad`` (only the input gradient is taken).
        ``clean_logits`` (detached, e.g. from the objective's own clean forward pass) are
        handed to losses that need them (``loss="kl"``); when omitted and the attack needs
        them, one extra no-grad forward pass computes them. ``generator`` is required
        (pass the objective's per-epoch generator): a fixed default would repeat the same
        random starts on every batch.

        >>> pgd = attacks.create("pgd", steps=10, rel_step_size=0.25)
        >>> x_adv = pgd.generate(model, x, y, ThreatModel("linf", 8/255), generator=g)
        """
        if not isinstance(threat, ThreatModel):
            raise ConfigError(f"generate takes one ThreatModel, got {threat!r}.")
        self._check_threats(threat)
        if generator is None:
            raise ConfigError(
                "Attack.generate needs a torch.Generator (pass the training objective's "
                "generator) so that random starts differ between batches yet stay reproducible."
            )
        bounds = self._check_model_and_inputs(model, x)
        threat.check_fits(x, bounds)
        y = y.to(x.device).long()
        x = x.detach()
        ctx = AttackContext(model, bounds, generator, training=True, amp=amp)
        with generation_mode(model, bn_mode):
            if clean_logits is None and self.needs_clean_logits():
                clean_logits = ctx.logits(x)
            if clean_logits is not None:
                clean_logits = clean_logits.detach().float()
                ctx.num_classes = clean_logits.shape[1]
            else:
                ctx.num_classes = getattr(model, "num_classes", None)
            if ctx.num_classes is not None:
                self._check_classes(int(ctx.num_classes), target is not None)
            ctx.clean_logits = clean_logits
            if threat.eps == 0:
                return x.clone()
            x_adv = self.perturb(ctx, x, y, threat, None if target is None else target.to(x.device).long())
            x_adv = threat.project(x_adv.detach().to(x.dtype), x, bounds)
        return x_adv.detach()


def create(name: str, /, **params: Any) -> Attack:
    """Build a registered attack: ``attacks.create("pgd", steps=20)``."""
    return attacks.create(name, **params)


def available(pattern: str = "*") -> list[str]:
    """Names of the registered attacks matching ``pattern``."""
    return attacks.available(pattern)


__all__ = [
    "ATTACK_LOSSES",
    "BN_MODES",
    "CLEAN_LOSSES",
    "LOSS_MIN_CLASSES",
    "ActiveSet",
    "Attack",
    "AttackContext",
    "AttackLoss",
    "AttackResult",
    "AttackWarning",
    "BestTracker",
    "ProbabilityOutputWarning",
    "attack_loss",
    "attack_mode",
    "attacks",
    "available",
    "ce_loss",
    "check_bool",
    "create",
    "dlr_loss",
    "float_param",
    "generation_mode",
    "int_param",
    "is_success",
    "kl_loss",
    "logit_change_loss",
    "looks_like_probabilities",
    "loss_min_classes",
    "margin_loss",
    "model_bounds",
    "model_device",
    "probability_margin_loss",
]
