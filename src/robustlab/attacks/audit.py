"""Audit checks: signs that a robustness evaluation cannot be trusted.

Each check returns :class:`Flag` objects (a short code and a sentence for people);
:func:`audit` runs them all and every evaluation stores the result. The checks extend
AutoAttack's (``autoattack/checks.py``; Croce & Hein 2020, App. and ``flags_doc.md``)
and the advice of Carlini et al. (2019), "On Evaluating Adversarial Robustness":

=========================  ==============================================================
code                       fires when
=========================  ==============================================================
``randomized``             identical forward passes give different outputs (in eval mode,
                           or in the train mode the model was handed over in)
``softmax-output``         outputs are non-negative rows summing to 1 (probabilities)
``zero-grad``              a share of points has an all-zero input gradient of the
                           margin loss (gradient masking, non-differentiable layers)
``nan-grad``               a share of points has a NaN/inf input gradient
``black-box-stronger``     a black-box member (Square) broke > 0.2% of the points after
                           every white-box member had failed on them
``non-monotone-eps``       robust accuracy rises with eps
``large-eps-robust``       at a huge budget (L-inf 0.5 of the box width, or the L2/L1 ball
                           containing it) points survive although the box's centre,
                           which is inside every such ball, is classified differently
``more-iterations-higher`` robust accuracy with twice the iterations is higher
``incomplete-protocol``    members of a protocol were skipped (missing, unsupported norm,
                           too few classes) or had parameters capped
=========================  ==============================================================
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from robustlab.attacks.base import Attack, attacks
from robustlab.attacks.engine import (
    attack_mode,
    frozen_buffers,
    is_success,
    looks_like_probabilities,
    model_bounds,
)
from robustlab.attacks.losses import margin_loss
from robustlab.attacks.threat import ThreatModel
from robustlab.errors import EpsilonError


@dataclass(frozen=True)
class Flag:
    """One audit finding: ``code`` (short, stable) and ``message`` (a sentence for people);
    ``value`` is the measured share or difference when there is one."""

    code: str
    message: str
    value: float | None = None

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "value": self.value}


@contextlib.contextmanager
def _untouched(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Restore the model's buffers (e.g. batch-norm statistics), module modes and the
    global RNG after passes that might change them."""
    modes = [(m, m.training) for m in model.modules()]
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), frozen_buffers(model):
        try:
            yield
        finally:
            for m, was in modes:
                m.training = was


def _outputs_differ(outs: list[torch.Tensor], tol: float) -> float:
    """Largest difference between repeated outputs, each row scaled to unit L2 norm
    (AutoAttack's ``check_randomized`` comparison)."""
    normed = [o / (o.norm(dim=1, keepdim=True) + 1e-10) for o in outs]
    worst = 0.0
    for i in range(len(normed)):
        for j in range(i + 1, len(normed)):
            worst = max(worst, float((normed[i] - normed[j]).norm(dim=1).max()))
    return worst


def check_randomized(model: nn.Module, x: torch.Tensor, *, repeats: int = 3, tol: float = 1e-4) -> list[Flag]:
    """Flag a model whose outputs change between identical forward passes: in eval mode
    (the mode attacks use), and in train mode if the model was handed over in train mode
    (then the message says so). Buffers, modes and the global RNG are restored."""
    flags: list[Flag] = []
    if not len(x):
        return flags
    given_train = model.training
    with _untouched(model, x.device), torch.no_grad():
        model.eval()
        diff_eval = _outputs_differ([model(x).float() for _ in range(repeats)], tol)
        diff_train = 0.0
        if given_train:
            model.train()
            diff_train = _outputs_differ([model(x).float() for _ in range(repeats)], tol)
    if diff_eval > tol:
        flags.append(Flag(
            "randomized",
            f"the model's outputs change between identical forward passes in eval mode (max "
            f"difference {diff_eval:.3g}); gradient attacks are unreliable on randomised models: "
            f"evaluate with attack='rand' or wrap attacks in 'eot'.",
            diff_eval,
        ))
    elif diff_train > tol:
        flags.append(Flag(
            "randomized",
            f"the model was handed over in train mode, where its outputs are random (max "
            f"difference {diff_train:.3g}; dropout or batch statistics). Attacks evaluate it in "
            f"eval mode; call model.eval() if that is not what you meant, or evaluate the "
            f"randomised model with attack='rand'.",
            diff_train,
        ))
    return flags


def check_softmax(logits: torch.Tensor) -> list[Flag]:
    """Flag outputs that look like probabilities (AutoAttack's ``check_range_output``)."""
    if looks_like_probabilities(logits):
        return [Flag(
            "softmax-output",
            "the model's outputs are non-negative and sum to 1 per row: it seems to return "
            "probabilities, and the attack losses (cross-entropy, DLR, margins) expect logits. "
            "Remove the final softmax for evaluation.",
        )]
    return []


