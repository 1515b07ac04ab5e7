"""What the out-distribution is: noise images, corrupted inputs, adversarial examples.

Shift strings:

- ``"uniform"``: images of ``x``'s shape with i.i.d. ``U[lo, hi]`` pixels (the level is
  not used);
- ``"gaussian"``: ``clip(N(0.5, sigma^2))`` pixels, ``sigma = level`` (``0.25`` when the
  level is 0);
- ``"corruption/<name>"``: ``robustlab.corruptions.corrupt(x, name, severity=level)``
  (Hendrycks & Dietterich 2019), imported when used;
- ``"adversarial/<norm>"``: a robustlab attack (default ``pgd``, 20 steps) at
  ``eps = level`` (norm ``linf``, ``l2`` or ``l1``) on the classifier alone;
- ``"adaptive/<norm>"``: :class:`~robustlab.detect.adaptive.AdaptivePGD` on the
  classifier and the fitted detector together (Carlini & Wagner 2017; Tramèr et al. 2020).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn

from robustlab.attacks.engine import eval_mode, model_bounds, model_device
from robustlab.errors import ConfigError, UnknownNameError
from robustlab.registry import close_matches
from robustlab.validation import check_float, check_inputs, check_int

if TYPE_CHECKING:
    from robustlab.detect.base import Detector

NOISE_SHIFTS = ("uniform", "gaussian")
NORMS = ("linf", "l2", "l1")
#: every shift string pattern (``<name>``: a corruption name; ``<norm>``: one of NORMS)
SHIFTS = (*NOISE_SHIFTS, "corruption/<name>", "adversarial/<norm>", "adaptive/<norm>")
DEFAULT_GAUSSIAN_STD = 0.25


class ShiftedInputs(NamedTuple):
    """The out samples (same shape, device and dtype as ``x``); for adversarial shifts
    also ``success`` (the attack broke the point) and ``clean_correct`` (the model
    classified the clean point correctly), per point; None otherwise."""

    x: torch.Tensor
    success: torch.Tensor | None = None
    clean_correct: torch.Tensor | None = None


def _examples() -> list[str]:
    return [*NOISE_SHIFTS, *(f"adversarial/{n}" for n in NORMS), *(f"adaptive/{n}" for n in NORMS),
            "corruption/gaussian_noise", "corruption/fog"]


def parse_shift(shift: str) -> tuple[str, str]:
    """``(kind, argument)`` of a shift string, e.g. ``("adversarial", "linf")``; unknown
    shifts raise :class:`UnknownNameError` with close matches."""
    if not isinstance(shift, str):
        raise UnknownNameError(f"a shift is a string such as 'adversarial/linf', got {shift!r}.")
    s = shift.strip().lower()
    kind, _, arg = s.partition("/")
    if kind in NOISE_SHIFTS and not arg:
        return kind, ""
    if kind in ("adversarial", "adaptive") and arg in NORMS:
        return kind, arg
    if kind == "corruption" and arg:
        from robustlab.corruptions import available as corruption_names

        names = corruption_names()
        if arg.replace("-", "_") in [n.replace("-", "_") for n in names]:
            return kind, arg
        near = close_matches(arg, names)
        hint = f" Did you mean {', '.join(repr('corruption/' + m) for m in near)}?" if near else ""
        raise UnknownNameError(
            f"unknown corruption {arg!r} in shift {shift!r}.{hint} Available: {', '.join(names)}."
        )
    near = close_matches(s, _examples())
    hint = f" Did you mean {', '.join(repr(m) for m in near)}?" if near else ""
    raise UnknownNameError(
        f"unknown shift {shift!r}.{hint} Shifts: {', '.join(SHIFTS)} (norms: {', '.join(NORMS)})."
    )


def _noise(kind: str, x: torch.Tensor, level: float, generator: torch.Generator, bounds: tuple[float, float]) -> torch.Tensor:
    lo, hi = bounds
    g_dev = generator.device
    dt = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    if kind == "uniform":
        u = torch.rand(tuple(x.shape), generator=generator, device=g_dev, dtype=dt)
        return (lo + (hi - lo) * u).to(device=x.device, dtype=x.dtype)
    std = DEFAULT_GAUSSIAN_STD if level == 0 else check_float(level, "gaussian std (level)", low=0.0, low_open=True)
    z = torch.randn(tuple(x.shape), generator=generator, device=g_dev, dtype=dt)
    return (0.5 + std * z).clamp(lo, hi).to(device=x.device, dtype=x.dtype)


def shifted_inputs(
    shift: str,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    level: float,
    *,
    generator: torch.Generator,
    detector: Detector | None = None,
    batch_size: int = 256,
    attack: str = "pgd",
    attack_params: Mapping[str, Any] | None = None,
    lam: float = 1.0,
    loss: str = "margin",
    kappa: float = 1.0,
    steps: int = 20,
    threshold: float | None = None,
    selective: bool = True,
) -> ShiftedInputs:
    """The out samples of ``shift`` at ``level`` for the in points ``(x, y)``.

    ``generator`` drives every random draw (noise, corruption randomness, random starts).
    Adversarial shifts run in batches of ``batch_size`` and return ``success`` and
    ``clean_correct`` masks (see :class:`ShiftedInputs`).

    ``"adversarial/<norm>"``: ``attacks.create(attack, **attack_params)`` (default
    ``pgd`` with ``steps=20``) at ``ThreatModel(norm, level)``.

    ``"adaptive/<norm>"``: :class:`~robustlab.detect.adaptive.AdaptivePGD` with
    ``detector`` (fitted; required), ``lam``, ``loss``, ``kappa``, ``steps``; its
    ``score_scale`` is the standard deviation of the detector's scores on the clean
    correctly classified points and its ``threshold`` (default) the detector's operating
    threshold, the score that keeps 95% of those points.
    """
    kind, arg = parse_shift(shift)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    bounds = model_bounds(model)
    check_inputs(x, bounds=bounds)
    level = float(level)
    if not isinstance(generator, torch.Generator):
        raise ConfigError("shifted_inputs needs generator=torch.Generator().manual_seed(seed).")
    if kind in NOISE_SHIFTS:
        return ShiftedInputs(_noise(kind, x, level, generator, bounds))
    if kind == "corruption":
        from robustlab.corruptions import corrupt

        if not level.is_integer():
            raise ConfigError(f"corruption levels are severities 1..5, got {level!r}.")
        return ShiftedInputs(corrupt(x, arg, int(level), generator=generator))
    from robustlab.attacks import create as create_attack
    from robustlab.attacks.threat import ThreatModel

    threat = ThreatModel(arg, check_float(level, "eps (level)", low=0.0, low_open=True))
    if kind == "adversarial":
        params = dict(attack_params) if attack_params is not None else ({"steps": steps} if attack == "pgd" else {})
        atk = create_attack(attack, **params)
    else:
        if detector is None:
            raise ConfigError(
                f"shift {shift!r} attacks the detector too: pass detector=<a fitted detector>."
            )
        detector._check_fitted()
        from robustlab.detect.adaptive import AdaptivePGD
        from robustlab.detect.metrics import threshold_at_tpr

        dev = model_device(model) or x.device
        with eval_mode(model), torch.no_grad():
            logits = torch.cat([model(x[i : i + batch_size].to(dev)) for i in range(0, len(x), batch_size)])
        correct = (logits.argmax(1).cpu() == y.cpu().long())
        s = detector.score(model, x[correct.to(x.device)], batch_size=batch_size).double().cpu()
        scale = float(s.std()) if len(s) > 1 and float(s.std()) > 0 else 1.0
        if threshold is None and len(s):
            threshold = threshold_at_tpr(s, 0.95)
        atk = AdaptivePGD(detector, lam=lam, steps=steps, loss=loss, kappa=kappa,
                          threshold=threshold, score_scale=scale, selective=selective)
    xs, succ, corr = [], [], []
    dev = model_device(model) or x.device
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size].to(dev)
        yb = y[i : i + batch_size].to(dev).long()
        res = atk(model, xb, yb, threat, generator=generator)
        xs.append(res.x_adv.to(x.device))
        succ.append(res.success.cpu())
        corr.append(res.clean_correct.cpu())
    if not xs:
        empty = torch.zeros(0, dtype=torch.bool)
        return ShiftedInputs(x.clone(), empty, empty)
    return ShiftedInputs(torch.cat(xs), torch.cat(succ), torch.cat(corr))


__all__ = ["NOISE_SHIFTS", "NORMS", "SHIFTS", "ShiftedInputs", "parse_shift", "shifted_inputs"]
