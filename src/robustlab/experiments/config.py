"""The experiment config: data, noise, model, training, evaluation, seed.

Configs load from YAML and accept dotted ``key=value`` overrides (values parsed as
YAML, so ``noise.rate=0.4``, ``train.epochs=20``, ``evaluate.attacks[0].eps=[0.1,0.2]``
and ``noise=null`` all work). Unknown keys are refused with the closest valid names.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from robustlab.errors import ConfigError
from robustlab.registry import close_matches


class _Loader(yaml.SafeLoader):
    """YAML's safe loader that also reads ``7e-1`` and ``1e3`` as numbers: YAML 1.1 (which
    PyYAML follows) wants a dot in a float, so ``q: 7e-1`` would silently be a string."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def yaml_load(text: str) -> Any:
    """Parse YAML safely (no arbitrary objects), reading ``7e-1`` as the number 0.7."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


def config_hash(config: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of a run's config: the run's id in the results store."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    """Which dataset (a name from ``robustlab ls datasets``) and how to read it."""

    name: str = "digits"
    root: str | None = None
    download: bool = False
    options: dict[str, Any] = Field(default_factory=dict)
    val_fraction: float = Field(0.0, ge=0.0, lt=1.0)


class NoiseConfig(_Strict):
    """Label noise applied to the *training* labels (see ``robustlab.data.noise``)."""

    kind: str = "symmetric"
    rate: float | None = Field(None, ge=0.0, lt=1.0)
    exact: bool = False
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _rate_given(self) -> NoiseConfig:
        if self.rate is None and self.kind not in ("matrix", "transition"):
            raise ValueError(
                f"noise.rate is required for {self.kind!r} noise (e.g. noise.rate=0.4); "
                f"for clean labels leave the noise section out (noise=null)"
            )
        return self


class ModelConfig(_Strict):
    name: str = "mlp"
    params: dict[str, Any] = Field(default_factory=dict)


class LossConfig(_Strict):
    """A loss from ``robustlab ls losses``; ``preset`` (e.g. ``cifar10``) fills its params
    from the official configs (``robustlab.losses.presets()``); explicit params win."""

    name: str = "ce"
    params: dict[str, Any] = Field(default_factory=dict)
    preset: str | None = None

    def resolved_params(self) -> dict[str, Any]:
        if self.preset is None:
            return dict(self.params)
        from robustlab.losses import preset

        return {**preset(self.name, self.preset), **self.params}


# settings of a Trainer that are not part of a run's config: the run supplies them
_TRAINER_RUNTIME = frozenset({"self", "model", "objective", "seed", "checkpoint_dir", "progress", "callbacks"})


def _config_type(annotation: Any) -> Any:
    """The config field type of a Trainer parameter: ``torch.device`` is written as a
    string, sequences as lists, integers strictly (``True`` and ``2.5`` are not epochs)."""
    import collections.abc as cabc
    import types
    import typing

    import torch
    from pydantic import StrictInt

    origin = typing.get_origin(annotation)
    if annotation is torch.device:
        return str
    if annotation is int:
        return StrictInt
    if origin in (typing.Union, types.UnionType):
        args = tuple(dict.fromkeys(_config_type(a) for a in typing.get_args(annotation)))
        return typing.Union[args] if len(args) > 1 else args[0]  # noqa: UP007
    if origin in (cabc.Sequence, list, tuple):
        (item, *_rest) = typing.get_args(annotation) or (Any,)
        return list[_config_type(item)]  # type: ignore[misc]
    if origin in (cabc.Mapping, dict):
        return dict[str, Any]
    return annotation


def trainer_settings() -> dict[str, tuple[Any, Any]]:
    """``{name: (type, default)}`` of every Trainer keyword parameter a config sets: the
    single source of the training settings and their defaults (``robustlab.train.Trainer``)."""
    import inspect
    import typing

    from robustlab.train.trainer import Trainer

    hints = typing.get_type_hints(Trainer.__init__)
    out: dict[str, tuple[Any, Any]] = {}
    for name, p in inspect.signature(Trainer.__init__).parameters.items():
        if name in _TRAINER_RUNTIME or p.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        default = list(p.default) if isinstance(p.default, tuple) else p.default
        out[name] = (_config_type(hints[name]), default)
    return out


class _TrainSection(_Strict):
    """The ``train`` section: the objective and loss by name (``robustlab ls objectives`` /
    ``losses``) plus every keyword parameter of :class:`robustlab.train.Trainer` with the
    Trainer's own defaults (see :func:`trainer_settings`; the Trainer checks the values)."""

    objective: str = "erm"
    objective_params: dict[str, Any] = Field(default_factory=dict)
    objective_preset: str | None = None
    loss: LossConfig = Field(default_factory=LossConfig)

    @field_validator("val_eps", mode="before", check_fields=False)
    @classmethod
    def _parse_val_eps(cls, v: Any) -> Any:
        from robustlab.attacks.threat import parse_eps

        return None if v is None else parse_eps(v)

    def resolved_objective_params(self) -> dict[str, Any]:
        """``objective_params`` over the published preset ``objective_preset`` (if any)."""
        if self.objective_preset is None:
            return dict(self.objective_params)
        from robustlab.losses import preset

        return {**preset(self.objective, self.objective_preset), **self.objective_params}

    def trainer_kwargs(self) -> dict[str, Any]:
        """The Trainer keyword arguments of this section."""
        return {name: getattr(self, name) for name in trainer_settings()}


