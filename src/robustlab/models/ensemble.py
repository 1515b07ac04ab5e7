"""An ensemble of classifiers that every attack, certificate and report sees as one model.

>>> from robustlab import models
>>> ens = models.create("ensemble", num_classes=10, in_channels=1, input_size=28,
...                     member="mnist_net", size=3, combine="logits")
>>> ens.input_shape, ens.num_classes, len(ens.members)
((1, 28, 28), 10, 3)
>>> ens2 = models.Ensemble([net_a, net_b])            # doctest: +SKIP  (trained zoo models)
>>> models.save_model(ens2, "ens.safetensors")        # doctest: +SKIP
>>> models.load_model("ens.safetensors")              # doctest: +SKIP  (an Ensemble again)

In a config: ``model: {name: ensemble, params: {member: mnist_net, size: 3, combine: logits}}``
(:func:`robustlab.models.for_dataset` fills the shapes and the normalisation).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.errors import ConfigError, ShapeMismatchError
from robustlab.models.layers import INPUT_BOUNDS
from robustlab.models.registry import models
from robustlab.validation import check_choice, check_int

COMBINE = ("logits", "probs", "votes")
_COMMON = ("num_classes", "in_channels", "input_size", "mean", "std")
#: votes break ties by this multiple of the averaged probabilities (< 1, so it never
#: overturns a difference of one vote)
VOTE_TIE_BREAK = 0.5


class Ensemble(nn.Module):
    """``M`` classifiers combined into one output, a model like any other.

    Parameters
    ----------
    members:
        The classifiers (``nn.Module``), at least one. Each must have ``num_classes`` and
        ``input_shape`` attributes (every zoo model has them), and all must agree on them
        and on ``input_bounds``; otherwise :class:`ConfigError` /
        :class:`ShapeMismatchError` say which member differs.
    combine:
        ``"logits"`` (default): the mean of the members' logits,
        ``(1/M) sum_m z_m(x)``. Written as sums and one division by a constant, so the
        bound graph of :mod:`robustlab.certify` (IBP, CROWN) handles it.

        ``"probs"``: ``log((1/M) sum_m softmax(z_m(x)))``, the log of the averaged
        probabilities: the combination of DVERGE's official ``models/ensemble.py``
        (Yang et al. 2020, zjysteven/DVERGE), which clamps the average at ``1e-40``
        before the log; we compute it as ``logsumexp_m(log_softmax(z_m)) - log M``,
        equal wherever the average exceeds ``1e-40`` and finite everywhere. The outputs
        are log-probabilities, so attack losses (CE, DLR, margins) apply unchanged.

        ``"votes"``: majority vote. **Votes are not differentiable** (the count of
        ``argmax`` decisions is piecewise constant), so the output follows a documented
        straight-through rule: its *value* is ``v_c + 0.5 * p_c`` per class ``c``, where
        ``v_c`` is the number of members predicting ``c`` and ``p`` the softmax of the
        averaged logits (the tie-break term is below one vote, so ``argmax`` is the
        majority vote, ties going to the class with the larger averaged probability);
        its *gradient* is the gradient of the averaged logits (``value.detach() +
        avg - avg.detach()``). Every gradient-based attack therefore attacks the
        averaged logits (BPDA, Athalye, Carlini & Wagner 2018, with the identity as the
        surrogate's derivative) while success is judged by the votes.
        ``differentiable`` is ``False`` for this mode so that callers can say so.

    Attributes
    ----------
    members: ``nn.ModuleList`` of the classifiers (state-dict keys ``members.{i}.…``).
    num_classes, input_shape, input_bounds: the members' common values.
    robustlab_config: ``{"name": "ensemble", "params": ...}`` when every member is a
        zoo model (has a ``robustlab_config``), so :func:`robustlab.models.save_model`
        and :func:`~robustlab.models.load_model` round-trip it; ``None`` otherwise (save
        with a ``factory=`` then).
    """

    def __init__(self, members: Sequence[nn.Module], combine: str = "logits") -> None:
        super().__init__()
        if isinstance(members, nn.Module) or not isinstance(members, Sequence) or len(members) == 0:
            raise ConfigError(
                "an Ensemble needs a non-empty list of member models, e.g. "
                "Ensemble([net_a, net_b, net_c]) or models.create('ensemble', member='mnist_net', size=3)."
            )
        for i, m in enumerate(members):
            if not isinstance(m, nn.Module):
                raise ConfigError(f"ensemble member {i} is a {type(m).__name__}, not a torch.nn.Module.")
        self.combine = check_choice(combine, "ensemble combine", COMBINE)
        self.members = nn.ModuleList(members)
        self.num_classes, self.input_shape, self.input_bounds = _common_attributes(list(members))
        self.robustlab_config: dict[str, Any] | None = _config_of(list(members), self.combine)

    @property
    def size(self) -> int:
        """Number of members ``M``."""
        return len(self.members)

    @property
    def differentiable(self) -> bool:
        """Whether the output's gradient is its own (``False`` for ``combine="votes"``,
        whose gradient is the averaged logits', see the class docstring)."""
        return self.combine != "votes"

    def member_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each member's logits for ``x``."""
        return [m(x) for m in self.members]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.combine == "logits":
            out = self.members[0](x)
            for m in self.members[1:]:
                out = out + m(x)
            return out / len(self.members)
        logits = torch.stack(self.member_logits(x))  # (M, N, C)
        if self.combine == "probs":
            return torch.logsumexp(F.log_softmax(logits, dim=-1), dim=0) - math.log(len(self.members))
        avg = logits.mean(0)
        with torch.no_grad():
            counts = F.one_hot(logits.argmax(-1), logits.shape[-1]).sum(0).to(avg.dtype)
            value = counts + VOTE_TIE_BREAK * avg.softmax(-1)
        return value + (avg - avg.detach())

    def extra_repr(self) -> str:
        return f"combine={self.combine!r}, size={len(self.members)}"


def _common_attributes(members: list[nn.Module]) -> tuple[int, tuple[int, ...], tuple[float, float]]:
    values = []
    for i, m in enumerate(members):
        nc = getattr(m, "num_classes", None)
        shape = getattr(m, "input_shape", None)
        if nc is None or shape is None:
            raise ConfigError(
                f"ensemble member {i} ({type(m).__name__}) has no num_classes/input_shape "
                f"attributes; build members with robustlab.models.create (or set both attributes)."
            )
        bounds = tuple(float(b) for b in getattr(m, "input_bounds", INPUT_BOUNDS))
        values.append((int(nc), tuple(int(s) for s in shape), bounds))
    first = values[0]
    for i, (nc, shape, bounds) in enumerate(values[1:], start=1):
        if nc != first[0]:
            raise ConfigError(
                f"ensemble members disagree on num_classes: member 0 has {first[0]}, member {i} "
                f"has {nc}. Every member must classify the same classes."
            )
        if shape != first[1]:
            raise ShapeMismatchError(
                f"ensemble members disagree on input_shape: member 0 takes {first[1]}, member "
                f"{i} takes {shape}. Every member must take the same inputs."
            )
        if bounds != first[2]:
            raise ConfigError(
                f"ensemble members disagree on input_bounds: member 0 {first[2]}, member {i} {bounds}."
            )
    return first[0], first[1], (first[2][0], first[2][1])


def _config_of(members: list[nn.Module], combine: str) -> dict[str, Any] | None:
    """The registry config rebuilding these members: ``member``/``size``/``member_params``
    when all members share one config, else the list ``members`` of their configs."""
    configs = [getattr(m, "robustlab_config", None) for m in members]
    if not all(isinstance(c, Mapping) and "name" in c and "params" in c for c in configs):
        return None
    first = configs[0]
    assert first is not None
    common = {k: first["params"].get(k) for k in _COMMON}
    params: dict[str, Any] = {**common, "combine": combine}
    if all(c == first for c in configs):
        rest = {k: v for k, v in first["params"].items() if k not in _COMMON}
        params.update(member=first["name"], size=len(members), member_params=rest, members=None)
    else:
        params.update(member=None, size=len(members), member_params=None,
                      members=[{"name": c["name"], "params": dict(c["params"])} for c in configs])  # type: ignore[index]
    return {"name": "ensemble", "params": params}


@models.register("ensemble")
def build_ensemble(
    *,
    num_classes: int,
    in_channels: int,
    input_size: tuple[int, int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    member: str | None = None,
    size: int | None = None,
    combine: str = "logits",
    member_params: Mapping[str, Any] | None = None,
    members: Sequence[Mapping[str, Any]] | None = None,
) -> Ensemble:
    """The ``ensemble`` entry of the model zoo: ``size`` fresh ``member`` models (each
    built with ``models.create(member, num_classes=..., in_channels=..., input_size=...,
    mean=..., std=..., **member_params)``, one after the other from the global RNG, so
    their initialisations differ), or the members described by ``members`` (a list of
    ``{"name", "params"}`` zoo configs, what :class:`Ensemble` records for members that
    differ). ``size`` defaults to 3 for ``member`` (DVERGE's official ``--model-num``) and
    must equal ``len(members)`` when given with ``members``. ``combine`` as in
    :class:`Ensemble`.
    """
    from robustlab.models.registry import create

    if (member is None) == (members is None):
        raise ConfigError(
            "the ensemble model needs either member='<zoo model name>' (with size=) or "
            "members=[{name: ..., params: {...}}, ...], and not both."
        )
    # registry.create may call us under a device context (``device="meta"`` when load_model
    # checks a file's shapes); members are built on that device, their parameters checked
    # on the CPU
    here = torch.empty(0).device
    device = None if here.type == "cpu" else here

    def make(name: str, **params: Any) -> nn.Module:
        with torch.device("cpu"):
            return create(name, device=device, **params)

    built: list[nn.Module] = []
    if member is not None:
        if isinstance(member, str) and models.canonical(member) == "ensemble":
            raise ConfigError("an ensemble's members cannot be ensembles themselves.")
        n = 3 if size is None else check_int(size, "ensemble size", minimum=1)
        extra = dict(member_params or {})
        clash = sorted(set(extra) & set(_COMMON))
        if clash:
            raise ConfigError(
                f"member_params may not set {clash}: the ensemble passes num_classes, in_channels, "
                f"input_size, mean and std to every member."
            )
        for _ in range(n):
            built.append(make(member, num_classes=num_classes, in_channels=in_channels,
                              input_size=input_size, mean=mean, std=std, **extra))
    else:
        assert members is not None
        if isinstance(members, (str, Mapping)) or len(members) == 0:
            raise ConfigError("ensemble members must be a non-empty list of {name: ..., params: {...}} configs.")
        if size is not None and check_int(size, "ensemble size", minimum=1) != len(members):
            raise ConfigError(f"ensemble size={size} but {len(members)} member configs were given.")
        if member_params:
            raise ConfigError("member_params only applies with member=; put parameters in each members[i].params.")
        for i, cfg in enumerate(members):
            if not (isinstance(cfg, Mapping) and isinstance(cfg.get("name"), str)
                    and isinstance(cfg.get("params", {}), Mapping)):
                raise ConfigError(f"ensemble members[{i}] must be {{name: ..., params: {{...}}}}, got {cfg!r}.")
            built.append(make(cfg["name"], **dict(cfg.get("params", {}))))
    ens = Ensemble(built, combine=combine)
    if (ens.num_classes, ens.input_shape[0]) != (int(num_classes), int(in_channels)):
        raise ConfigError(
            f"the ensemble's members take {ens.input_shape} and give {ens.num_classes} classes, but "
            f"the ensemble was declared with in_channels={in_channels}, num_classes={num_classes}."
        )
    return ens


__all__ = ["COMBINE", "Ensemble", "VOTE_TIE_BREAK", "build_ensemble"]
