"""Attack objectives: per-sample losses that an attack MAXIMISES.

Every objective has the signature ``(logits, y, target=None, clean=None) -> (N,)``:
``target`` selects the targeted form; ``clean`` are the logits on the clean inputs
(only the KL and logit-difference objectives read them, see :data:`CLEAN_LOSSES`).
Attacks look them up by name with :func:`attack_loss` (``ce``, ``margin``/``cw``,
``dlr``, ``pm``, ``kl``, ``logit-diff``). Pure functions of tensors: no model, no
state, nothing from the rest of the attack engine.

TRADES' inner maximisation ``KL(f(x) || f(x'))`` is ``create("pgd", loss="kl")`` (see
:func:`kl_loss`); training code hands the clean logits to :meth:`Attack.generate`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from robustlab.errors import ConfigError
from robustlab.registry import close_matches

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
    if isinstance(name, str) and name in ATTACK_LOSSES:
        return ATTACK_LOSSES[name]
    near = close_matches(name, ATTACK_LOSSES) if isinstance(name, str) else []
    hint = f" Did you mean {', '.join(map(repr, near))}?" if near else ""
    raise ConfigError(f"unknown attack loss {name!r}.{hint} Available: {', '.join(ATTACK_LOSSES)}.")


def loss_min_classes(name: str, targeted: bool) -> int:
    """The fewest classes the objective ``name`` is defined for."""
    lo = LOSS_MIN_CLASSES.get(name, (2, 2))
    return lo[1] if targeted else lo[0]


__all__ = [
    "ATTACK_LOSSES",
    "AttackLoss",
    "CLEAN_LOSSES",
    "LOSS_MIN_CLASSES",
    "attack_loss",
    "ce_loss",
    "dlr_loss",
    "kl_loss",
    "logit_change_loss",
    "loss_min_classes",
    "margin_loss",
    "probability_margin_loss",
]