if TYPE_CHECKING:

    class TrainConfig(_TrainSection):
        def __getattr__(self, name: str) -> Any: ...

else:
    TrainConfig = create_model(
        "TrainConfig",
        __base__=_TrainSection,
        __module__=__name__,
        __doc__=_TrainSection.__doc__,
        **{name: (typ, default) for name, (typ, default) in trainer_settings().items()},
    )


class AttackConfig(_Strict):
    """One attack evaluated at one or several eps (fractions such as ``8/255`` allowed)."""

    name: str = "pgd"
    norm: str = "linf"
    eps: list[float] = Field(default_factory=lambda: [0.1])
    params: dict[str, Any] = Field(default_factory=dict)
    subset: int | None = Field(None, ge=1)
    audit: bool | Literal["cheap"] = True

    @field_validator("eps", mode="before")
    @classmethod
    def _parse_eps(cls, v: Any) -> Any:
        from robustlab.attacks.threat import parse_eps

        items = v if isinstance(v, (list, tuple)) else [v]
        return [parse_eps(e) for e in items]


    def measurement(self) -> Any:
        """This attack as a :class:`robustlab.evaluate.Measurement`."""
        from robustlab.evaluate import Measurement

        return Measurement(self.name, self.norm, self.eps, dict(self.params), self.subset, self.audit)


class CertifyConfig(_Strict):
    """One certificate at one or several radii: ``{method: smoothing, radii: [0, 0.25, 0.5],
    params: {sigma: 0.25, n: 100000}, subset: 100}`` (``robustlab ls certifiers``; the
    radii are in the input space, like eps)."""

    method: str = "smoothing"
    norm: str = "l2"
    radii: list[float] = Field(default_factory=lambda: [0.0, 0.25, 0.5])
    params: dict[str, Any] = Field(default_factory=dict)
    subset: int | None = Field(None, ge=1)

    @field_validator("radii", mode="before")
    @classmethod
    def _parse_radii(cls, v: Any) -> Any:
        return AttackConfig._parse_eps(v)

    def measurement(self) -> Any:
        """This certificate as a :class:`robustlab.evaluate.Measurement` of kind ``certify``."""
        from robustlab.evaluate import Measurement

        return Measurement(self.method, self.norm, self.radii, dict(self.params), self.subset, False, kind="certify")


