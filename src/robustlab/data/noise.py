"""Label-noise models: corrupt training labels with a known, recorded process.

>>> from robustlab.data import noise
>>> res = noise.corrupt_labels(y, "symmetric", 0.4, num_classes=10, seed=0)
>>> res.noisy_labels, res.flip_rate, res.transition   # labels, actual rate, realised T

Every kind is a registered noise model (``noise.available()``). A model defines a
*nominal* row-stochastic transition matrix ``T`` (``T[i, j] = P(noisy = j | clean = i)``)
and draws noisy labels from it; :func:`corrupt_labels` also reports the *realised*
matrix (the empirical ``P(noisy | clean)`` of the draw) and the actual flip rate, which
is what a paper's "noise rate" should be compared with.

Kinds
-----
``symmetric``
    Flip with probability ``rate`` to one of the *other* ``K - 1`` classes uniformly
    (Van Rooyen et al. 2015; Patrini et al. 2017):
    ``T = (1 - r) I + r / (K - 1) (11^T - I)``. With ``include_true_class=True`` the
    new label is drawn from all ``K`` classes (the convention of the ELR and DivideMix
    code), ``T = (1 - r) I + r / K 11^T``, whose actual flip rate is ``r (K - 1) / K``.
``pairflip``
    Flip with probability ``rate`` to the next class, ``i -> (i + 1) mod K`` (Han et al.
    2018, Co-teaching, "pair flipping").
``asymmetric``
    Flip ``rate`` of each mapped source class to its image under a class map
    (Patrini et al. 2017, "Making Deep Neural Networks Robust to Label Noise: a Loss
    Correction Approach", Sec. 6). Presets: ``"cifar10"`` (truck -> automobile,
    bird -> airplane, deer -> horse, cat <-> dog) and ``"mnist"`` (7 -> 1, 2 -> 7,
    5 <-> 6, 3 -> 8). The samples to flip are chosen from the *clean* labels, so a
    swap such as cat <-> dog flips ``rate`` of the cats and ``rate`` of the dogs (code
    that flips in place, class after class, flips some new dogs back to cats).
``matrix``
    Any row-stochastic ``T`` given as the option ``T``.
``instance``
    Instance-dependent noise of Xia et al. 2020 ("Part-dependent Label Noise: Towards
    Instance-dependent Label Noise", NeurIPS, Algorithm 2 of the supplement and the
    official ``get_instance_noisy_label``): per-sample flip rates
    ``q_n ~ N(rate, 0.1^2)`` truncated to ``[0, 1]``; per-class projections
    ``W_c ~ N(0, 1)^{S x K}``; for sample ``x_n`` of class ``y``, ``p = x_n W_y`` with
    ``p_y = -inf``, ``p = q_n softmax(p)``, ``p_y = 1 - q_n``; the noisy label is drawn
    from ``p``. Needs the option ``features`` (``(N, S)`` array, e.g. flattened images).

``exact=True`` replaces independent draws by a fixed count where a paper protocol
does so: ``symmetric`` flips exactly ``round(r N)`` samples (chosen uniformly; with
``include_true_class`` these ``round(r N)`` samples get a label drawn from all ``K``
classes, as in DivideMix's code); ``pairflip`` and ``asymmetric`` flip exactly
``round(r n_c)`` samples of every (mapped) class ``c``.

All randomness comes from ``numpy.random.default_rng(seed)`` (PCG64, platform
independent): same labels + same seed => same noisy labels everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from robustlab.errors import ConfigError, LabelError
from robustlab.registry import Registry, check_params
from robustlab.validation import check_bool, check_float, check_int

NoiseFn = Callable[..., tuple[np.ndarray, np.ndarray]]

noise_models: Registry[Any] = Registry("noise model")

#: Class maps of the asymmetric-noise presets (source class -> noisy class).
CLASS_MAPS: dict[str, dict[int, int]] = {
    # CIFAR-10: truck->automobile, bird->airplane, deer->horse, cat<->dog (Patrini et al. 2017)
    "cifar10": {9: 1, 2: 0, 4: 7, 3: 5, 5: 3},
    # MNIST: 7->1, 2->7, 5<->6, 3->8 (Patrini et al. 2017; Ma et al. 2018)
    "mnist": {7: 1, 2: 7, 5: 6, 6: 5, 3: 8},
}


@dataclass
class NoiseResult:
    """Noisy labels and what the draw realised.

    Attributes
    ----------
    noisy_labels: int64 tensor of the corrupted labels.
    clean_labels: int64 tensor of the labels given.
    transition: realised ``K x K`` matrix, ``P(noisy = j | clean = i)`` of this draw
        (rows of classes absent from the labels are the nominal rows).
    nominal_transition: the model's ``K x K`` matrix the labels were drawn from (for
        ``instance`` noise: the mean of the per-sample rows within each class).
    flip_rate: fraction of labels that changed.
    """

    noisy_labels: torch.Tensor
    clean_labels: torch.Tensor
    transition: np.ndarray
    nominal_transition: np.ndarray
    flip_rate: float
    kind: str
    rate: float
    seed: int
    exact: bool
    convention: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def is_noisy(self) -> torch.Tensor:
        """Per-sample bool: the noisy label differs from the clean one."""
        return self.noisy_labels != self.clean_labels

    @property
    def num_flipped(self) -> int:
        return int(self.is_noisy.sum())

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary recorded with every run."""
        return {
            "kind": self.kind,
            "rate": self.rate,
            "flip_rate": self.flip_rate,
            "num_flipped": self.num_flipped,
            "num_samples": len(self.noisy_labels),
            "exact": self.exact,
            "seed": self.seed,
            "convention": self.convention,
            "options": self.options,
            "transition": np.round(self.transition, 6).tolist(),
            "nominal_transition": np.round(self.nominal_transition, 6).tolist(),
        }


