"""Functional cores of the robust losses: ``(logits (N, K), target (N,), params) -> (N,)``.

The classes in this package are thin wrappers around these functions. Everything is
computed from ``log_softmax`` so that probabilities near 0 or 1 keep their precision
(``1 - p_y`` is ``-expm1(log p_y)``, ``p^q`` is ``exp(q log p)``). Where an official
implementation clamps probabilities, the same clamp is applied (in log space, which gives
the same values and the same zero gradients below the clamp).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: ``log(1e-7)``: GCE, NGCE and RCE clamp probabilities to ``[1e-7, 1]`` in the official code.
LOG_P_MIN = math.log(1e-7)
#: ``ln(1e-4)``: RCE's ``log 0`` stand-in, from clamping the one-hot label to ``[1e-4, 1]``.
RCE_A = math.log(1e-4)
#: How parameter errors describe ``A`` (RCE and the pairs with RCE).
RCE_A_NOTE = "the stand-in for log 0; official value ln(1e-4)"


def gather(values: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``values[i, target[i]]`` for every row ``i``."""
    return values.gather(1, target.unsqueeze(1)).squeeze(1)


def one_minus_prob(log_p: torch.Tensor) -> torch.Tensor:
    """``1 - p`` from ``log p`` without cancellation when ``p`` is close to 1."""
    return -torch.expm1(log_p)


def modulating_factor(log_p: torch.Tensor, gamma: float, detach: bool) -> torch.Tensor:
    """Focal modulating factor ``(1 - p)^gamma``.

    ``1 - p`` is floored at the smallest normal number of its dtype so that the power's
    derivative stays finite when ``p`` rounds to 1 (the floor has zero gradient, and the
    exact derivative of the focal term in the logits is 0 there). ``detach=True`` stops
    its gradient, as APL's ``FocalLoss``/``NormalizedFocalLoss`` do (``logpt.data.exp()``).
    """
    if gamma == 0.0:
        return torch.ones_like(log_p)
    base = one_minus_prob(log_p).clamp_min(torch.finfo(log_p.dtype).tiny)
    w = base.pow(gamma)
    return w.detach() if detach else w


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``-log p_y``."""
    return F.cross_entropy(logits, target, reduction="none")


def mae(logits: torch.Tensor, target: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``scale * (1 - p_y)`` (APL's ``MeanAbsoluteError``; ``scale=2`` is ``||e_y - p||_1``)."""
    return scale * one_minus_prob(gather(logits.log_softmax(1), target))


def gce(logits: torch.Tensor, target: torch.Tensor, q: float, clamp: bool = True) -> torch.Tensor:
    """Generalized cross-entropy ``L_q = (1 - p_y^q) / q`` (Zhang & Sabuncu 2018, Eq. 6).

    ``clamp=True`` clamps ``p_y`` to ``[1e-7, 1]`` like APL's ``GeneralizedCrossEntropy``.
    """
    log_py = gather(logits.log_softmax(1), target)
    if clamp:
        log_py = log_py.clamp(min=LOG_P_MIN)
    return -torch.expm1(q * log_py) / q


def rce(
    logits: torch.Tensor, target: torch.Tensor, A: float = RCE_A, scale: float = 1.0
) -> torch.Tensor:
    """Reverse cross-entropy ``-sum_k p_k log q_k`` with ``log q_k = A`` for ``k != y``.

    With ``p`` clamped to ``[1e-7, 1]`` (official code) this is
    ``-A * sum_{k != y} max(p_k, 1e-7)``, i.e. ``-A (1 - p_y)`` away from the clamp.
    """
    p = logits.softmax(1).clamp(min=1e-7)
    off = p.masked_fill(F.one_hot(target, logits.shape[1]).bool(), 0.0).sum(1)
    return scale * (-A) * off


