"""IBP, CROWN and α-CROWN over a :class:`~robustlab.certify.bounds.graph.BoundGraph`.

- IBP (Gowal et al. 2018, "On the Effectiveness of Interval Bound Propagation for
  Training Verifiably Robust Models", Eq. (6)): intervals as center ``c`` and radius
  ``r``; an affine layer maps them to ``W c + b`` and ``|W| r``; monotone activations map
  the end points.
- CROWN (Zhang et al. NeurIPS 2018, "Efficient Neural Network Robustness Certification
  with General Activation Functions", Theorem 3.2): a linear lower bound ``Λ h + c`` of
  the objective is pushed backwards through the graph, node by node (a node read by
  several others sums their coefficients, so residual sums send ``Λ`` to both
  branches); activations are replaced by linear lower/upper lines, chosen by the sign of
  each coefficient; at the input the bound is concretised over the input set.
- α-CROWN (Xu et al. ICLR 2021, "Fast and Complete: Enabling Complete Neural Network
  Verification with Rapid and Massively Parallel Incomplete Verifiers", Sec. 3.1): the
  lower slopes of unstable ReLUs become variables in ``[0, 1]`` optimised by projected
  gradient ascent on the bound.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robustlab.certify.bounds.graph import (
    BoundGraph,
    InputOp,
    Interval,
    LinearOp,
    MonotoneOp,
    ReluOp,
    ReluRelaxation,
    relu_relaxation,
)

#: the most elements one coefficient tensor ``Λ`` may hold when CROWN bounds an
#: intermediate layer (its neurons are processed in chunks): 2**25 = 128 MiB in float32
LAMBDA_BUDGET = 2**25


@dataclass
class InputSet:
    """The ``norm`` ball of radius ``eps`` around ``x0`` intersected with the input box.

    ``lo``, ``hi``: the clipped box ``[max(x0 - eps, box_lo), min(x0 + eps, box_hi)]``,
    which contains the set for every norm (and equals it for L-inf).
    """

    norm: str
    x0: torch.Tensor
    eps: float
    lo: torch.Tensor
    hi: torch.Tensor

    def concretize(self, lam: torch.Tensor) -> torch.Tensor:
        """``min over the set of Λ·x`` (a lower bound of it), shape ``(B, S)``.

        L-inf: exact over the clipped box, ``Λ⁺·lo + Λ⁻·hi``. L2 / L1: the better of the
        dual-norm bound over the ball, ``Λ·x0 − eps ‖Λ‖_q`` (``q`` = 2 / ∞), and the box
        bound over the clipped bounding box; each is a lower bound over the intersection,
        which itself is not used (sound, looser than the exact minimum).
        """
        flat = lam.flatten(2)
        lo, hi = self.lo.flatten(1), self.hi.flatten(1)
        box = torch.einsum("bsn,bn->bs", flat.clamp(min=0), lo) + torch.einsum(
            "bsn,bn->bs", flat.clamp(max=0), hi
        )
        if self.norm == "linf":
            return box
        center = torch.einsum("bsn,bn->bs", flat, self.x0.flatten(1))
        dual = flat.norm(dim=-1) if self.norm == "l2" else flat.abs().amax(-1)
        return torch.maximum(box, center - self.eps * dual)


def ibp_bounds(graph: BoundGraph, inp: InputSet) -> list[Interval]:
    """IBP intervals of every op (the input's is the clipped box)."""
    out: list[Interval] = []
    for op in graph.ops:
        if isinstance(op, InputOp):
            out.append((inp.lo, inp.hi))
        else:
            out.append(op.ibp([out[j] for j in op.inputs]))
    return out


def ibp_spec(graph: BoundGraph, bounds: list[Interval], C: torch.Tensor) -> Interval:
    """IBP bounds of ``C z``, ``C`` of shape ``(B, S, K)``. When the logits come from a
    Linear layer on vectors, ``C`` is merged into it first (``(C W) h + C b``; Gowal et al.
    2018, Sec. 3, "elision of the last layer"), which is never looser."""
    op = graph.ops[graph.output]
    if isinstance(op, LinearOp) and len(graph.ops[op.inputs[0]].shape) == 1:
        lo, hi = bounds[op.inputs[0]]
        c, r = (hi + lo) / 2, (hi - lo) / 2
        w = C @ op.weight
        mid = torch.einsum("bsi,bi->bs", w, c)
        if op.bias is not None:
            mid = mid + C @ op.bias
        rad = torch.einsum("bsi,bi->bs", w.abs(), r)
    else:
        lo, hi = bounds[graph.output]
        c, r = (hi + lo) / 2, (hi - lo) / 2
        mid = torch.einsum("bsk,bk->bs", C, c)
        rad = torch.einsum("bsk,bk->bs", C.abs(), r)
    return mid - rad, mid + rad


class Relaxations:
    """The ReLU relaxations of one bound computation, each computed once from the
    interval it was asked for and reused while that interval (the same tensors) stays the
    layer's bound: by the lower and upper pass, by every chunk of an intermediate layer and
    by the passes of every later layer."""

    def __init__(self) -> None:
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor, ReluRelaxation]] = {}

    def get(self, idx: int, op: ReluOp, iv: Interval) -> ReluRelaxation:
        hit = self._cache.get(idx)
        if hit is not None and hit[0] is iv[0] and hit[1] is iv[1]:
            return hit[2]
        rx = ReluRelaxation.of(iv[0], iv[1], op.slope)
        self._cache[idx] = (iv[0], iv[1], rx)
        return rx


