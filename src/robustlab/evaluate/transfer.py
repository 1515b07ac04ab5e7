"""Transfer evaluation: craft adversarial examples on source models, score them on
target models, and report the source x target transfer-success matrix.

>>> from robustlab.evaluate.transfer import transfer_matrix
>>> m = transfer_matrix({"erm": erm, "pgd-at": at}, {"erm": erm, "pgd-at": at, "trades": tr},
...                     x, y, attack="mi-fgsm", threat=ThreatModel("linf", 0.3))
>>> m.success["erm"]["trades"], m.white_box["trades"], m.flags["trades"]
>>> from robustlab.report.transfer import transfer_text; print(transfer_text(m.to_dict()))

The protocol:

- **crafting** happens once per source, on every point (the attack's training entry
  point :meth:`~robustlab.attacks.Attack.generate`: all points, all iterations, the final
  iterate), in batches of ``batch_size``. A source is a model, or a list of models (an
  ensemble of surrogates for ``cwa`` / ``mi-fgsm``, which then craft on all of them).
  Every source crafts with a fresh generator seeded ``derive_seed("transfer", seed)``, so
  two identical sources craft identical examples;
- **success** on a target counts the points the target classifies correctly when clean
  and misclassifies after the attack; the rate divides by the target's clean-correct
  points (the usual "attack success rate" of the transfer literature);
- **white-box diagonal**: every target is also attacked with the same attack crafted on
  itself (reusing its source run when the same model object is a source under the same
  name), so each column can be read against what the attack does with full access;
- **audit**: a target on which the best transfer source breaks more of its
  clean-correct points than its own white-box attack (by more than ``flag_threshold``,
  0.2% as AutoAttack's black-box check) gets the audit's ``black-box-stronger`` flag: an
  attack that never sees the target does better than one with its gradients, the
  classic sign of gradient masking (Athalye et al. 2018; Carlini et al. 2019, "On
  Evaluating Adversarial Robustness", Sec. 4). The comparison is of rates, source by
  source, not of the union of all sources (a union of several attempts beats one
  attempt without any masking). Sources that contain the target (itself, or an ensemble
  with it as a member) are not compared: they see its gradients.

All models must share the input box, input shape and number of classes (a typed error
names the model that does not).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from robustlab.attacks import Flag, ThreatModel, attacks
from robustlab.attacks.transfer import as_surrogates, check_surrogates
from robustlab.errors import ConfigError
from robustlab.evaluate.metrics import predict_logits
from robustlab.evaluate.results import jsonable
from robustlab.seeding import derive_seed
from robustlab.validation import check_float, check_inputs, check_int, check_labels

Source = nn.Module | Sequence[nn.Module]


@dataclass
class TransferMatrix:
    """The result of :func:`transfer_matrix`.

    ``success[source][target]``: share of the target's clean-correct points that the
    examples crafted on ``source`` break (``broken`` holds the counts,
    ``clean_correct[target]`` the denominators); ``white_box[target]`` (and
    ``white_box_broken``): the same attack crafted on the target itself;
    ``flags[target]``: audit flags (``black-box-stronger``); ``seconds[source]``:
    crafting time. ``examples[source]`` keeps the crafted inputs and ``broken_mask``
    the per-point outcomes (not part of :meth:`to_dict`).
    """

    attack: str
    params: dict[str, Any]
    norm: str
    eps: float
    num_points: int
    seed: int
    sources: list[str]
    targets: list[str]
    success: dict[str, dict[str, float]]
    broken: dict[str, dict[str, int]]
    clean_correct: dict[str, int]
    white_box: dict[str, float]
    white_box_broken: dict[str, int]
    flags: dict[str, list[Flag]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    examples: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    broken_mask: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (what a store or a report keeps)."""
        return {
            "kind": "transfer",
            "attack": self.attack,
            "params": jsonable(self.params),
            "norm": self.norm,
            "eps": self.eps,
            "num_points": self.num_points,
            "seed": self.seed,
            "sources": list(self.sources),
            "targets": list(self.targets),
            "success": jsonable(self.success),
            "broken": jsonable(self.broken),
            "clean_correct": dict(self.clean_correct),
            "white_box": dict(self.white_box),
            "white_box_broken": dict(self.white_box_broken),
            "flags": {t: [f.to_dict() for f in fs] for t, fs in self.flags.items()},
            "seconds": dict(self.seconds),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TransferMatrix:
        """Rebuild a matrix from :meth:`to_dict` (without examples and masks)."""
        return cls(
            attack=str(d["attack"]), params=dict(d.get("params") or {}), norm=str(d["norm"]),
            eps=float(d["eps"]), num_points=int(d["num_points"]), seed=int(d.get("seed", 0)),
            sources=list(d["sources"]), targets=list(d["targets"]),
            success={s: dict(v) for s, v in d["success"].items()},
            broken={s: dict(v) for s, v in d["broken"].items()},
            clean_correct=dict(d["clean_correct"]), white_box=dict(d["white_box"]),
            white_box_broken=dict(d["white_box_broken"]),
            flags={t: [Flag(f["code"], f["message"], f.get("value")) for f in fs]
                   for t, fs in (d.get("flags") or {}).items()},
            seconds=dict(d.get("seconds") or {}),
        )


def _stronger_than_white_box(
    target: str, attack: str, broken: Mapping[str, int], own: int, n: int, threshold: float
) -> list[Flag]:
    """The ``black-box-stronger`` flag when the best transfer source breaks more than
    ``threshold`` of the target's clean-correct points beyond its own white-box attack."""
    if not broken or not n:
        return []
    best = max(broken, key=lambda s: broken[s])
    gain = (broken[best] - own) / n
    if gain <= threshold:
        return []
    return [Flag(
        "black-box-stronger",
        f"examples crafted on {best} without access to {target} break {100 * broken[best] / n:.1f}% of its "
        f"clean-correct points, more than {attack} with full access to {target} ({100 * own / n:.1f}%): its "
        f"gradients are likely masked or obfuscated, so white-box numbers overestimate its robustness. Use "
        f"stronger, adaptive or gradient-free attacks on it.",
        gain,
    )]


def _contains(source: Source, model: nn.Module) -> bool:
    """Whether ``source`` is ``model`` or a list holding it (such a source has white-box access)."""
    return source is model or (not isinstance(source, nn.Module) and any(m is model for m in source))


def _check_named(models: Mapping[str, Any], what: str) -> dict[str, Any]:
    if not isinstance(models, Mapping) or not models:
        raise ConfigError(
            f"{what} must be a non-empty dict of name -> model, e.g. {{'erm': model}}; got {models!r:.80}."
        )
    return {str(k): v for k, v in models.items()}


def _craft(
    source: Source,
    attack: str,
    params: dict[str, Any],
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    seed: int,
    batch_size: int,
) -> torch.Tensor:
    """Adversarial examples for every point, crafted on ``source`` (a model or a list)."""
    if isinstance(source, nn.Module):
        atk, model = attacks.create(attack, **params), source
    else:
        surrogates = as_surrogates(source)
        assert surrogates is not None
        atk, model = attacks.create(attack, surrogates=list(surrogates), **params), surrogates[0]
    g = torch.Generator(device=x.device).manual_seed(derive_seed("transfer", seed))
    out = [atk.generate(model, x[i : i + batch_size], y[i : i + batch_size], threat, generator=g)
           for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else x.clone()


def transfer_matrix(
    sources: Mapping[str, Source],
    targets: Mapping[str, nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    attack: str = "mi-fgsm",
    threat: ThreatModel | None = None,
    *,
    seed: int = 0,
    batch_size: int = 500,
    audit: bool = True,
    flag_threshold: float = 0.002,
    **params: Any,
) -> TransferMatrix:
    """Craft ``attack`` on each source once, score the examples on every target, and
    attack every target white-box with the same attack (see the module docstring).

    ``sources``: name -> model, or name -> list of models (an ensemble of surrogates,
    for the attacks that take ``surrogates``: ``mi-fgsm``, ``cwa``). ``targets``: name
    -> model. ``threat``: default L-inf 16/255 (the budget of the transfer papers on
    ImageNet). ``params``: the attack's parameters (``steps=...``; not ``surrogates``,
    which the sources give). ``audit``: add the ``black-box-stronger`` flags, with
    ``flag_threshold`` the least gain (share of clean-correct points) that flags.
    Returns a :class:`TransferMatrix`.
    """
    srcs = _check_named(sources, "sources")
    tgts = _check_named(targets, "targets")
    threat = ThreatModel("linf", 16 / 255) if threat is None else threat
    if not isinstance(threat, ThreatModel):
        raise ConfigError(f"threat must be one ThreatModel, e.g. ThreatModel('linf', 0.3); got {threat!r}.")
    if "surrogates" in params:
        raise ConfigError("transfer_matrix takes the surrogates from sources=; do not pass surrogates=.")
    attacks.get(attack)  # an unknown name: UnknownNameError with close matches
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    flag_threshold = check_float(flag_threshold, "flag_threshold", low=0, high=1, low_open=False)
    first_name, first = next(iter(tgts.items()))
    if not isinstance(first, nn.Module):
        raise ConfigError(f"target {first_name!r} is a {type(first).__name__}, not a torch model.")
    check_inputs(x, bounds=getattr(first, "input_bounds", (0.0, 1.0)))
    # every model against the first target: same box, shape and classes
    named: list[tuple[str, nn.Module]] = []
    for name, m in tgts.items():
        if not isinstance(m, nn.Module):
            raise ConfigError(f"target {name!r} is a {type(m).__name__}, not a torch model.")
        named.append((name, m))
    for name, src in srcs.items():
        members = as_surrogates(src)
        if members is None:
            raise ConfigError(f"source {name!r} is None; give a model or a list of models.")
        named += [(name if len(members) == 1 else f"{name}[{i}]", m) for i, m in enumerate(members)]
    check_surrogates([m for _, m in named], first, x, names=[n for n, _ in named],
                     model_name=f"target {first_name!r}")
    logits = predict_logits(first, x, batch_size=batch_size)
    check_labels(y, logits.shape[1], n=len(x))
    y = y.to(x.device).long()

    examples: dict[str, torch.Tensor] = {}
    seconds: dict[str, float] = {}
    for name, src in srcs.items():
        t0 = time.perf_counter()
        examples[name] = _craft(src, attack, params, x, y, threat, seed, batch_size)
        seconds[name] = time.perf_counter() - t0

    def wrong(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        return predict_logits(model, inputs, batch_size=batch_size).argmax(1) != y

    clean_correct: dict[str, int] = {}
    broken: dict[str, dict[str, int]] = {s: {} for s in srcs}
    success: dict[str, dict[str, float]] = {s: {} for s in srcs}
    masks: dict[str, dict[str, torch.Tensor]] = {s: {} for s in srcs}
    white_box: dict[str, float] = {}
    white_broken: dict[str, int] = {}
    flags: dict[str, list[Flag]] = {}
    for tname, target in tgts.items():
        correct = ~wrong(target, x)
        n_ok = int(correct.sum())
        clean_correct[tname] = n_ok

        def rate(k: int, n: int = n_ok) -> float:
            return k / n if n else float("nan")

        for sname in srcs:
            mask = correct & wrong(target, examples[sname])
            masks[sname][tname] = mask
            broken[sname][tname] = int(mask.sum())
            success[sname][tname] = rate(int(mask.sum()))
        if tname in srcs and srcs[tname] is target:
            own = masks[tname][tname]
        else:
            t0 = time.perf_counter()
            x_own = _craft(target, attack, params, x, y, threat, seed, batch_size)
            seconds[f"white-box:{tname}"] = time.perf_counter() - t0
            own = correct & wrong(target, x_own)
        white_broken[tname] = int(own.sum())
        white_box[tname] = rate(int(own.sum()))
        if audit:
            flags[tname] = _stronger_than_white_box(
                tname, attack, {s: broken[s][tname] for s in srcs if not _contains(srcs[s], target)},
                int(own.sum()), n_ok, flag_threshold)
    return TransferMatrix(
        attack=attacks.canonical(attack), params=dict(params), norm=threat.norm, eps=threat.eps,
        num_points=len(x), seed=seed, sources=list(srcs), targets=list(tgts), success=success,
        broken=broken, clean_correct=clean_correct, white_box=white_box, white_box_broken=white_broken,
        flags=flags, seconds=seconds, examples=examples, broken_mask=masks,
    )


__all__ = ["TransferMatrix", "transfer_matrix"]