def nce(logits: torch.Tensor, target: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Normalized cross-entropy ``-log p_y / sum_k (-log p_k)`` (Ma et al. 2020)."""
    log_p = logits.log_softmax(1)
    return scale * gather(log_p, target) / log_p.sum(1)


def focal(
    logits: torch.Tensor, target: torch.Tensor, gamma: float, detach: bool = False
) -> torch.Tensor:
    """Focal loss ``-(1 - p_y)^gamma log p_y`` (Lin et al. 2017, Eq. 4)."""
    log_py = gather(logits.log_softmax(1), target)
    return -modulating_factor(log_py, gamma, detach) * log_py


def nfl(
    logits: torch.Tensor,
    target: torch.Tensor,
    gamma: float,
    detach: bool = True,
    scale: float = 1.0,
) -> torch.Tensor:
    """Normalized focal loss ``FL(p, y) / sum_k FL(p, k)`` (Ma et al. 2020).

    ``detach=True`` follows APL's ``NormalizedFocalLoss``: the modulating factors
    ``(1 - p_k)^gamma`` are constants for autograd in numerator and denominator alike,
    while the ``log p_k`` keep their gradients.
    """
    log_p = logits.log_softmax(1)
    terms = -modulating_factor(log_p, gamma, detach) * log_p
    return scale * gather(terms, target) / terms.sum(1)


def ngce(logits: torch.Tensor, target: torch.Tensor, q: float, scale: float = 1.0) -> torch.Tensor:
    """Normalized GCE ``(1 - p_y^q) / (K - sum_k p_k^q)`` with ``p`` clamped to ``[1e-7, 1]``."""
    log_p = logits.log_softmax(1).clamp(min=LOG_P_MIN)
    one_minus_pq = -torch.expm1(q * log_p)  # 1 - p_k^q
    return scale * gather(one_minus_pq, target) / one_minus_pq.sum(1)


def comp_sum(logits: torch.Tensor, target: torch.Tensor, tau: float) -> torch.Tensor:
    """Comp-sum loss ``Phi^tau(u)``, ``u = sum_{k != y} exp(z_k - z_y)`` (Mao et al. 2023).

    ``1 + u = 1 / p_y``, so ``log(1 + u) = -log p_y`` and, for ``tau != 1``,
    ``((1 + u)^(1 - tau) - 1) / (1 - tau) = expm1((tau - 1) log p_y) / (1 - tau)``.
    """
    log_py = gather(logits.log_softmax(1), target)
    if tau == 1.0:
        return -log_py
    return torch.expm1((tau - 1.0) * log_py) / (1.0 - tau)


def ldr_logits(logits: torch.Tensor, softplus: bool, normalize: bool) -> torch.Tensor:
    """LDR's logit transform: optional softplus, then division by ``||z||_1 / K``.

    This is the official ``y_pred / (norm(y_pred, p=1) / K)`` (ALDR) and
    ``y_pred / mean(y_pred)`` after softplus (LDR); the two agree for positive logits.
    The divisor is floored at the dtype's smallest normal number (all-zero rows).
    """
    z = F.softplus(logits) if softplus else logits
    if normalize:
        z = z / z.abs().mean(1, keepdim=True).clamp_min(torch.finfo(z.dtype).tiny)
    return z


def ldr_kl(
    logits: torch.Tensor, target: torch.Tensor, lam: float | torch.Tensor, margin: float
) -> torch.Tensor:
    """LDR-KL on already-transformed logits (Zhu, Ying & Yang 2023).

    ``lam * log( (1/K) sum_k exp((z_k - z_y + margin * [k != y]) / lam) )``, the closed
    form of ``max_{p in simplex} sum_k p_k (z_k - z_y + margin [k != y]) - lam KL(p, 1/K)``.
    ``lam`` is a float or a per-sample tensor ``(N,)``.
    """
    k = logits.shape[1]
    d = logits - gather(logits, target).unsqueeze(1)
    if margin:
        d = d + margin * (1.0 - F.one_hot(target, k).to(d.dtype))
    lam_t = lam.unsqueeze(1) if isinstance(lam, torch.Tensor) else lam
    return (lam_t * (torch.logsumexp(d / lam_t, dim=1, keepdim=True) - math.log(k))).squeeze(1)


def aldr_lambda(
    logits: torch.Tensor, lam_prev: torch.Tensor, lam0: float, alpha: float
) -> torch.Tensor:
    """ALDR-KL's per-sample lambda update (official ``ALDRLoss_V1``), without gradient.

    ``p = normalize_1(softmax(z / lam_prev) + 1e-5)``, ``kl = sum_k p_k log(K p_k)`` and
    ``lam = lam0 - lam0 * kl / (alpha log K)``, the maximiser over ``lam`` of
    ``-lam kl - alpha log K / (2 lam0) (lam - lam0)^2``. ``z`` are transformed logits.
    """
    with torch.no_grad():
        k = logits.shape[1]
        p = (logits / lam_prev.unsqueeze(1)).softmax(1) + 1e-5
        p = p / p.sum(1, keepdim=True)
        kl = (p * torch.log(k * p)).sum(1)
        return lam0 - lam0 * kl / (alpha * math.log(k))


def aldr_penalty(lam: torch.Tensor, lam0: float, alpha: float, num_classes: int) -> torch.Tensor:
    """ALDR-KL's ``-alpha log K / (2 lam0) (lam - lam0)^2`` term of the loss value."""
    return -0.5 * alpha * math.log(num_classes) / lam0 * (lam - lam0) ** 2


def bootstrap_soft(
    logits: torch.Tensor, target: torch.Tensor, beta: float, detach_target: bool = False
) -> torch.Tensor:
    """Soft bootstrapping ``-sum_k (beta t_k + (1 - beta) p_k) log p_k`` (Reed et al. 2015)."""
    log_p = logits.log_softmax(1)
    p = log_p.exp()
    if detach_target:
        p = p.detach()
    return -(beta * gather(log_p, target) + (1.0 - beta) * (p * log_p).sum(1))


def bootstrap_hard(logits: torch.Tensor, target: torch.Tensor, beta: float) -> torch.Tensor:
    """Hard bootstrapping ``-(beta log p_y + (1 - beta) log p_{argmax_k p_k})`` (Reed et al. 2015)."""
    log_p = logits.log_softmax(1)
    pred = log_p.detach().argmax(1)
    return -(beta * gather(log_p, target) + (1.0 - beta) * gather(log_p, pred))


def truncated_lq(log_py: torch.Tensor, q: float) -> torch.Tensor:
    """``L_q(p_y) = (1 - p_y^q) / q`` from ``log p_y`` (no clamp, as the reference code)."""
    return -torch.expm1(q * log_py) / q


__all__ = [
    "LOG_P_MIN",
    "RCE_A",
    "aldr_lambda",
    "aldr_penalty",
    "bootstrap_hard",
    "bootstrap_soft",
    "comp_sum",
    "cross_entropy",
    "focal",
    "gather",
    "gce",
    "ldr_kl",
    "ldr_logits",
    "mae",
    "modulating_factor",
    "nce",
    "nfl",
    "ngce",
    "one_minus_prob",
    "rce",
    "truncated_lq",
]