def backward_bound(
    graph: BoundGraph,
    target: int,
    lam0: torch.Tensor,
    bounds: list[Interval],
    inp: InputSet,
    alphas: dict[int, torch.Tensor] | None = None,
    relax: Relaxations | None = None,
) -> torch.Tensor:
    """CROWN's lower bound of ``lam0 · h_target`` over the input set, shape ``(B, S)``.

    ``lam0`` has shape ``(B, S, *shape of target)``; ``bounds`` holds the pre-activation
    intervals of every activation between the input and ``target``; ``alphas`` maps a
    ReLU op to its lower slopes ``(B, S, *shape)`` (α-CROWN), else the adaptive slopes;
    ``relax`` caches the ReLU relaxations across passes. An upper bound is minus the
    lower bound of ``-lam0``.
    """
    if relax is None:
        relax = Relaxations()
    lams: dict[int, torch.Tensor] = {target: lam0}
    bias: torch.Tensor | None = None
    for idx in range(target, -1, -1):
        lam = lams.pop(idx, None)
        if lam is None:
            continue
        op = graph.ops[idx]
        if isinstance(op, InputOp):
            c = inp.concretize(lam)
            bias = c if bias is None else bias + c
            continue
        alpha = None if alphas is None else alphas.get(idx)
        if isinstance(op, ReluOp):
            j = op.inputs[0]
            ins, b = op.backward_relaxed(lam, relax.get(j, op, bounds[j]), alpha)
        else:
            pre: list[Interval | None] = [bounds[j] for j in op.inputs]
            ins, b = op.backward(lam, pre, alpha)
        if b is not None:
            bias = b if bias is None else bias + b
        for j, lj in zip(op.inputs, ins):
            if lj is None:
                continue
            lams[j] = lams[j] + lj if j in lams else lj
    if bias is None:
        return torch.zeros(lam0.shape[:2], dtype=lam0.dtype, device=lam0.device)
    return bias


def _identity_specs(
    part: torch.Tensor, n: int, batch: int, shape: tuple[int, ...], like: torch.Tensor
) -> torch.Tensor:
    """``[I; -I]`` rows for the neurons ``part``, shape ``(B, 2k, *shape)``."""
    k = len(part)
    eye = torch.zeros(2 * k, n, dtype=like.dtype, device=like.device)
    rows = torch.arange(k, device=like.device)
    eye[rows, part] = 1.0
    eye[rows + k, part] = -1.0
    return eye.expand(batch, 2 * k, n).reshape(batch, 2 * k, *shape)