class CorruptionsConfig(_Strict):
    """Common corruptions at severities: ``{names: common, severities: [1, 2, 3, 4, 5],
    subset: 500, baseline: ce/clean}`` (``names``: ``common`` (the 15 of Hendrycks &
    Dietterich), ``extra``, ``all`` or a list of names, ``robustlab ls corruptions``;
    ``baseline``: the name or id of a stored run with the same corruptions whose errors
    normalise the corruption error and mCE)."""

    names: list[str] | str = "common"
    severities: list[int] = Field(default_factory=lambda: [1, 2, 3, 4, 5])
    subset: int | None = Field(None, ge=1)
    baseline: str | None = None

    def measurements(self) -> list[Any]:
        """One measurement of kind ``corruption`` per corruption."""
        from robustlab.evaluate.shifts import corruption_measurements

        return corruption_measurements(self.names, self.severities, subset=self.subset)


class DetectConfig(_Strict):
    """One detector against one shift at one or several levels: ``{method: mahalanobis,
    shift: adversarial/linf, levels: [0.1], params: {}, shift_params: {attack: pgd}}``
    (``robustlab ls detectors``; shifts: ``uniform``, ``gaussian`` (level: the noise std),
    ``corruption/<name>`` (level: the severity), ``adversarial/<norm>`` and
    ``adaptive/<norm>`` (level: eps; the adaptive attack also evades the detector)). The
    detector is fitted on the run's training split."""

    method: str = "mahalanobis"
    shift: str = "uniform"
    levels: list[float] = Field(default_factory=lambda: [0.0])
    params: dict[str, Any] = Field(default_factory=dict)
    shift_params: dict[str, Any] = Field(default_factory=dict)
    subset: int | None = Field(None, ge=1)

    @field_validator("levels", mode="before")
    @classmethod
    def _parse_levels(cls, v: Any) -> Any:
        return AttackConfig._parse_eps(v)

    def measurement(self) -> Any:
        """This detector as a :class:`robustlab.evaluate.Measurement` of kind ``detect``."""
        from robustlab.evaluate import Measurement

        params = {**self.params, **({"shift_params": dict(self.shift_params)} if self.shift_params else {})}
        return Measurement(self.method, self.shift, self.levels, params, self.subset, False, kind="detect")


class EvaluateConfig(_Strict):
    """Attacks, certificates, corruptions and detectors run on the final model; ``per_epoch_test``
    also records the clean test accuracy after every epoch (watched only, never used for a
    decision), so runs report last-epoch and best-epoch test accuracy."""

    attacks: list[AttackConfig] = Field(default_factory=list)
    certify: list[CertifyConfig] = Field(default_factory=list)
    corruptions: CorruptionsConfig | None = None
    detect: list[DetectConfig] = Field(default_factory=list)
    batch_size: int = Field(512, ge=1)
    per_epoch_test: bool = True

    def measurements(self) -> list[Any]:
        """Every attack, certificate and corruption, as measurements of the evaluation path (in order)."""
        out = [a.measurement() for a in self.attacks] + [c.measurement() for c in self.certify]
        out += self.corruptions.measurements() if self.corruptions is not None else []
        return out + [d.measurement() for d in self.detect]


class ExperimentConfig(_Strict):
    """A whole run. Its hash (of the resolved config) keys the run in the results store."""

    name: str = ""
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    noise: NoiseConfig | None = None
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)

    def to_dict(self) -> dict[str, Any]:
        out = self.model_dump(mode="json")
        for key in ("certify", "corruptions", "detect"):  # configs without them keep their hash
            if not out["evaluate"][key]:
                del out["evaluate"][key]
        if out["train"].get("augment") is None:  # likewise configs without augmentation
            out["train"].pop("augment", None)
        return out

    def hash(self) -> str:
        """sha256 of the canonical JSON of the resolved config."""
        return config_hash(self.to_dict())

    def label(self) -> str:
        """The run's name, or one built from its main choices."""
        if self.name:
            return self.name
        if self.noise is None or self.noise.rate == 0:
            noise = "clean"
        else:
            noise = self.noise.kind if self.noise.rate is None else f"{self.noise.kind}{self.noise.rate:g}"
        return f"{self.data.name}/{self.model.name}/{self.train.objective}-{self.train.loss.name}/{noise}"