def check_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[Flag]:
    """Flag points whose input gradient of the margin loss is all zero or not finite
    (AutoAttack's ``check_zero_gradients``, per point). Eval mode; parameters untouched."""
    if not len(x):
        return []
    with attack_mode(model):
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(xg).float()
            loss = margin_loss(logits, y)
            (grad,) = torch.autograd.grad(loss.sum(), xg, allow_unused=True)
    if grad is None:
        grad = torch.zeros_like(x)
    flat = grad.reshape(len(x), -1)
    finite = torch.isfinite(flat).all(1)
    zero = finite & (flat.abs().sum(1) == 0)
    flags = []
    if bool(zero.any()):
        share = float(zero.float().mean())
        flags.append(Flag(
            "zero-grad",
            f"{100 * share:.1f}% of the points have an all-zero input gradient; gradient-based "
            f"attacks cannot move them (non-differentiable layers or gradient masking), so their "
            f"robust accuracy may be overestimated. Check with black-box attacks (square).",
            share,
        ))
    if bool((~finite).any()):
        share = float((~finite).float().mean())
        flags.append(Flag(
            "nan-grad",
            f"{100 * share:.1f}% of the points have NaN or infinite input gradients; gradient "
            f"attacks fail on them. Look for divisions by zero, log(0) or sqrt(0) in the model.",
            share,
        ))
    return flags


def check_black_box(
    stages: Sequence[str], black_box: Sequence[bool], broken: Sequence[int], num_points: int, *, alpha: float = 0.002
) -> list[Flag]:
    """Flag a black-box member that broke more than ``alpha`` of the points after all
    white-box members failed on them (AutoAttack's ``check_square_sr``, alpha 0.002)."""
    if not num_points or not any(black_box) or all(black_box):
        return []
    extra = sum(b for b, bb in zip(broken, black_box, strict=True) if bb)
    share = extra / num_points
    if share > alpha:
        names = ", ".join(s for s, bb in zip(stages, black_box, strict=True) if bb)
        return [Flag(
            "black-box-stronger",
            f"the black-box attack ({names}) broke {100 * share:.2f}% of the points that every "
            f"gradient-based attack missed: gradients are likely masked or obfuscated, so the "
            f"evaluation is unreliable. Try more queries/restarts or an adaptive attack.",
            share,
        )]
    return []


def check_monotone(eps: Sequence[float], accuracy: Sequence[float], *, tol: float = 1e-12) -> list[Flag]:
    """Flag robust accuracy that increases with eps (a larger ball contains the smaller one)."""
    pairs = sorted(zip(eps, accuracy, strict=True))
    bad = [(e0, a0, e1, a1) for (e0, a0), (e1, a1) in zip(pairs, pairs[1:], strict=False) if e1 > e0 and a1 > a0 + tol]
    if bad:
        e0, a0, e1, a1 = bad[0]
        return [Flag(
            "non-monotone-eps",
            f"robust accuracy rises from {100 * a0:.2f}% at eps={e0:g} to {100 * a1:.2f}% at "
            f"eps={e1:g}, but every perturbation allowed at the smaller eps is allowed at the "
            f"larger one: the attack is failing (run all eps in one call to reuse successes).",
            a1 - a0,
        )]
    return []


def large_threat(norm: str, x: torch.Tensor, bounds: tuple[float, float]) -> ThreatModel | None:
    """The smallest ball of ``norm`` that contains the L-inf ball of half the box width
    (so the box's centre is reachable from every input); None if it cannot be built."""
    width = bounds[1] - bounds[0]
    d = x[0].numel()
    eps = {"linf": 0.5 * width, "l2": 0.5 * width * d**0.5, "l1": 0.5 * width * d}[norm]
    try:
        return ThreatModel(norm, eps)
    except EpsilonError:
        return None


def check_large_eps(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    norm: str,
    *,
    generator: torch.Generator,
    attack: Attack | None = None,
) -> list[Flag]:
    """Attack at a huge budget that contains the box's centre ``c`` in every ball: any
    point with ``y != f(c)`` is provably non-robust there, so an attack that leaves such
    points robust is failing (typically gradient masking)."""
    bounds = model_bounds(model)
    threat = large_threat(norm, x, bounds)
    if threat is None or not len(x):
        return []
    atk = attack or attacks.create("apgd-ce", steps=20)
    res = atk(model, x, y, threat, generator=generator)
    centre = torch.full_like(x[:1], 0.5 * (bounds[0] + bounds[1]))
    with attack_mode(model), torch.no_grad():
        pred_c = int(model(centre).argmax(1))
    missed = res.robust & (y != pred_c)
    if bool(missed.any()):
        share = float(missed.float().mean())
        return [Flag(
            "large-eps-robust",
            f"at {threat} (a ball containing the input box's centre) robust accuracy is still "
            f"{100 * res.robust_accuracy:.1f}%, and {100 * share:.1f}% of the points survive although "
            f"the centre is classified differently from their label: the attack cannot find "
            f"perturbations that exist (gradient masking?).",
            share,
        )]
    return []


