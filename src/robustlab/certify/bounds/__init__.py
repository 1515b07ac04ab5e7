"""Deterministic certificates by bound propagation: IBP, CROWN, CROWN-IBP, α-CROWN.

Where randomized smoothing certifies a *smoothed* classifier with high probability, bound
propagation certifies the model itself, deterministically: it computes lower and upper
bounds on every logit (or on ``C @ logits`` for a specification ``C``) that hold for
*every* input of the threat model's ball around ``x`` intersected with robustlab's input
box ``[0, 1]`` (the model's ``input_bounds``). A point is *verified* when it is
classified correctly and every margin ``z_y - z_j`` has a positive lower bound; no
attack can then break it.

>>> from robustlab.certify.bounds import compute_bounds, margin_spec, verify, verified_accuracy
>>> lower, upper = compute_bounds(model, x, eps=0.1, method="crown-ibp")        # (B, K) each
>>> lower, _ = compute_bounds(model, x, 0.1, C=margin_spec(y, 10), method="crown")  # (B, 9)
>>> verified_accuracy(model, x, y, ThreatModel("linf", 0.1), method="crown-ibp")
>>> bounded = BoundedModel(model)     # traced once, reused by every call (current weights)
>>> lower, upper = compute_bounds(bounded, x, eps=0.1, method="ibp")

Methods (each returns sound bounds; cost is relative to one forward pass):

==============  ==============================================================  =============
method          how                                                             cost
==============  ==============================================================  =============
``ibp``         interval bound propagation, Gowal et al. 2018 (center/radius,   ~2 passes
                ``W c ± |W| r``; the spec merged into a last Linear layer)
``crown-ibp``   Zhang et al. ICLR 2020 ("Towards Stable and Efficient Training   ~2S backward
                of Verifiably Robust Neural Networks", Eq. (7)): IBP for every   passes of
                intermediate layer, one CROWN backward pass for the spec         width 1
``crown``       Zhang et al. NeurIPS 2018: CROWN for the spec *and* for every    one backward
                activation's input (one backward pass per unstable neuron)       per neuron
``alpha-crown`` Xu et al. ICLR 2021: CROWN intermediate bounds, then the lower  ``alpha_steps``
                slopes of unstable ReLUs of the final pass optimised (Adam)     final passes
==============  ==============================================================  =============

Layers (see :data:`~robustlab.certify.bounds.graph.SUPPORTED`): Linear, Conv2d (any
stride/padding/dilation/groups, zero padding), ReLU and LeakyReLU (slope in ``[0, 1]``:
CROWN's chord/adaptive relaxation), the monotone Sigmoid, Tanh, ELU, Softplus, Hardtanh,
ReLU6 (IBP end points; in CROWN the simplest sound relaxation, the constant lines
``f(l) <= f(z) <= f(u)``), Flatten/view/reshape, AvgPool2d and AdaptiveAvgPool2d (linear),
BatchNorm1d/2d (eval: affine), robustlab's ``Normalize`` and normalisation written as
plain tensor arithmetic with constants (buffers, parameters or plain tensor attributes:
``(x - self.mean) / self.std``), residual sums, Identity/Dropout, and MaxPool2d for IBP
only. Anything else raises :class:`~robustlab.errors.UnsupportedLayerError` naming it.
Non-monotone activations (GELU, SiLU, ...) are refused.

Deviations and choices, all deliberate:

- **input set**: L-inf is handled exactly, box included: the input interval is the
  clipped box ``[max(x − eps, 0), min(x + eps, 1)]`` and CROWN concretises
  ``Λ⁺·lo + Λ⁻·hi`` over it. For L2 (and L1) IBP uses that box (the ball's bounding box,
  sound and loose) and CROWN concretises with the dual norm, ``Λ·x0 − eps ‖Λ‖₂``
  (Zhang et al. 2018, Theorem 3.2), taking the better of that and the box bound; the
  exact ball ∩ box is not used (sound, looser).
- **eval mode**: the model is evaluated with every module in eval mode (each module's
  mode restored afterwards), so a BatchNorm layer is the affine map of its *running*
  statistics even when the model is handed over in train mode (its eval statistics are
  folded); a BatchNorm without running statistics is refused.
- **IBP intersection**: for the CROWN methods the returned bounds (and, for ``crown``,
  every intermediate bound) are by default the elementwise tighter of CROWN's and IBP's,
  so they are never looser than IBP's (CROWN's adaptive lower line can be looser than
  IBP's interval on a single unstable neuron). ``intersect_ibp=False`` returns the pure
  method (e.g. for CROWN-IBP training, whose gradient is that of the CROWN-IBP bound).
- **α-CROWN**: only the final specification's slopes are optimised (one slope per
  unstable neuron, per specification row, per image; lower and upper bounds have their
  own); the intermediate bounds are CROWN's and stay fixed (Xu et al. also optimise the
  intermediate layers' slopes). The result is the elementwise best over all iterates
  including the initial (CROWN) one, and at least CROWN's bound by construction. Its
  bounds are detached (no gradient to the model).
- **intermediate CROWN** (``crown``, ``alpha-crown``) runs one backward pass per neuron
  that is unstable under IBP, in chunks that keep each coefficient tensor under
  :data:`~robustlab.certify.bounds.propagation.LAMBDA_BUDGET` elements; a layer whose
  IBP interval is already exact (for L-inf: the first Linear/Conv after the input and
  elementwise maps) is not refined. Memory per chunk: ``B × chunk × 2 × (largest layer)``.
- **gradients**: IBP, CROWN and CROWN-IBP bounds are differentiable functions of the
  model's parameters (the graph reads them directly), for certified training.
- bounds are computed in ``x``'s dtype (float32 or float64; the weights are cast) on the
  model's device and returned on ``x``'s device.
"""