# -- helpers ---------------------------------------------------------------------------
def _as_numpy_labels(y: Any, num_classes: int) -> np.ndarray:
    from robustlab.validation import check_labels

    t = y if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y))
    check_labels(t, num_classes, name="labels")
    return t.detach().cpu().numpy().astype(np.int64)


def _check_rate(rate: Any, kind: str) -> float:
    return check_float(rate, f"{kind} noise rate", low=0.0, high=1.0, high_open=True)


def _draw_from_rows(rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One categorical draw per row of ``rows`` (each row sums to 1), by inverse CDF."""
    cdf = np.cumsum(rows, axis=1)
    cdf[:, -1] = 1.0  # guard against round-off
    u = rng.random(len(rows))
    return (u[:, None] >= cdf).sum(axis=1).astype(np.int64)


def _draw(y: np.ndarray, T: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _draw_from_rows(T[y], rng)


def _exact_per_class(
    y: np.ndarray, rate: float, targets: Mapping[int, int], rng: np.random.Generator
) -> np.ndarray:
    """Flip exactly ``round(rate * n_c)`` of the (clean) members of each mapped class ``c``."""
    noisy = y.copy()
    for c in sorted(targets):
        members = np.flatnonzero(y == c)
        k = int(round(rate * len(members)))
        chosen = rng.permutation(members)[:k]
        noisy[chosen] = targets[c]
    return noisy


def realised_transition(
    clean: np.ndarray, noisy: np.ndarray, num_classes: int, fallback: np.ndarray | None = None
) -> np.ndarray:
    """Empirical ``P(noisy = j | clean = i)``; absent classes get ``fallback``'s row (or e_i)."""
    counts = np.zeros((num_classes, num_classes), dtype=np.float64)
    np.add.at(counts, (clean, noisy), 1.0)
    totals = counts.sum(1, keepdims=True)
    out = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    for i in np.flatnonzero(totals[:, 0] == 0):
        out[i] = fallback[i] if fallback is not None else np.eye(num_classes)[i]
    return out


def check_transition(T: Any, num_classes: int) -> np.ndarray:
    """Refuse anything but a ``K x K`` row-stochastic matrix."""
    try:
        M = np.asarray(T, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"transition matrix T must be a K x K array of numbers: {exc}") from None
    if M.shape != (num_classes, num_classes):
        raise ConfigError(
            f"transition matrix T has shape {M.shape}; with {num_classes} classes it must be "
            f"({num_classes}, {num_classes})."
        )
    if not np.all(np.isfinite(M)) or (M < 0).any():
        raise ConfigError("transition matrix T must have finite, non-negative entries.")
    sums = M.sum(1)
    if not np.allclose(sums, 1.0, atol=1e-6):
        bad = int(np.argmax(np.abs(sums - 1.0)))
        raise ConfigError(
            f"transition matrix T is not row-stochastic: row {bad} sums to {sums[bad]:.6g}; "
            f"every row T[i] is the distribution of the noisy label of class i and must sum to 1."
        )
    return M / sums[:, None]


def resolve_class_map(
    class_map: str | Mapping[Any, Any], num_classes: int, class_names: Sequence[str] | None = None
) -> dict[int, int]:
    """A preset name (``"cifar10"``, ``"mnist"``) or ``{source: target}`` of class indices
    (or class names, when ``class_names`` is given) -> ``{int: int}``, validated."""
    if isinstance(class_map, str):
        key = class_map.lower().replace("-", "").replace("_", "")
        if key not in CLASS_MAPS:
            from robustlab.registry import close_matches

            near = close_matches(class_map, list(CLASS_MAPS))
            hint = f" Did you mean {', '.join(map(repr, near))}?" if near else ""
            raise ConfigError(
                f"unknown class-map preset {class_map!r}.{hint} Presets: {', '.join(CLASS_MAPS)}; "
                f"or pass a dict {{source: target}}."
            )
        mapping: dict[Any, Any] = dict(CLASS_MAPS[key])
    elif isinstance(class_map, Mapping):
        mapping = dict(class_map)
    else:
        raise ConfigError(f"class_map must be a preset name or a dict, got {type(class_map).__name__}.")
    names = list(class_names or [])

    def index(c: Any) -> int:
        if isinstance(c, str) and not c.lstrip("-").isdigit():
            if c not in names:
                raise ConfigError(
                    f"class map names class {c!r}, which is not one of the classes "
                    f"({', '.join(names) or 'no class names given'})."
                )
            return names.index(c)
        i = int(c)
        if not 0 <= i < num_classes:
            raise ConfigError(
                f"class map names class {i}, but there are only {num_classes} classes "
                f"(0..{num_classes - 1}). Use the preset that fits the dataset."
            )
        return i

    out = {index(s): index(t) for s, t in mapping.items()}
    for s, t in out.items():
        if s == t:
            raise ConfigError(f"class map sends class {s} to itself; drop that entry.")
    if not out:
        raise ConfigError("class map is empty.")
    return out


# -- the noise models ------------------------------------------------------------------
@noise_models.register("symmetric", aliases=("uniform", "sym"))
def symmetric(
    y: np.ndarray,
    rate: float,
    num_classes: int,
    rng: np.random.Generator,
    exact: bool = False,
    *,
    include_true_class: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Uniform flips to the other classes (or to all classes with ``include_true_class``)."""
    include_true_class = check_bool(include_true_class, "symmetric noise include_true_class")
    K = num_classes
    if K < 2:
        raise ConfigError("label noise needs at least 2 classes.")
    if include_true_class:
        T = (1 - rate) * np.eye(K) + rate / K * np.ones((K, K))
    else:
        if rate >= (K - 1) / K:
            raise ConfigError(
                f"symmetric noise at rate {rate} with {K} classes leaves the true class no more "
                f"likely than any other (rate must be < (K-1)/K = {(K - 1) / K:.4g}); the labels "
                f"would carry no information."
            )
        T = (1 - rate) * np.eye(K) + rate / (K - 1) * (np.ones((K, K)) - np.eye(K))
    if not exact:
        return _draw(y, T, rng), T
    n = len(y)
    chosen = rng.permutation(n)[: int(round(rate * n))]
    noisy = y.copy()
    if include_true_class:
        noisy[chosen] = rng.integers(0, K, size=len(chosen))
    else:
        shift = rng.integers(1, K, size=len(chosen))  # uniform over the K-1 other classes
        noisy[chosen] = (y[chosen] + shift) % K
    return noisy, T


@noise_models.register("pairflip", aliases=("pair", "pair-flip"))
def pairflip(
    y: np.ndarray, rate: float, num_classes: int, rng: np.random.Generator, exact: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Flip to the next class, ``i -> (i + 1) mod K`` (Han et al. 2018)."""
    K = num_classes
    if rate >= 0.5:
        raise ConfigError(
            f"pair-flip noise at rate {rate} >= 0.5 makes the flipped class at least as likely "
            f"as the true one; no method can recover the labels. Use a rate below 0.5."
        )
    T = (1 - rate) * np.eye(K) + rate * np.roll(np.eye(K), 1, axis=1)
    if not exact:
        return _draw(y, T, rng), T
    return _exact_per_class(y, rate, {c: (c + 1) % K for c in range(K)}, rng), T


@noise_models.register("asymmetric", aliases=("asym", "class-dependent"))
def asymmetric(
    y: np.ndarray,
    rate: float,
    num_classes: int,
    rng: np.random.Generator,
    exact: bool = False,
    *,
    class_map: str | Mapping[Any, Any] = "cifar10",
    class_names: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Flip ``rate`` of each mapped class to its image (chosen from the clean labels)."""
    mapping = resolve_class_map(class_map, num_classes, class_names)
    if rate >= 0.5:
        raise ConfigError(
            f"asymmetric noise at rate {rate} >= 0.5 makes a mapped class's image at least as "
            f"likely as the class itself; use a rate below 0.5."
        )
    K = num_classes
    T = np.eye(K)
    for s, t in mapping.items():
        T[s, s] = 1 - rate
        T[s, t] = rate
    if exact:
        return _exact_per_class(y, rate, mapping, rng), T
    # one Bernoulli draw per sample, decided on the clean label (never flips a flipped label)
    flip = rng.random(len(y)) < rate
    noisy = y.copy()
    for s, t in mapping.items():
        noisy[(y == s) & flip] = t
    return noisy, T


@noise_models.register("matrix", aliases=("transition",))
def matrix(
    y: np.ndarray,
    rate: float,
    num_classes: int,
    rng: np.random.Generator,
    exact: bool = False,
    *,
    T: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw noisy labels from a given row-stochastic ``T`` (rate is implied by ``T``)."""
    if T is None:
        raise ConfigError("matrix noise needs the option T (a K x K row-stochastic matrix).")
    M = check_transition(T, num_classes)
    if exact:
        raise ConfigError("exact=True is not defined for an arbitrary transition matrix.")
    return _draw(y, M, rng), M


@noise_models.register("instance", aliases=("instance-dependent", "idn"))
def instance(
    y: np.ndarray,
    rate: float,
    num_classes: int,
    rng: np.random.Generator,
    exact: bool = False,
    *,
    features: Any = None,
    std: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """Instance-dependent noise of Xia et al. 2020 (see the module docstring)."""
    from scipy import stats

    std = check_float(std, "instance noise std", low=0.0, low_open=True)

    if features is None:
        raise ConfigError(
            "instance noise needs the option features: an (N, S) array, e.g. the flattened images."
        )
    if exact:
        raise ConfigError("exact=True is not defined for instance-dependent noise.")
    F = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    F = F.reshape(len(F), -1).astype(np.float64)
    if len(F) != len(y):
        raise ConfigError(f"features has {len(F)} rows for {len(y)} labels; they must match.")
    if not np.all(np.isfinite(F)):
        raise ConfigError("features contain NaN or inf.")
    K = num_classes
    if rate == 0:
        q = np.zeros(len(y))
    else:
        a, b = (0 - rate) / std, (1 - rate) / std
        q = stats.truncnorm(a, b, loc=rate, scale=std).rvs(len(y), random_state=rng)
    W = rng.standard_normal((K, F.shape[1], K))
    rows = np.empty((len(y), K))
    for c in range(K):
        m = y == c
        if not m.any():
            continue
        a_c = F[m] @ W[c]
        a_c[:, c] = -np.inf
        a_c -= a_c.max(1, keepdims=True)
        e = np.exp(a_c)
        p = e / e.sum(1, keepdims=True) * q[m, None]
        p[:, c] = 1 - q[m]
        rows[m] = p
    noisy = _draw_from_rows(rows, rng)
    T = np.eye(K)
    for c in range(K):
        m = y == c
        if m.any():
            T[c] = rows[m].mean(0)
    return noisy, T


# -- the entry point -------------------------------------------------------------------
def corrupt_labels(
    y: torch.Tensor | np.ndarray | Sequence[int],
    kind: str,
    rate: float | None,
    num_classes: int,
    seed: int = 0,
    *,
    exact: bool = False,
    **options: Any,
) -> NoiseResult:
    """Corrupt ``y`` with the noise model ``kind`` at ``rate``; see the module docstring.

    Parameters
    ----------
    y: clean labels in ``[0, num_classes)``.
    kind: a registered noise model (``available()``); unknown names list close matches.
    rate: the nominal noise rate in ``[0, 1)`` (``None`` or ``0`` for ``matrix``, whose
        rate is implied by ``T``).
    num_classes: number of classes ``K``.
    seed: seed of the draw.
    exact: flip an exact count where the paper protocol does (module docstring).
    options: per-kind options: ``include_true_class`` (symmetric), ``class_map`` and
        ``class_names`` (asymmetric), ``T`` (matrix), ``features`` and ``std`` (instance).
    """
    fn = noise_models.get(kind)
    name = noise_models.canonical(kind)
    check_params(fn, options, what=f"noise model {name!r}")
    num_classes = check_int(num_classes, "num_classes", minimum=2)
    exact = check_bool(exact, "exact")
    labels = _as_numpy_labels(y, num_classes)
    if name == "matrix":
        r = 0.0 if rate is None else _check_rate(rate, name)
    else:
        if rate is None:
            raise ConfigError(f"{name} noise needs a rate in [0, 1).")
        r = _check_rate(rate, name)
    seed = check_int(seed, "seed", minimum=0)
    rng = np.random.default_rng(seed)
    noisy, T = fn(labels, r, num_classes, rng, exact, **options)
    if name == "matrix" and rate:
        pi = np.bincount(labels, minlength=num_classes) / max(len(labels), 1)
        implied = float((pi * (1 - np.diag(T))).sum())
        if abs(implied - r) > 1e-3:
            raise ConfigError(
                f"rate={r} contradicts the matrix T, whose expected flip rate on these labels is "
                f"{implied:.4f}; pass rate=None (or 0) to take the rate from T."
            )
    if len(labels) and (noisy.min() < 0 or noisy.max() >= num_classes):  # pragma: no cover
        raise LabelError("a noise model produced a label out of range; this is a bug.")
    clean_t = torch.from_numpy(labels)
    noisy_t = torch.from_numpy(np.ascontiguousarray(noisy, dtype=np.int64))
    realised = realised_transition(labels, noisy, int(num_classes), fallback=T)
    flip = float((noisy != labels).mean()) if len(labels) else 0.0
    shown = {k: v for k, v in options.items() if k != "features"}
    if "T" in shown:
        shown["T"] = np.asarray(shown["T"], dtype=float).tolist()
    if name == "asymmetric":
        shown["class_map"] = resolve_class_map(
            options.get("class_map", "cifar10"), int(num_classes), options.get("class_names")
        )
        shown["class_map"] = {str(k): v for k, v in shown["class_map"].items()}
        shown.pop("class_names", None)
    return NoiseResult(
        noisy_labels=noisy_t,
        clean_labels=clean_t,
        transition=realised,
        nominal_transition=np.asarray(T, dtype=np.float64),
        flip_rate=flip,
        kind=name,
        rate=r,
        seed=int(seed),
        exact=bool(exact),
        convention=_convention(name, options),
        options=shown,
    )


def _convention(kind: str, options: Mapping[str, Any]) -> str:
    if kind == "symmetric":
        if options.get("include_true_class"):
            return "symmetric, new label uniform over all K classes (actual flip rate r(K-1)/K)"
        return "symmetric, new label uniform over the K-1 other classes (actual flip rate r)"
    return {
        "pairflip": "pair flip i -> i+1 mod K with probability r",
        "asymmetric": "class-mapped flips with probability r, chosen from the clean labels",
        "matrix": "labels drawn from the given transition matrix",
        "instance": "instance-dependent (Xia et al. 2020), per-sample rates ~ TN(r, 0.1^2, [0, 1])",
    }[kind]


def available(pattern: str = "*") -> list[str]:
    """Names of the registered noise models matching ``pattern``."""
    return noise_models.available(pattern)


__all__ = [
    "CLASS_MAPS",
    "NoiseResult",
    "available",
    "check_transition",
    "corrupt_labels",
    "noise_models",
    "realised_transition",
    "resolve_class_map",
]