# -- building configs --------------------------------------------------------------------
_TOKEN = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _path_tokens(key: str) -> list[str | int]:
    tokens: list[str | int] = []
    pos = 0
    for m in _TOKEN.finditer(key):
        if m.start() != pos and key[pos:m.start()] != ".":
            raise ConfigError(f"cannot read override key {key!r}; write it like train.epochs or evaluate.attacks[0].eps.")
        tokens.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
        pos = m.end()
    if not tokens:
        raise ConfigError(f"empty override key in {key!r}.")
    return tokens


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set ``tree[a][b][0][c] = value`` for ``key = "a.b[0].c"`` (creating dicts)."""
    tokens = _path_tokens(key)
    node: Any = tree
    for i, tok in enumerate(tokens[:-1]):
        nxt = tokens[i + 1]
        if isinstance(tok, int):
            if not isinstance(node, list) or tok >= len(node):
                raise ConfigError(f"override {key!r}: index [{tok}] does not exist.")
            node = node[tok]
            continue
        if node.get(tok) is None:
            node[tok] = [] if isinstance(nxt, int) else {}
        node = node[tok]
    last = tokens[-1]
    if isinstance(last, int):
        if not isinstance(node, list) or last >= len(node):
            raise ConfigError(f"override {key!r}: index [{last}] does not exist.")
        node[last] = value
    else:
        node[last] = value


def parse_overrides(items: Iterable[str]) -> list[tuple[str, Any]]:
    """Parse ``["train.epochs=5", "noise=null"]`` into ``[(key, value), ...]`` (YAML values)."""
    out = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. train.epochs=5).")
        key, raw = item.split("=", 1)
        try:
            value = yaml_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        out.append((key.strip(), value))
    return out


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge ``update`` into a copy of ``base`` (None replaces).

    A section that names a different registry entry than the base (``model: {name:
    mnist_net}`` over ``model: {name: mlp, params: {hidden: [256]}}``) replaces the base
    section instead of merging into it, so one model's parameters never leak into another.
    """
    out = copy.deepcopy(dict(base))
    for k, v in update.items():
        renamed = (
            isinstance(v, Mapping) and isinstance(out.get(k), Mapping)
            and "name" in v and v["name"] != out[k].get("name")
        )
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) and not renamed:
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _explain(exc: ValidationError, model: type[BaseModel]) -> ConfigError:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            # find the valid field names at that level
            fields: Iterable[str] = []
            sub: Any = model
            for p in err["loc"][:-1]:
                if isinstance(p, str) and hasattr(sub, "model_fields") and p in sub.model_fields:
                    ann = sub.model_fields[p].annotation
                    args = getattr(ann, "__args__", ())
                    sub = next((a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None)
                    if sub is None:
                        break
            if sub is not None and hasattr(sub, "model_fields"):
                fields = list(sub.model_fields)
            near = close_matches(str(err["loc"][-1]), fields)
            hint = f" Did you mean {', '.join(map(repr, near))}?" if near else ""
            lines.append(f"unknown config key {loc!r}.{hint} Valid keys here: {', '.join(fields)}.")
        else:
            lines.append(f"{loc}: {err['msg']} (got {err.get('input')!r})")
    if len(lines) == 1:
        return ConfigError(f"invalid experiment config: {lines[0]}")
    return ConfigError("invalid experiment config:\n  " + "\n  ".join(lines))


def make_config(tree: Mapping[str, Any] | None = None, overrides: Iterable[str] = ()) -> ExperimentConfig:
    """Validate a config tree (plus ``key=value`` overrides) into an :class:`ExperimentConfig`."""
    data = copy.deepcopy(dict(tree or {}))
    for key, value in parse_overrides(overrides):
        set_dotted(data, key, value)
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise _explain(exc, ExperimentConfig) from None


def _dotted_get(tree: Any, key: str) -> Any:
    node = tree
    for tok in _path_tokens(key):
        if isinstance(tok, int):
            if not isinstance(node, list) or tok >= len(node):
                return None
            node = node[tok]
        else:
            if not isinstance(node, dict) or tok not in node:
                return None
            node = node[tok]
    return node


def with_override_names(cfg: ExperimentConfig, tree: Mapping[str, Any], overrides: Iterable[str]) -> ExperimentConfig:
    """``cfg`` named after its run plus the overrides that changed it: ``ce/clean [epochs=2]``
    (so a shortened or altered run is never mistaken for the suite's own)."""
    overrides = list(overrides)
    if not overrides:
        return cfg
    plain = make_config(tree).to_dict()
    changed = cfg.to_dict()
    parts = []
    for key, value in parse_overrides(overrides):
        if key == "name" or _dotted_get(plain, key) == _dotted_get(changed, key):
            continue
        short = key.split(".")[-1]
        text = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
        parts.append(f"{short}={text}")
    if not parts:
        return cfg
    return cfg.model_copy(update={"name": f"{cfg.label()} [{', '.join(parts)}]"})


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file {p} does not exist.")
    try:
        tree = yaml_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot parse {p} as YAML: {exc}") from exc
    if not isinstance(tree, dict):
        raise ConfigError(f"{p} must hold a mapping at the top level.")
    return tree


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> ExperimentConfig:
    """Read one experiment config from YAML and apply overrides."""
    return make_config(read_yaml(path), overrides)


# -- suites ------------------------------------------------------------------------------
class Suite(_Strict):
    """Several runs: a ``base`` config, a list of ``runs`` (each deep-merged into the
    base), and/or a ``grid`` of dotted keys to value lists (cartesian product applied to
    every run)."""

    suite: str = "suite"
    description: str = ""
    base: dict[str, Any] = Field(default_factory=dict)
    runs: list[dict[str, Any]] = Field(default_factory=lambda: [dict[str, Any]()])
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    report: dict[str, Any] = Field(default_factory=dict)

    def expand(self, overrides: Iterable[str] = ()) -> list[ExperimentConfig]:
        """All experiment configs of the suite (overrides apply to every run)."""
        overrides = list(overrides)
        keys = list(self.grid)
        combos = list(itertools.product(*(self.grid[k] for k in keys))) or [()]
        out = []
        for run in self.runs or [{}]:
            for combo in combos:
                tree = deep_merge(self.base, run)
                for k, v in zip(keys, combo):
                    set_dotted(tree, k, v)
                cfg = make_config(tree, overrides)
                if keys and run.get("name"):
                    suffix = ",".join(f"{k.split('.')[-1]}={v}" for k, v in zip(keys, combo))
                    cfg = cfg.model_copy(update={"name": f"{run['name']}[{suffix}]"})
                out.append(with_override_names(cfg, tree, overrides))
        return out


def load_suite(path: str | Path) -> Suite:
    tree = read_yaml(path)
    if "base" not in tree and "runs" not in tree and "grid" not in tree:
        # a single experiment file is a suite of one run
        tree = {"suite": Path(path).stem, "base": tree}
    try:
        return Suite.model_validate(tree)
    except ValidationError as exc:
        raise _explain(exc, Suite) from None


def packaged_config(name: str) -> Path:
    """Path of a config shipped with robustlab (``bench`` -> ``configs/bench.yaml``)."""
    from importlib.resources import files

    p = Path(str(files("robustlab") / "configs" / f"{name}.yaml"))
    if not p.exists():
        shipped = sorted(q.stem for q in p.parent.glob("*.yaml"))
        near = close_matches(name, shipped)
        hint = f" Did you mean {', '.join(map(repr, near))}?" if near else ""
        raise ConfigError(f"no packaged config {name!r}.{hint} Shipped: {', '.join(shipped)}.")
    return p