from __future__ import annotations

import math

import torch
from torch import fx, nn

from robustlab.attacks.engine import eval_mode, model_bounds, model_device
from robustlab.attacks.threat import ThreatModel
from robustlab.certify.bounds.graph import (
    SUPPORTED,
    BoundGraph,
    MaxPoolOp,
    Trace,
    rebuild_graph,
    trace_graph,
    unsupported,
)
from robustlab.certify.bounds.propagation import (
    LAMBDA_BUDGET,
    InputSet,
    Relaxations,
    alpha_crown,
    crown_final,
    crown_intermediate,
    ibp_bounds,
    ibp_spec,
)
from robustlab.errors import (
    ConfigError,
    InvalidInputError,
    ShapeMismatchError,
    UnsupportedLayerError,
)
from robustlab.validation import (
    check_bool,
    check_choice,
    check_float,
    check_inputs,
    check_int,
    check_labels,
    check_shape,
)

METHODS = ("ibp", "crown-ibp", "crown", "alpha-crown")


def margin_spec(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The margin specification: ``C`` of shape ``(B, K − 1, K)`` whose rows are
    ``e_y − e_j`` for ``j ≠ y`` in increasing order, so ``C @ z`` are the margins
    ``z_y − z_j`` (positive lower bounds on all of them verify the point). float32, on
    ``y``'s device."""
    k = check_int(num_classes, "num_classes", minimum=2)
    check_labels(y, k)
    eye = torch.eye(k, dtype=torch.float32, device=y.device)
    cols = torch.arange(k, device=y.device).expand(len(y), k)
    others = cols[cols != y[:, None]].reshape(len(y), k - 1)
    return eye[y].unsqueeze(1) - eye[others]


def _check_spec(C: torch.Tensor | None, batch: int, k: int, like: torch.Tensor) -> torch.Tensor:
    if C is None:
        return torch.eye(k, dtype=like.dtype, device=like.device).expand(batch, k, k)
    if not isinstance(C, torch.Tensor):
        raise InvalidInputError(f"the specification C must be a tensor of shape (S, {k}) or (B, S, {k}), got {type(C).__name__}.")
    if C.dim() == 2:
        C = C.unsqueeze(0).expand(batch, *C.shape)
    if C.dim() != 3 or C.shape[0] != batch or C.shape[2] != k or C.shape[1] < 1:
        raise ShapeMismatchError(
            f"the specification C has shape {tuple(C.shape)} but the model has {k} logits and the "
            f"batch {batch} images; give C of shape (S, {k}) or ({batch}, S, {k}) with S >= 1 "
            f"(e.g. margin_spec(y, {k}))."
        )
    if not torch.is_floating_point(C):
        C = C.to(like.dtype)
    if not bool(torch.isfinite(C).all()):
        raise InvalidInputError("the specification C contains NaN or inf; give finite coefficients.")
    return C.to(device=like.device, dtype=like.dtype)


def _check_common(model: nn.Module, x: torch.Tensor, threat: ThreatModel) -> tuple[float, float]:
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    box = model_bounds(model)
    check_inputs(x, bounds=box)
    if len(x) == 0:
        raise InvalidInputError("x has no samples; give at least one input.")
    shape = getattr(model, "input_shape", None)
    if shape is not None:
        check_shape(x, shape)
    threat.check_fits(x, box)
    return box


class BoundedModel:
    """A model prepared for repeated bound computations: traced with ``torch.fx`` once
    (lazily, on the first call) and its bound graph rebuilt per call from that trace, per
    input shape, dtype and device, without tracing or running the model again.

    >>> bounded = BoundedModel(model)
    >>> for x, y in batches:                    # e.g. certified training or evaluation
    ...     lower, _ = bounded.compute_bounds(x, 0.1, C=margin_spec(y, 10), method="crown-ibp")
    >>> compute_bounds(bounded, x, 0.1)         # the module-level functions accept it too

    Every call reads the model's *current* parameters, buffers and tensor attributes
    (weights changed in place by an optimiser, ``load_state_dict``, a reassigned
    parameter), so the bounds equal those of a fresh trace and gradients flow to the
    parameters. What is cached is the model's *structure*: its modules' types and its
    forward code; after changing those (replacing a layer by one of another kind, editing
    forward), make a new ``BoundedModel``. Nothing is stored on the model itself.
    """

    def __init__(self, model: nn.Module) -> None:
        if isinstance(model, BoundedModel):
            model = model.model
        if not isinstance(model, nn.Module):  # checked for callers without type checking
            raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        self.model: nn.Module = model
        self._fx: tuple[nn.Module, fx.Graph] | None = None
        self._traces: dict[tuple[object, ...], Trace] = {}

    def __repr__(self) -> str:
        return f"BoundedModel({type(self.model).__name__}, traced shapes={len(self._traces)})"

    def graph(self, x: torch.Tensor) -> BoundGraph:
        """The bound graph for inputs shaped like ``x`` (on the model's device; bounds in
        ``x``'s dtype), with the model's current weights. Call with the model in eval
        mode (:func:`~robustlab.attacks.engine.eval_mode`), as :meth:`compute_bounds` does."""
        param = next((p for p in self.model.parameters() if p.is_floating_point()), None)
        key = (tuple(x.shape[1:]), x.dtype, x.device, None if param is None else (param.dtype, param.device))
        traced = self._traces.get(key)
        if traced is not None:
            return rebuild_graph(self.model, traced, x.dtype, x.device)
        graph, traced = trace_graph(self.model, x, self._fx)
        self._fx = (traced.root, traced.graph)
        self._traces[key] = traced
        return graph

    def compute_bounds(
        self,
        x: torch.Tensor,
        eps: float,
        norm: str = "linf",
        method: str = "crown-ibp",
        C: torch.Tensor | None = None,
        *,
        alpha_steps: int = 20,
        alpha_lr: float = 0.1,
        bound_upper: bool = True,
        intersect_ibp: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`compute_bounds` of this model (same parameters and result)."""
        method = check_choice(method, "method", METHODS)
        threat = ThreatModel(norm, eps)
        alpha_steps = check_int(alpha_steps, "alpha_steps", minimum=0)
        alpha_lr = check_float(alpha_lr, "alpha_lr", low=0.0, low_open=True)
        check_bool(bound_upper, "bound_upper")
        check_bool(intersect_ibp, "intersect_ibp")
        model = self.model
        box = _check_common(model, x, threat)
        device = model_device(model) or x.device
        xd = x.detach().to(device)
        with eval_mode(model):
            graph = self.graph(xd)
            k = graph.ops[graph.output].shape[0]
            spec = _check_spec(C, len(x), k, xd)
            lo_box = (xd - threat.eps).clamp(min=box[0])
            hi_box = (xd + threat.eps).clamp(max=box[1])
            inp = InputSet(threat.norm, xd, threat.eps, lo_box, hi_box)
            lower, upper = _bounds(graph, inp, spec, method, alpha_steps, alpha_lr, bound_upper, intersect_ibp)
        return lower.to(x.device), upper.to(x.device)

    def verify(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        threat: ThreatModel,
        method: str = "crown-ibp",
        *,
        alpha_steps: int = 20,
        alpha_lr: float = 0.1,
    ) -> torch.Tensor:
        """:func:`verify` with this model."""
        return verify(self, x, y, threat, method, alpha_steps=alpha_steps, alpha_lr=alpha_lr)

    def verified_accuracy(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        threat: ThreatModel,
        method: str = "crown-ibp",
        batch_size: int = 128,
        *,
        alpha_steps: int = 20,
        alpha_lr: float = 0.1,
    ) -> float:
        """:func:`verified_accuracy` with this model."""
        return verified_accuracy(self, x, y, threat, method, batch_size, alpha_steps=alpha_steps, alpha_lr=alpha_lr)


def _bounded(model: nn.Module | BoundedModel) -> BoundedModel:
    return model if isinstance(model, BoundedModel) else BoundedModel(model)


def compute_bounds(
    model: nn.Module | BoundedModel,
    x: torch.Tensor,
    eps: float,
    norm: str = "linf",
    method: str = "crown-ibp",
    C: torch.Tensor | None = None,
    *,
    alpha_steps: int = 20,
    alpha_lr: float = 0.1,
    bound_upper: bool = True,
    intersect_ibp: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper bounds of the logits ``z(x')`` (shape ``(B, K)`` each), or of
    ``C @ z(x')`` (``(B, S)`` each) when a specification ``C`` of shape ``(B, S, K)`` or
    ``(S, K)`` is given, over every ``x'`` in the ``norm`` ball of radius ``eps`` around
    ``x`` intersected with the input box (the model's ``input_bounds``, ``[0, 1]``).

    Parameters
    ----------
    model: a model built from the supported layers (module docstring); traced with
        ``torch.fx`` and evaluated in eval mode (modes restored; BatchNorm uses its
        running statistics). A :class:`BoundedModel` reuses its trace across calls
        (a plain module is traced on every call).
    x: inputs ``(B, *input_shape)`` in the input box.
    eps, norm: the ball (``"linf"``, ``"l2"``, ``"l1"``), checked like the attacks' threat
        models (negative, NaN or beyond-the-box budgets raise EpsilonError).
    method: ``"ibp"``, ``"crown-ibp"`` (default), ``"crown"`` or ``"alpha-crown"``.
    C: specification matrix (e.g. :func:`margin_spec`); default: the identity.
    alpha_steps, alpha_lr: α-CROWN's Adam iterations and step size.
    bound_upper: when False the CROWN methods skip the upper-bound pass (half the cost)
        and return IBP's upper bound, which is sound but looser.
    intersect_ibp: return the tighter of the method's and IBP's bounds (default; see the
        module docstring).
    """
    if not isinstance(model, (nn.Module, BoundedModel)):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    return _bounded(model).compute_bounds(
        x, eps, norm, method, C, alpha_steps=alpha_steps, alpha_lr=alpha_lr,
        bound_upper=bound_upper, intersect_ibp=intersect_ibp,
    )


def _bounds(
    graph: BoundGraph,
    inp: InputSet,
    C: torch.Tensor,
    method: str,
    alpha_steps: int,
    alpha_lr: float,
    bound_upper: bool,
    intersect: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    ibp = ibp_bounds(graph, inp)
    ibp_lo, ibp_hi = ibp_spec(graph, ibp, C)
    if method == "ibp":
        return ibp_lo, ibp_hi
    for op in graph.ops:
        if isinstance(op, MaxPoolOp):
            raise unsupported(f"{op.name} (MaxPool2d) with method={method!r}", "it is supported by method='ibp' only")
    relax = Relaxations()  # each ReLU layer's relaxation, computed once per interval
    if method == "crown-ibp":
        lower, upper = crown_final(graph, inp, ibp, C, upper=bound_upper, relax=relax)
    elif method == "crown":
        inter = crown_intermediate(graph, inp, ibp, intersect=intersect, relax=relax)
        lower, upper = crown_final(graph, inp, inter, C, upper=bound_upper, relax=relax)
    else:
        with torch.no_grad():
            inter = crown_intermediate(graph, inp, ibp, intersect=intersect, relax=relax)
            c_lo, c_hi = crown_final(graph, inp, inter, C, upper=bound_upper, relax=relax)
        lower, upper = alpha_crown(graph, inp, inter, C, upper=bound_upper, steps=alpha_steps, lr=alpha_lr)
        lower = torch.maximum(lower, c_lo)
        if upper is not None and c_hi is not None:
            upper = torch.minimum(upper, c_hi)
        ibp_lo, ibp_hi = ibp_lo.detach(), ibp_hi.detach()
    if upper is None:
        upper = ibp_hi
    if intersect:
        lower, upper = torch.maximum(lower, ibp_lo), torch.minimum(upper, ibp_hi)
    return lower, upper


def verify(
    model: nn.Module | BoundedModel,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    method: str = "crown-ibp",
    *,
    alpha_steps: int = 20,
    alpha_lr: float = 0.1,
) -> torch.Tensor:
    """Per image (bool ``(B,)``, on ``x``'s device): classified correctly *and* every
    margin ``z_y − z_j`` has a positive lower bound over the threat model's ball ∩ the
    input box (so no attack within the threat model can change the prediction)."""
    if not isinstance(threat, ThreatModel):
        raise ConfigError(f"threat must be a ThreatModel (e.g. ThreatModel('linf', 0.1)), got {threat!r}.")
    if not isinstance(model, (nn.Module, BoundedModel)):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    bounded = _bounded(model)
    model = bounded.model
    _check_common(model, x, threat)
    device = model_device(model) or x.device
    with torch.no_grad(), eval_mode(model):
        logits = model(x.to(device))
    if logits.dim() != 2:
        raise ShapeMismatchError(f"the model returns outputs of shape {tuple(logits.shape)}; expected logits (N, K).")
    k = logits.shape[1]
    check_labels(y, k, n=len(x))
    yd = y.to(device)
    spec = margin_spec(yd, k)
    with torch.no_grad():
        lower, _ = bounded.compute_bounds(
            x.to(device), threat.eps, threat.norm, method, spec,
            alpha_steps=alpha_steps, alpha_lr=alpha_lr, bound_upper=False,
        )
    ok = (logits.argmax(1) == yd) & (lower > 0).all(1)
    return ok.to(x.device)


def verified_accuracy(
    model: nn.Module | BoundedModel,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    method: str = "crown-ibp",
    batch_size: int = 128,
    *,
    alpha_steps: int = 20,
    alpha_lr: float = 0.1,
) -> float:
    """Share of the points that :func:`verify` verifies (NaN for no points), computed in
    batches of ``batch_size`` (the bounds of an image do not depend on its batch); the
    model is traced once for all batches."""
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    if len(x) != len(y):
        raise ShapeMismatchError(f"x has {len(x)} inputs but y has {len(y)} labels; they must match.")
    if len(x) == 0:
        return math.nan
    if not isinstance(model, (nn.Module, BoundedModel)):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    bounded = _bounded(model)
    count = 0
    for start in range(0, len(x), batch_size):
        ok = verify(bounded, x[start : start + batch_size], y[start : start + batch_size], threat, method,
                    alpha_steps=alpha_steps, alpha_lr=alpha_lr)
        count += int(ok.sum())
    return count / len(x)


__all__ = [
    "LAMBDA_BUDGET",
    "METHODS",
    "SUPPORTED",
    "BoundedModel",
    "UnsupportedLayerError",
    "compute_bounds",
    "margin_spec",
    "verified_accuracy",
    "verify",
]