def check_more_iterations(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    *,
    generator_seed: int,
    attack: str = "apgd-ce",
    params: dict[str, Any] | None = None,
    base_steps: int | None = None,
) -> list[Flag]:
    """Run ``attack`` with ``steps`` and ``2 * steps`` iterations (same seed) and flag when
    more iterations leave more points robust (by at least 2 points and 1%)."""
    if not len(x) or attack not in attacks:
        return []
    factory = attacks.get(attack)
    try:
        accepted = inspect.signature(factory.__init__ if inspect.isclass(factory) else factory).parameters
    except (TypeError, ValueError):
        return []
    if "steps" not in accepted:
        return []
    params = dict(params or {})
    default = accepted["steps"].default
    steps = int(base_steps or params.get("steps", default if isinstance(default, int) else 10))
    out = []
    for s in (steps, 2 * steps):
        atk = attacks.create(attack, **{**params, "steps": s})
        res = atk(model, x, y, threat, generator=torch.Generator(device=x.device).manual_seed(generator_seed))
        out.append(int(res.robust.sum()))
    diff = out[1] - out[0]
    if diff >= max(2, int(0.01 * len(x))):
        return [Flag(
            "more-iterations-higher",
            f"{attack} with {2 * steps} iterations leaves {diff} more of {len(x)} points robust than "
            f"with {steps} at {threat}: the attack's progress is erratic (randomness, obfuscated "
            f"gradients or a badly tuned step size).",
            diff / len(x),
        )]
    return []


def check_protocol(skipped: Sequence[dict[str, str]], protocol: str) -> list[Flag]:
    """Flag members of a protocol that did not run as written."""
    if not skipped:
        return []
    text = "; ".join(f"{s['member']}: {s['reason']}" for s in skipped)
    return [Flag(
        "incomplete-protocol",
        f"{protocol} did not run exactly as written ({text}); the result may be weaker than the "
        f"full protocol.",
    )]


def audit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threats: Sequence[ThreatModel],
    *,
    robust_accuracy: Sequence[float] = (),
    stages: Sequence[str] = (),
    stage_black_box: Sequence[bool] = (),
    stage_broken: Sequence[int] = (),
    skipped: Sequence[dict[str, str]] = (),
    num_points: int | None = None,
    protocol: str = "",
    attack: str = "apgd-ce",
    params: dict[str, Any] | None = None,
    seed: int = 0,
    subset: int = 128,
    expensive: bool = True,
) -> list[Flag]:
    """Run every check on (up to ``subset`` points of) ``x, y``.

    The cheap checks always run (randomness, softmax, gradients); with ``expensive`` also
    the large-eps attack and the more-iterations comparison (two extra attacks on the
    subset). ``robust_accuracy`` (one per threat), ``stages``/``stage_black_box``/
    ``stage_broken`` (totals over the ``num_points`` evaluated points) and ``skipped``
    come from the evaluation being audited.
    """
    xs, ys = x[:subset], y[:subset].to(x.device)
    flags: list[Flag] = []
    flags += check_randomized(model, xs)
    with attack_mode(model), torch.no_grad():
        logits = model(xs).float() if len(xs) else torch.zeros(0, 2)
    flags += check_softmax(logits)
    flags += check_gradients(model, xs, ys)
    n_total = len(x) if num_points is None else num_points
    if stages:
        flags += check_black_box(stages, stage_black_box, stage_broken, n_total)
    if robust_accuracy:
        flags += check_monotone([t.eps for t in threats], robust_accuracy)
    flags += check_protocol(skipped, protocol)
    if expensive and len(xs) and threats:
        randomized = any(f.code == "randomized" for f in flags)
        if not randomized:
            flags += check_large_eps(
                model, xs, ys, threats[0].norm, generator=torch.Generator(device=x.device).manual_seed(seed)
            )
            mid = sorted(threats, key=lambda t: t.eps)[len(threats) // 2]
            if mid.eps > 0:
                correct = is_success(logits, ys, None).logical_not()
                if bool(correct.any()):
                    name, prm = (attack, params) if attack in attacks and "steps" in _accepted(attack) else ("apgd-ce", {"steps": 10})
                    flags += check_more_iterations(
                        model, xs[correct], ys[correct], mid, generator_seed=seed, attack=name, params=prm
                    )
    return flags


def _accepted(name: str) -> set[str]:
    factory = attacks.get(name)
    try:
        return set(inspect.signature(factory.__init__ if inspect.isclass(factory) else factory).parameters)
    except (TypeError, ValueError):
        return set()
