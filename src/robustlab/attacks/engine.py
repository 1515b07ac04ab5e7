"""The attack engine: results, model access, and the bookkeeping of rows.

What every attack's step logic and the template share, with no attack in it:

- :class:`AttackResult`: what an attack returns (one per threat model);
- :class:`AttackContext`: counted forward passes, input gradients and Jacobians
  (optionally under autocast), per-call and per-row records;
- :class:`BestTracker`: the best adversarial example seen per sample on any iterate;
- :class:`ActiveSet`: the rows of a batch still being attacked. Attacks work on the
  unbroken points only (AutoAttack's evaluation runs every attack "on the still-robust
  points"; within an attack, a broken point stops taking steps): an active set gathers
  per-row state for those rows, retires rows as they break (compacting the state) and
  scatters results back into full-batch tensors;
- :func:`attack_mode` / :func:`generation_mode`: the module modes during an evaluation
  attack and during generation for training, both restored afterwards;
- :func:`model_bounds`, :func:`model_device`, :func:`is_success`,
  :func:`looks_like_probabilities`.

Nothing here imports the template (:mod:`robustlab.attacks.base`) or the objectives
(:mod:`robustlab.attacks.losses`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, overload

import torch
from torch import nn

from robustlab.attacks.threat import Bounds, ThreatModel
from robustlab.validation import check_choice


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
    the final iterate); ``amp`` (forward passes run under autocast on CUDA); ``points``
    (the number of points of the caller's batch, for progress lines; None outside
    :meth:`Attack.__call__`). Subclasses may record per-call facts in ``info`` (a dict copied into
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
        points: int | None = None,
    ) -> None:
        self.model = model
        self.bounds = bounds
        self.generator = generator
        self.num_classes = num_classes
        self.clean_logits = clean_logits
        self.training = training
        self.amp = amp
        self.points = points
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



# -- the rows still attacked ---------------------------------------------------------------
class ActiveSet:
    """The rows of a batch that are still being attacked.

    ``rows`` holds their indices into the full batch (length ``n``), in increasing
    order. Per-row state of an attack lives in tensors aligned with ``rows``:
    :meth:`gather` cuts them from full-batch tensors, :meth:`retire` drops the rows
    that are done (broken, or no longer worth computing) from ``rows`` and from the
    state handed to it, and :meth:`scatter` writes per-row values back into full-batch
    tensors. ``bool(active)`` is False once no row is left.

    >>> act = ActiveSet(~success)                   # the points not yet broken
    >>> xa, ya = act.gather(x), act.gather(y)
    >>> while act:
    ...     ok = step(xa, ya)                        # per active row
    ...     act.scatter(x_best, xa, ok)              # x_best[rows[ok]] = xa[ok]
    ...     xa, ya = act.retire(ok, xa, ya)          # the broken rows leave

    Compaction never changes a remaining row's values: it only selects rows, so the
    numbers of an attack are the same with or without it.
    """

    def __init__(self, mask: torch.Tensor) -> None:
        """The rows where the boolean ``mask`` (one entry per row of the batch) is True."""
        self.n = len(mask)
        self.rows = mask.nonzero().squeeze(1)

    @classmethod
    def everyone(cls, n: int, device: torch.device | str | None = None) -> ActiveSet:
        """All ``n`` rows of a batch."""
        act = cls.__new__(cls)
        act.n = int(n)
        act.rows = torch.arange(n, device=device)
        return act

    def __len__(self) -> int:
        return len(self.rows)

    def __bool__(self) -> bool:
        return len(self.rows) > 0

    def __repr__(self) -> str:
        return f"ActiveSet({len(self)} of {self.n} rows)"

    @overload
    def gather(self, full: torch.Tensor) -> torch.Tensor: ...

    @overload
    def gather(self, full: None) -> None: ...

    def gather(self, full: torch.Tensor | None) -> torch.Tensor | None:
        """``full[rows]``: the active rows of a full-batch tensor (None stays None)."""
        return None if full is None else full[self.rows]

    def scatter(
        self, full: torch.Tensor, values: torch.Tensor | float | bool, where: torch.Tensor | None = None
    ) -> None:
        """Write per-row ``values`` into the full-batch tensor ``full``, in place:
        ``full[rows] = values``, or only for the active rows where the boolean ``where``
        is True (``full[rows[where]] = values[where]``). A scalar ``values`` fills."""
        if where is None:
            full[self.rows] = values
        elif isinstance(values, torch.Tensor):
            full[self.rows[where]] = values[where]
        else:
            full[self.rows[where]] = values

    def retire(self, done: torch.Tensor, *state: Any) -> tuple[Any, ...]:
        """Drop the active rows where ``done`` (one bool per active row) is True.

        Returns the per-row ``state`` tensors compacted to the rows that remain (None
        stays None), in the order given; when no row is done, ``state`` comes back as
        it is. Every tensor aligned with the active rows must go through here (or be
        rebuilt) so that it stays aligned with ``rows``.
        """
        if not bool(done.any()):
            return state
        keep = ~done
        self.rows = self.rows[keep]
        return tuple(None if t is None else t[keep] for t in state)


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


@contextlib.contextmanager
def frozen_buffers(model: nn.Module) -> Iterator[None]:
    """Forward passes inside leave the model's buffers (batch-norm running statistics and
    counters) exactly as they were: they are saved and copied back on exit."""
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, v in saved:
                b.copy_(v)


BN_MODES = ("eval", "train", "keep")


@contextlib.contextmanager
def generation_mode(model: nn.Module, bn_mode: str) -> Iterator[nn.Module]:
    """The module mode used while generating training adversarials, restored afterwards:
    ``"eval"`` (default; TRADES' official code), ``"train"`` (batch statistics, as in
    many PGD-AT implementations) or ``"keep"`` (leave the model as it is)."""
    check_choice(bn_mode, "bn_mode", BN_MODES)
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


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Every module in eval mode inside; each module's own mode restored afterwards (a
    model handed over with a mix of train- and eval-mode submodules gets that mix back)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, was in modes:
            m.training = was


def model_device(model: nn.Module) -> torch.device | None:
    """The device of the model's first parameter or buffer (None for stateless models)."""
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return None


__all__ = [
    "BN_MODES",
    "eval_mode",
    "ActiveSet",
    "AttackContext",
    "AttackResult",
    "BestTracker",
    "attack_mode",
    "generation_mode",
    "is_success",
    "looks_like_probabilities",
    "model_bounds",
    "model_device",
]