def crown_intermediate(
    graph: BoundGraph, inp: InputSet, ibp: list[Interval], *, intersect: bool, relax: Relaxations | None = None
) -> list[Interval]:
    """Pre-activation bounds by CROWN (one backward pass per neuron, in chunks).

    Starting from IBP's intervals, each activation input is bounded, in topological
    order, by CROWN with the bounds already refined before it. Skipped (kept from IBP):
    layers whose IBP interval is already exact (for L-inf: an elementwise-affine image
    of the input, or one Linear/Conv/AvgPool of one), and, before a ReLU-type activation,
    neurons that are stable in IBP (their relaxation is exact whatever the bounds); the
    neurons refined are those unstable in any image of the batch, and each image keeps
    its IBP interval where it was stable, so an image's bounds do not depend on its
    batch. ``intersect``: keep the tighter of IBP and CROWN for each end point (sound,
    and never looser than IBP).
    """
    bounds = list(ibp)
    if relax is None:
        relax = Relaxations()
    for idx in graph.relaxed():
        if inp.norm == "linf" and graph.exact[idx]:
            continue
        lo, hi = bounds[idx]
        batch = lo.shape[0]
        flat_lo, flat_hi = lo.flatten(1), hi.flatten(1)
        acts = [graph.ops[c] for c in graph.consumers[idx] if isinstance(graph.ops[c], (ReluOp, MonotoneOp))]
        if all(isinstance(a, ReluOp) for a in acts):
            need = (flat_lo < 0) & (flat_hi > 0)
        else:
            need = torch.ones_like(flat_lo, dtype=torch.bool)
        sel = need.any(0).nonzero().squeeze(1)
        if sel.numel() == 0:
            continue
        n = flat_lo.shape[1]
        width = max(graph.ops[j].numel for j in range(idx + 1))
        chunk = max(1, LAMBDA_BUDGET // (2 * batch * width))
        new_lo, new_hi = flat_lo.clone(), flat_hi.clone()
        shape = graph.ops[idx].shape
        for start in range(0, len(sel), chunk):
            part = sel[start : start + chunk]
            k = len(part)
            res = backward_bound(graph, idx, _identity_specs(part, n, batch, shape, lo), bounds, inp, relax=relax)
            c_lo, c_hi = res[:, :k], -res[:, k:]
            old_lo, old_hi = flat_lo[:, part], flat_hi[:, part]
            if intersect:
                c_lo, c_hi = torch.maximum(c_lo, old_lo), torch.minimum(c_hi, old_hi)
            m = need[:, part]
            new_lo[:, part] = torch.where(m, c_lo, old_lo)
            new_hi[:, part] = torch.where(m, c_hi, old_hi)
        bounds[idx] = (new_lo.view_as(lo), new_hi.view_as(hi))
    return bounds


def _final_specs(C: torch.Tensor, upper: bool) -> torch.Tensor:
    return torch.cat([C, -C], 1) if upper else C


def crown_final(
    graph: BoundGraph,
    inp: InputSet,
    bounds: list[Interval],
    C: torch.Tensor,
    *,
    upper: bool,
    relax: Relaxations | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """CROWN bounds of ``C z``: one backward pass with ``S`` specifications, or ``2S``
    (``[C; -C]`` stacked, so the lower and upper bounds share every layer's matrix
    product and relaxation) when ``upper``."""
    s = C.shape[1]
    res = backward_bound(graph, graph.output, _final_specs(C, upper), bounds, inp, relax=relax)
    return res[:, :s], (-res[:, s:] if upper else None)


def alpha_crown(
    graph: BoundGraph,
    inp: InputSet,
    bounds: list[Interval],
    C: torch.Tensor,
    *,
    upper: bool,
    steps: int,
    lr: float,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """α-CROWN bounds of ``C z`` with fixed (CROWN) intermediate bounds.

    One slope per unstable neuron of every ReLU-type layer *and* per output
    specification and image (``α`` of shape ``(B, S', *layer shape)``, ``S' = 2S`` when
    the upper bound is also optimised: the lower and upper bound of each row of ``C``
    have their own slopes), initialised at CROWN's adaptive slopes, projected onto
    ``[slope, 1]`` (``[0, 1]`` for ReLU) after each Adam step (Xu et al. 2021 use Adam
    too). The objective is the sum of all lower bounds (each depends on its own slopes
    only, so this is one independent ascent per bound). Returns the elementwise best
    bound over all iterates including the initial one (detached).
    """
    s = C.shape[1]
    lam0 = _final_specs(C, upper).detach()
    bounds = [(lo.detach(), hi.detach()) for lo, hi in bounds]
    n_spec = lam0.shape[1]
    alphas: dict[int, torch.Tensor] = {}
    lows: dict[int, float] = {}
    for i, op in enumerate(graph.ops):
        if not isinstance(op, ReluOp) or i > graph.output:
            continue
        lo, hi = bounds[op.inputs[0]]
        unstable, low, _, _ = relu_relaxation(lo, hi, op.slope)
        if not bool(unstable.any()):
            continue
        batch = lo.shape[0]
        alphas[i] = low.unsqueeze(1).expand(batch, n_spec, *op.shape).clone().requires_grad_(True)
        lows[i] = op.slope
    best: torch.Tensor | None = None
    params = list(alphas.values())
    opt = torch.optim.Adam(params, lr=lr) if params else None
    relax = Relaxations()
    for t in range(steps + 1):
        with torch.enable_grad():
            res = backward_bound(graph, graph.output, lam0, bounds, inp, alphas, relax)
            objective = -res.sum()
        cur = res.detach()
        best = cur if best is None else torch.maximum(best, cur)
        if t == steps or opt is None:
            break
        # a layer cut off by a constant relaxation (MonotoneOp) gets no gradient
        grads = torch.autograd.grad(objective, params, allow_unused=True)
        for a, g in zip(params, grads):
            a.grad = g
        opt.step()
        with torch.no_grad():
            for i, a in alphas.items():
                a.clamp_(lows[i], 1.0)
    assert best is not None
    return best[:, :s], (-best[:, s:] if upper else None)


__all__ = [
    "LAMBDA_BUDGET",
    "InputSet",
    "Relaxations",
    "alpha_crown",
    "backward_bound",
    "crown_final",
    "crown_intermediate",
    "ibp_bounds",
    "ibp_spec",
]
