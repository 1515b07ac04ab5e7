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

Subclasses implement only :meth:`Attack.perturb` (their step logic), using
:class:`AttackContext` for forward/backward passes (counted, optionally autocast) and
:class:`BestTracker` to keep the best adversarial example found on any iterate.

Training use: :meth:`Attack.generate` produces adversarial inputs for adversarial
training without the evaluation semantics (every point attacked, no early stop, the
final iterate returned, no re-check, selectable batch-norm mode). Attack losses take
the clean logits as an optional fourth argument, so TRADES' inner maximisation
``KL(f(x) || f(x'))`` is ``create("pgd", loss="kl")`` (see :func:`kl_loss`).
"""

from __future__ import annotations

import contextlib
import inspect
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.attacks.threat import Bounds, ThreatModel
from robustlab.errors import ConfigError, InvalidInputError, RobustlabWarning, ShapeMismatchError
from robustlab.registry import Registry
from robustlab.validation import check_inputs, check_labels, check_shape

attacks: Registry[Attack] = Registry("attack")


class AttackWarning(RobustlabWarning):
    """Something about the model or the data makes an attack's result less trustworthy."""


class ProbabilityOutputWarning(AttackWarning):
    """The model seems to output probabilities; attack losses expect logits."""


# -- attack objectives ---------------------------------------------------------------
# Every objective has the signature (logits, y, target=None, clean=None) -> per-sample
# loss to MAXIMISE. ``target`` selects the targeted form; ``clean`` are the logits on
# the clean inputs (only the KL objective reads them).
AttackLoss = Callable[..., torch.Tensor]


def margin_loss(
    logits: torch.Tensor,
    y: torch.Tensor,
    target: torch.Tensor | None = None,
    clean: torch.Tensor | None = None,
) -> torch.Tensor:
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


def ce_loss(
    logits: torch.Tensor,
    y: torch.Tensor,
    target: torch.Tensor | None = None,
    clean: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy to maximise (untargeted) or minus CE to the target (targeted;
    the ``ce-targeted`` loss of the official APGD code)."""
    if target is None:
        return F.cross_entropy(logits, y, reduction="none")
    return -F.cross_entropy(logits, target, reduction="none")


def dlr_loss(
    logits: torch.Tensor,
    y: torch.Tensor,
    target: torch.Tensor | None = None,
    clean: torch.Tensor | None = None,
) -> torch.Tensor:
    """Difference of Logits Ratio (Croce & Hein 2020, "Reliable evaluation of adversarial
    robustness with an ensemble of diverse parameter-free attacks", Eq. (5) and (6)).

    Untargeted (needs >= 3 classes):
    ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12)``;
    targeted (needs >= 4 classes): ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4)/2 + 1e-12)``,
    where ``z_pi1 >= z_pi2 >= ...`` are the sorted logits (1e-12 as in the official code).
    """
    z = logits.sort(dim=1, descending=True).values
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    if target is None:
        other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
        return -(z_y - other) / (z[:, 0] - z[:, 2] + 1e-12)
    z_t = logits.gather(1, target[:, None]).squeeze(1)
    return -(z_y - z_t) / (z[:, 0] - 0.5 * (z[:, 2] + z[:, 3]) + 1e-12)


def probability_margin_loss(
    logits: torch.Tensor,
    y: torch.Tensor,
    target: torch.Tensor | None = None,
    clean: torch.Tensor | None = None,
) -> torch.Tensor:
    """Probability margin (Xie et al. 2024, "Towards Million-Scale Adversarial Robustness
    Evaluation With Stronger Individual Attacks", the loss of PMA): the margin of
    softmax probabilities ``p = softmax(z)`` instead of logits.

    Untargeted: ``max_{i != y} p_i - p_y``; targeted: ``p_t - max_{i != t} p_i``.
    """
    p = logits.softmax(1)
    return margin_loss(p, y, target)


def kl_loss(
    logits: torch.Tensor,
    y: torch.Tensor,
    target: torch.Tensor | None = None,
    clean: torch.Tensor | None = None,
) -> torch.Tensor:
    """``KL(softmax(f(x)) || softmax(f(x')))`` per sample: TRADES' inner maximisation
    (Zhang et al. 2019, "Theoretically Principled Trade-off between Robustness and
    Accuracy", Eq. (5); the official code's ``KLDivLoss(log_softmax(f(x')), softmax(f(x)))``).
    ``clean`` are the logits on the clean inputs (computed once per batch)."""
    if clean is None:
        raise ConfigError(
            "the 'kl' attack loss needs the clean logits; attacks pass them automatically "
            "(AttackContext.clean_logits), or give clean_logits= to Attack.generate."
        )
    p_clean = clean.detach().float().softmax(1)
    return (p_clean * (p_clean.clamp_min(1e-12).log() - logits.log_softmax(1))).sum(1)


def logit_change_loss(
    logits: torch.Tensor,
    y: torch.Tensor,
    target: torch.Tensor | None = None,
    clean: torch.Tensor | None = None,
) -> torch.Tensor:
    """``||Delta(x') - Delta(x)||_2`` per sample with ``Delta(x)_k = z_k(x) - z_y(x)``: how
    far the logit differences move (the smooth adversarial term of Mao, Mohri & Zhong
    2023, "Cross-Entropy Loss Functions: Theoretical Analysis and Applications").
    ``clean`` are the logits on the clean inputs."""
    if clean is None:
        raise ConfigError("the 'logit-diff' attack loss needs the clean logits (clean_logits=).")
    c = clean.detach().to(logits.dtype)
    d_adv = logits - logits.gather(1, y[:, None])
    d_clean = c - c.gather(1, y[:, None])
    return torch.linalg.vector_norm(d_adv - d_clean, dim=1)


ATTACK_LOSSES: dict[str, AttackLoss] = {
    "ce": ce_loss,
    "margin": margin_loss,
    "cw": margin_loss,
    "dlr": dlr_loss,
    "pm": probability_margin_loss,
    "kl": kl_loss,
    "logit-diff": logit_change_loss,
}
# objectives that read the clean logits (and are untargeted)
CLEAN_LOSSES = frozenset({"kl", "logit-diff"})
# the fewest classes each objective works with: (untargeted, targeted)
LOSS_MIN_CLASSES: dict[str, tuple[int, int]] = {"dlr": (3, 4)}


def attack_loss(name: str) -> AttackLoss:
    """Look up a per-sample attack objective by name (``ce``, ``margin``/``cw``, ``dlr``,
    ``pm``, ``kl``, ``logit-diff``)."""
    try:
        return ATTACK_LOSSES[name]
    except KeyError:
        from robustlab.registry import close_matches

        near = close_matches(name, ATTACK_LOSSES)
        hint = f" Did you mean {', '.join(map(repr, near))}?" if near else ""
        raise ConfigError(
            f"unknown attack loss {name!r}.{hint} Available: {', '.join(ATTACK_LOSSES)}."
        ) from None


def loss_min_classes(name: str, targeted: bool) -> int:
    """The fewest classes the objective ``name`` is defined for."""
    lo = LOSS_MIN_CLASSES.get(name, (2, 2))
    return lo[1] if targeted else lo[0]


def int_param(name: str, value: object, minimum: int) -> int:
    """An attack parameter that must be an integer ``>= minimum`` (else ConfigError)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def float_param(
    name: str, value: object, low: float = 0.0, high: float = math.inf, *, open_low: bool = True
) -> float:
    """An attack parameter that must be a finite number in ``(low, high]`` (``[low, high]``
    when not ``open_low``; else ConfigError)."""
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}.") from None
    ok_low = v > low if open_low else v >= low
    if not (math.isfinite(v) and ok_low and v <= high):
        bracket = "(" if open_low else "["
        raise ConfigError(f"{name} must be a finite number in {bracket}{low:g}, {high:g}], got {value!r}.")
    return v


def is_success(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """Untargeted: prediction != y. Targeted: prediction == target."""
    pred = logits.argmax(1)
    return pred != y if target is None else pred == target


def looks_like_probabilities(outputs: torch.Tensor, tol: float = 1e-4) -> bool:
    """True when every row is non-negative and sums to one (the check of AutoAttack's
    ``check_range_output``)."""
    if outputs.dim() != 2 or not len(outputs) or outputs.shape[1] < 2:
        return False
    o = outputs.detach().float()
    return bool((o.min() > -tol) and (o.max() < 1 + tol) and ((o.sum(1) - 1).abs() < tol).all())


# -- results ---------------------------------------------------------------------------
@dataclass
class AttackResult:
    """What an attack returns (one per threat model).

    ``x_adv``: adversarial inputs (same shape, dtype, device as ``x``);
    ``success``: per-sample bool, the model's prediction on ``x_adv`` is wrong
    (untargeted) or the target (targeted); ``clean_correct``: the prediction on ``x``
    was right; ``forwards``/``backwards``: samples passed forward/backward through the
    model for this threat model (a batch of 10 counts 10); ``seconds``: wall time;
    ``info``: attack-specific records (ensembles: per-stage counts and ``broken_by``).
    """

    x_adv: torch.Tensor
    success: torch.Tensor
    clean_correct: torch.Tensor
    threat: ThreatModel
    targeted: bool = False
    forwards: int = 0
    backwards: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def robust(self) -> torch.Tensor:
        """Per-sample: correctly classified and not broken (untargeted meaning)."""
        return self.clean_correct & ~self.success

    @property
    def robust_accuracy(self) -> float:
        return float(self.robust.float().mean()) if len(self.robust) else float("nan")


def _full_precision(out: torch.Tensor) -> torch.Tensor:
    """Half-precision outputs (autocast) go to float32; float32/float64 stay as they are."""
    return out if out.dtype in (torch.float32, torch.float64) else out.float()


# -- the context handed to subclasses ---------------------------------------------------
class AttackContext:
    """Model access for attack step logic: counted forward passes and input gradients.

    Attributes a subclass may read:

    ``model``, ``bounds`` (the model's input box), ``generator`` (every random draw);
    ``num_classes``; ``clean_logits`` (logits of the clean inputs handed to
    :meth:`Attack.perturb`, row-aligned with them; computed once); ``training``
    (True inside :meth:`Attack.generate`: attack every point, do not stop early, return
    the final iterate); ``amp`` (forward passes run under autocast on CUDA).
    Subclasses may record per-call facts in ``info`` (a dict copied into
    :attr:`AttackResult.info`) and per-row facts with :meth:`record_rows`.
    """

    def __init__(
        self,
        model: nn.Module,
        bounds: Bounds,
        generator: torch.Generator | None,
        *,
        num_classes: int | None = None,
        clean_logits: torch.Tensor | None = None,
        training: bool = False,
        amp: bool = False,
    ) -> None:
        self.model = model
        self.bounds = bounds
        self.generator = generator
        self.num_classes = num_classes
        self.clean_logits = clean_logits
        self.training = training
        self.amp = amp
        self.forwards = 0
        self.backwards = 0
        self.info: dict[str, Any] = {}
        self.row_info: dict[str, tuple[torch.Tensor, float]] = {}

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        """Autocast (bf16 where supported, else fp16) on CUDA when ``amp``; a no-op otherwise."""
        if not self.amp or device.type != "cuda":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast(device_type="cuda", dtype=dtype)

    def logits(self, x: torch.Tensor, *, exact: bool = False) -> torch.Tensor:
        """A forward pass without gradients (full precision when ``exact``)."""
        self.forwards += len(x)
        with torch.no_grad():
            if exact:
                return _full_precision(self.model(x))
            with self.autocast(x.device):
                return _full_precision(self.model(x))

    def value_and_grad(
        self, x: torch.Tensor, loss_fn: Any, *args: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample ``loss_fn(logits, *args)``, its input gradient, and the logits.

        Only the input gradient is computed (``torch.autograd.grad`` with respect to the
        input alone), so no ``.grad`` ever accumulates on the model's parameters.
        """
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            with self.autocast(x.device):
                out = self.model(x)
            logits = _full_precision(out)
            loss = loss_fn(logits, *args)
            (grad,) = torch.autograd.grad(loss.sum(), x)
        self.forwards += len(x)
        self.backwards += len(x)
        return loss.detach(), grad.detach(), logits.detach()

    def jacobian(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The logits and the input gradient of every logit, for per-class linearisations
        (FAB's ``get_diff_logits_grads_batch`` in the official code).

        Returns ``(logits (N, K), jac (N, K, *x.shape[1:]))`` with ``jac[:, j] = d z_j / d x``.
        Counted as one forward pass and ``K`` backward passes per sample (one
        vector-Jacobian product per class). Only input gradients are computed.
        """
        xr = x.detach().requires_grad_(True)
        with torch.enable_grad():
            with self.autocast(x.device):
                out = self.model(xr)
            logits = _full_precision(out)
            k = logits.shape[1]
            grads = [
                torch.autograd.grad(logits[:, j].sum(), xr, retain_graph=j < k - 1)[0]
                for j in range(k)
            ]
        self.forwards += len(x)
        self.backwards += len(x) * k
        return logits.detach(), torch.stack(grads, 1).detach()

    def record_rows(self, key: str, values: torch.Tensor, fill: float) -> None:
        """Record one value per row handed to :meth:`Attack.perturb`; the template
        scatters it into a full-batch tensor ``info[key]`` (``fill`` for the rows that
        were not attacked, e.g. clean-misclassified ones)."""
        self.row_info[key] = (values.detach(), fill)


class BestTracker:
    """Keeps, per sample, the best adversarial example seen on any iterate.

    A sample that succeeded keeps its first successful iterate; otherwise the iterate
    with the highest attack loss is kept.
    """

    def __init__(self, x: torch.Tensor) -> None:
        self.x_best = x.detach().clone()
        self.loss_best = torch.full((len(x),), float("-inf"), device=x.device, dtype=torch.float32)
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
            self.x_best[rows] = x_iter[take].detach().to(self.x_best.dtype)
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


BN_MODES = ("eval", "train", "keep")


@contextlib.contextmanager
def generation_mode(model: nn.Module, bn_mode: str) -> Iterator[nn.Module]:
    """The module mode used while generating training adversarials, restored afterwards:
    ``"eval"`` (default; TRADES' official code), ``"train"`` (batch statistics, as in
    many PGD-AT implementations) or ``"keep"`` (leave the model as it is)."""
    if bn_mode not in BN_MODES:
        raise ConfigError(f"bn_mode must be one of {', '.join(BN_MODES)}, got {bn_mode!r}.")
    modes = [(m, m.training) for m in model.modules()]
    if bn_mode == "eval":
        model.eval()
    elif bn_mode == "train":
        model.train()
    try:
        yield model
    finally:
        for m, was in modes:
            m.training = was


def model_bounds(model: nn.Module) -> Bounds:
    """The model's declared input box (``model.input_bounds``), default ``(0, 1)``."""
    lo, hi = getattr(model, "input_bounds", (0.0, 1.0))
    return float(lo), float(hi)


def model_device(model: nn.Module) -> torch.device | None:
    """The device of the model's first parameter or buffer (None for stateless models)."""
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return None


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
        ctx = AttackContext(model, bounds, generator, amp=amp)
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
                active = (~success).nonzero().squeeze(1)
                if t.eps > 0 and len(active):
                    ta = None if target is None else target[active]
                    ctx.clean_logits = clean_logits[active]
                    xa = self.perturb(ctx, x[active].detach(), y[active], t, ta)
                    # one projection guards every subclass's output against drift
                    xa = t.project(xa.detach().to(x.dtype), x[active], bounds)
                    x_k[active] = xa
                    succ_k[active] = is_success(ctx.logits(xa, exact=True), y[active], ta)
                info = dict(ctx.info)
                for key, (vals, fill) in ctx.row_info.items():
                    full = carried.get(key)
                    if full is None:
                        full = torch.full((len(x),), fill, dtype=vals.dtype, device=device)
                    full = full.clone()
                    full[active] = vals.to(device)
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
