"""The Mahalanobis detector of Lee, Lee, Lee & Shin (NeurIPS 2018), "A Simple Unified
Framework for Detecting Out-of-Distribution Samples and Adversarial Attacks".

Per layer ``l``, features ``f_l(x)`` (a conv map averaged over its spatial positions, or a
flat vector) are modelled by class-conditional Gaussians with class means ``mu_{l,c}``
and ONE covariance ``Sigma_l`` tied across classes (Eq. (1)), and the layer's confidence
score is (Eq. (2))::

    M_l(x) = max_c  -1/2 (f_l(x) - mu_{l,c})^T Sigma_l^{-1} (f_l(x) - mu_{l,c}).

Input preprocessing (Eq. (3) / Algorithm 1) scores ``x~ = x - eps * sign(grad_x
[1/2 min_c d_{l,c}(x)^2])`` instead of ``x`` (the step that *increases* ``M_l``), one
preprocessed input per layer, and a logistic regression over the layer scores (the
"feature ensemble", Sec. 2) gives the final score.

What follows the official code (github.com/pokaxpoka/deep_Mahalanobis_detector,
``lib_generation.py``: ``sample_estimator`` and ``get_Mahalanobis_score``):

- conv features are averaged over H x W; labels of the fitting points are the true labels;
- the covariance is the maximum-likelihood estimate of the class-centred features (divide
  by N; sklearn's ``EmpiricalCovariance`` on the centred features in the official code)
  and its precision a pseudo-inverse (``pinvh``), so directions of zero variance (dead
  units) are ignored, as there;
- the preprocessing gradient is taken of the distance to the class that is closest at
  ``x``; the official ``torch.ge(grad, 0)`` maps a zero gradient to +1, we use ``sign``
  (zero stays zero);
- the combination is a ``LogisticRegressionCV`` fitted on layer scores of held-out in
  and out samples (``fit_combination``; the official protocol uses 1000 of each).

Deviations (all documented where they act):

- **input space**: we work in the model's ``[0, 1]`` input box. The official code steps
  in normalised space by ``eps * sign(g) / std``, which is exactly ``eps * sign(g)`` in
  ``[0, 1]`` pixel space (sign is unchanged by the positive std), so ``magnitude`` means
  the same; unlike the official code we clip ``x~`` to the input box;
- **no combination fitted**: :meth:`score` returns the score of the LAST entry of
  ``layers`` alone (by default the penultimate features, the input of the last
  ``nn.Linear``), since :meth:`Detector.run` has no out-of-distribution data to fit a
  combination on; call :meth:`Mahalanobis.fit_combination` for the feature ensemble;
- **regression features** are standardised (mean/std of the combination's training
  scores) before ``LogisticRegressionCV``; the score is still linear in the layer scores;
- ``shrinkage`` (not in the paper): ``"ledoit-wolf"`` (sklearn's Ledoit-Wolf estimate of
  the centred features) or a float ``r`` (``Sigma + r * I``), for few fitting samples;
- classes without fitting samples are left out of the max (the official code would
  produce NaN means).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from scipy.linalg import pinvh
from torch import nn

from robustlab.attacks.engine import eval_mode, model_bounds, model_device
from robustlab.detect.base import Detector, TooFewSamplesError, detectors
from robustlab.errors import ConfigError, InvalidInputError, UnknownNameError
from robustlab.registry import close_matches
from robustlab.validation import check_float, check_inputs, check_int

_ACTIVATIONS = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.GELU, nn.SiLU,
    nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Mish,
)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)
_PASS_THROUGH = (nn.Dropout, nn.Flatten, nn.Identity) + _ACTIVATIONS

#: suffix of a layer name meaning "the input of this module" (else: its output)
INPUT_SUFFIX = ":input"


def _has_params(m: nn.Module) -> bool:
    return any(True for _ in m.parameters())


def _is_leaf_sequence(m: nn.Module) -> bool:
    """A Sequential whose children have no parametric sub-modules of their own."""
    return isinstance(m, nn.Sequential) and not any(
        _has_params(g) for c in m.children() for g in c.children()
    )


def default_layers(model: nn.Module) -> list[str]:
    """The layers the detector reads when ``layers=None``: the outputs of the model's
    main blocks, then the penultimate features (``"<last Linear>:input"``, last).

    Main blocks are the parametric top-level children of the model (a top-level
    ``nn.Sequential`` of plain layers is looked into one level down), skipping the
    normalisation layer; a layer followed by batch-norm and/or an activation is read
    after them, and a block that feeds the last ``nn.Linear`` directly is left out (the
    penultimate features already are its output). For robustlab's ``small_cnn`` this is
    the four conv blocks, ``classifier.relu1`` and ``classifier.fc3:input``; for a
    ResNet ``conv1``->``bn1``, ``layer1``..``layer4`` and ``linear:input``, close to
    Lee et al.'s choice (the first conv block and every residual stage).
    """
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(
            f"{type(model).__name__} has no nn.Linear, so its penultimate features cannot be "
            f"found; pass layers=[module names] (a name + ':input' reads a module's input)."
        )
    last = linears[-1]
    chosen: list[str] = []

    def scan(container: nn.Module, prefix: str, top: bool) -> None:
        kids = list(container.named_children())
        i = 0
        while i < len(kids):
            name, m = kids[i]
            full = prefix + name
            if full == last or not _has_params(m) or type(m).__name__ == "Normalize":
                i += 1
                continue
            if top and _is_leaf_sequence(m):
                scan(m, full + ".", False)
                i += 1
                continue
            j = i
            while j + 1 < len(kids) and isinstance(kids[j + 1][1], _NORMS + _ACTIVATIONS):
                j += 1
            k = j + 1
            while k < len(kids) and isinstance(kids[k][1], _PASS_THROUGH):
                k += 1
            feeds_last = k < len(kids) and prefix + kids[k][0] == last
            if not feeds_last:
                chosen.append(prefix + kids[j][0])
            i = j + 1

    scan(model, "", True)
    return chosen + [last + INPUT_SUFFIX]


def _pool(t: torch.Tensor) -> torch.Tensor:
    """Global average pooling of conv maps (N, C, ...) -> (N, C); flat vectors as they are."""
    if t.dim() == 2:
        return t
    if t.dim() >= 3:
        return t.flatten(2).mean(2)
    raise InvalidInputError(f"a layer gave features of shape {tuple(t.shape)}; expected (N, ...).")


@contextlib.contextmanager
def capture(model: nn.Module, layers: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Forward hooks recording the pooled features of ``layers`` during forward passes
    inside the block (a module called twice keeps its last call). Hooks are removed on exit."""
    modules = dict(model.named_modules())
    store: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for layer in layers:
            name, is_input = (layer[: -len(INPUT_SUFFIX)], True) if layer.endswith(INPUT_SUFFIX) else (layer, False)
            if name not in modules:
                near = close_matches(name, [n for n in modules if n])
                hint = f" Did you mean {', '.join(repr(m) for m in near)}?" if near else ""
                raise UnknownNameError(
                    f"the model has no module {name!r} (layer {layer!r}).{hint} Layer names are "
                    f"those of model.named_modules(); add {INPUT_SUFFIX!r} to read a module's input."
                )
            mod = modules[name]
            if is_input:
                def pre(_m: nn.Module, args: tuple[Any, ...], key: str = layer) -> None:
                    store[key] = _pool(args[0])

                handles.append(mod.register_forward_pre_hook(pre))
            else:
                def post(_m: nn.Module, _a: tuple[Any, ...], out: torch.Tensor, key: str = layer) -> None:
                    store[key] = _pool(out)

                handles.append(mod.register_forward_hook(post))
        yield store
    finally:
        for h in handles:
            h.remove()


@detectors.register("mahalanobis")
class Mahalanobis(Detector):
    """Mahalanobis-distance confidence score over several layers (Lee et al. 2018).

    Parameters
    ----------
    layers: module names (``model.named_modules()``; ``"name:input"`` reads a module's
        input) whose features are scored; default :func:`default_layers`. Without a fitted
        combination only the LAST layer's score is used.
    magnitude: input preprocessing step ``eps`` in ``[0, 1]`` input units (0 = none; the
        official code tunes it over ``{0, 0.0005, 0.001, 0.0014, 0.002, 0.005, 0.01}``).
    shrinkage: ``None`` (the empirical covariance, as in the paper), ``"ledoit-wolf"`` or
        a float ridge ``r >= 0`` added to the diagonal. Without shrinkage, fitting on fewer
        samples than a layer has dimensions raises :class:`TooFewSamplesError`.

    Fitted attributes: ``layers_``, ``means_`` (per layer, (K, D) float64),
    ``precisions_`` (per layer, (D, D)), ``class_present_`` ((K,) bool), and after
    :meth:`fit_combination` ``combination_`` (weights over layers, intercept,
    standardisation).
    """

    requires_fit = True

    def __init__(
        self,
        layers: Sequence[str] | None = None,
        magnitude: float = 0.0,
        shrinkage: str | float | None = None,
    ) -> None:
        if layers is not None:
            if isinstance(layers, str) or not all(isinstance(n, str) for n in layers) or not len(layers):
                raise ConfigError(
                    f"layers must be a non-empty list of module names, e.g. ['layer4', "
                    f"'linear:input'], got {layers!r}."
                )
            layers = list(layers)
        self.layers = layers
        self.magnitude = check_float(magnitude, "magnitude", low=0.0)
        if shrinkage is not None and not (
            shrinkage == "ledoit-wolf"
            or (isinstance(shrinkage, (int, float)) and not isinstance(shrinkage, bool))
        ):
            raise ConfigError(
                f"shrinkage must be None, 'ledoit-wolf' or a ridge r >= 0, got {shrinkage!r}."
            )
        if isinstance(shrinkage, (int, float)):
            shrinkage = check_float(float(shrinkage), "shrinkage", low=0.0)
        self.shrinkage = shrinkage

    # -- fitting ---------------------------------------------------------------------------------
    def _reset(self) -> None:
        self.combination_: dict[str, torch.Tensor] | None = None

    def _fit(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        batch_size: int,
        generator: torch.Generator | None,
    ) -> None:
        self.layers_ = list(self.layers) if self.layers is not None else default_layers(model)
        dev = model_device(model) or x.device
        feats: list[list[torch.Tensor]] = [[] for _ in self.layers_]
        with capture(model, self.layers_) as store, torch.no_grad():
            for i in range(0, len(x), batch_size):
                model(x[i : i + batch_size].to(dev))
                for j, layer in enumerate(self.layers_):
                    feats[j].append(store[layer].detach().double().cpu())
        k = int(self.num_classes_)
        yk = y.cpu().long()
        counts = torch.bincount(yk, minlength=k)
        self.class_present_ = (counts > 0).to(dev)
        self.means_: list[torch.Tensor] = []
        self.precisions_: list[torch.Tensor] = []
        for layer, chunks in zip(self.layers_, feats):
            f = torch.cat(chunks).numpy()
            n, d = f.shape
            if self.shrinkage is None and n < d:
                raise TooFewSamplesError(
                    f"fitted on {n} samples for a {d}-dimensional layer {layer!r}; pass "
                    f"shrinkage='ledoit-wolf' or more samples."
                )
            means = np.zeros((k, d))
            for c in range(k):
                if counts[c]:
                    means[c] = f[yk.numpy() == c].mean(0)
            centred = f - means[yk.numpy()]
            if self.shrinkage == "ledoit-wolf":
                from sklearn.covariance import ledoit_wolf

                cov = ledoit_wolf(centred, assume_centered=True)[0]
            else:
                cov = centred.T @ centred / n
                if isinstance(self.shrinkage, float):
                    cov = cov + self.shrinkage * np.eye(d)
            self.means_.append(torch.from_numpy(means).to(dev))
            self.precisions_.append(torch.from_numpy(pinvh(cov)).to(dev))

    # -- scores --------------------------------------------------------------------------------
    def _sq_distances(self, j: int, f: torch.Tensor) -> torch.Tensor:
        """``(N, K)`` squared Mahalanobis distances of features ``f`` (layer ``j``) to every
        class mean (float64; absent classes +inf)."""
        f = f.double()
        mu, prec = self.means_[j], self.precisions_[j]
        fp = f @ prec
        d2 = (fp * f).sum(1, keepdim=True) - 2.0 * fp @ mu.T + ((mu @ prec) * mu).sum(1)[None]
        d2 = d2.clamp_min(0.0)
        return d2.masked_fill(~self.class_present_[None], float("inf"))

    def _layer_score(self, j: int, f: torch.Tensor) -> torch.Tensor:
        return -0.5 * self._sq_distances(j, f).amin(1)

    def _features(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        with capture(model, self.layers_) as store:
            logits = model(x)
        return logits, [store[layer] for layer in self.layers_]

    def _preprocess(self, model: nn.Module, x: torch.Tensor, which: Sequence[int]) -> list[torch.Tensor]:
        """``x~_l = clip(x - eps * sign(grad_x 1/2 min_c d_{l,c}(x)^2))`` for each layer in
        ``which`` (detached)."""
        lo, hi = model_bounds(model)
        xr = x.detach().requires_grad_(True)
        with torch.enable_grad():
            _, feats = self._features(model, xr)
            out = []
            for n, j in enumerate(which):
                loss = 0.5 * self._sq_distances(j, feats[j]).amin(1).sum()
                (g,) = torch.autograd.grad(loss, xr, retain_graph=n < len(which) - 1)
                out.append((x.detach() - self.magnitude * g.sign()).clamp(lo, hi))
        return out

    def _scores_of(
        self, model: nn.Module, x: torch.Tensor, which: Sequence[int], *, straight_through: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits at ``x`` and the ``(N, len(which))`` layer scores (preprocessed when
        ``magnitude > 0``; with ``straight_through`` the preprocessing step is treated as
        a constant offset so the scores stay differentiable in ``x``)."""
        logits, feats = self._features(model, x)
        if self.magnitude == 0:
            return logits, torch.stack([self._layer_score(j, feats[j]) for j in which], 1)
        pre = self._preprocess(model, x, which)
        cols = []
        for j, xt in zip(which, pre):
            xin = x + (xt - x).detach() if straight_through else xt
            _, fj = self._features(model, xin)
            cols.append(self._layer_score(j, fj[j]))
        return logits, torch.stack(cols, 1)

    def _combine(self, s: torch.Tensor) -> torch.Tensor:
        """The final score from the layer scores of :meth:`_which` (the last column alone
        without a fitted combination)."""
        c = self.combination_
        if c is None:
            return s[:, -1]
        return ((s - c["mean"]) / c["scale"]) @ c["coef"] + c["intercept"]

    def _which(self) -> list[int]:
        return list(range(len(self.layers_))) if self.combination_ is not None else [len(self.layers_) - 1]

    def forward_score(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and the score WITHOUT input preprocessing (differentiable in ``x``)."""
        self._check_fitted()
        which = self._which()
        logits, feats = self._features(model, x)
        s = torch.stack([self._layer_score(j, feats[j]) for j in which], 1)
        return logits, self._combine(s)

    def attack_score(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For adaptive attacks: the exact score's value, with the gradient of a
        straight-through (BPDA, Athalye et al. 2018) estimate when ``magnitude > 0``: the
        preprocessing step ``x~ - x`` is computed as usual and treated as a constant, so the
        gradient is that of the layer score at ``x~`` passed back to ``x``."""
        self._check_fitted()
        which = self._which()
        logits, s = self._scores_of(model, x, which, straight_through=True)
        return logits, self._combine(s)

    def _score_batch(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        which = self._which()
        if self.magnitude == 0:
            with torch.no_grad():
                _, s = self._scores_of(model, x, which, straight_through=False)
        else:
            _, s = self._scores_of(model, x, which, straight_through=False)
        with torch.no_grad():
            return self._combine(s.detach())

    def layer_scores(self, model: nn.Module, x: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
        """``(N, L)`` per-layer scores ``M_l`` (with preprocessing when ``magnitude > 0``),
        float64 on ``x``'s device, in the order of ``layers_``."""
        self._check_fitted()
        batch_size = check_int(batch_size, "batch_size", minimum=1)
        check_inputs(x, bounds=model_bounds(model))
        dev = model_device(model) or x.device
        which = list(range(len(self.layers_)))
        out = []
        with eval_mode(model):
            for i in range(0, len(x), batch_size):
                xb = x[i : i + batch_size].to(dev)
                if self.magnitude == 0:
                    with torch.no_grad():
                        _, s = self._scores_of(model, xb, which, straight_through=False)
                else:
                    _, s = self._scores_of(model, xb, which, straight_through=False)
                out.append(s.detach())
        if not out:
            return torch.zeros(0, len(which), dtype=torch.float64, device=x.device)
        return torch.cat(out).to(x.device)

    def fit_combination(
        self,
        model: nn.Module,
        x_in: torch.Tensor,
        x_out: torch.Tensor,
        *,
        batch_size: int = 256,
    ) -> Mahalanobis:
        """Fit the feature ensemble: a logistic regression (sklearn ``LogisticRegressionCV``,
        5-fold, accuracy as the selection score: the official code's defaults) of in (1) vs out (0) on
        the layer scores of held-out in-distribution points ``x_in`` and out points
        ``x_out`` (the official protocol: 1000 of each, from the evaluation data, which
        are then left out of the evaluation). Afterwards :meth:`score` returns the
        regression's decision function (higher = in). Refitting the detector forgets it."""
        self._check_fitted()
        from sklearn.linear_model import LogisticRegressionCV

        s_in = self.layer_scores(model, x_in, batch_size=batch_size).cpu().numpy()
        s_out = self.layer_scores(model, x_out, batch_size=batch_size).cpu().numpy()
        if min(len(s_in), len(s_out)) < 2:
            raise InvalidInputError(
                f"fit_combination needs at least 2 in and 2 out points, got {len(s_in)} and "
                f"{len(s_out)}; the official protocol uses 1000 of each."
            )
        feats = np.concatenate([s_in, s_out])
        target = np.r_[np.ones(len(s_in)), np.zeros(len(s_out))]
        mean = feats.mean(0)
        scale = feats.std(0)
        scale[scale == 0] = 1.0
        cv = int(min(5, len(s_in), len(s_out)))
        with warnings.catch_warnings():  # scikit-learn's notices about future defaults
            warnings.simplefilter("ignore", FutureWarning)
            lr = LogisticRegressionCV(cv=cv, max_iter=1000, scoring="accuracy")
            lr.fit((feats - mean) / scale, target)
        dev = self.means_[0].device
        self.combination_ = {
            "coef": torch.as_tensor(lr.coef_[0], dtype=torch.float64, device=dev),
            "intercept": torch.as_tensor(float(lr.intercept_[0]), dtype=torch.float64, device=dev),
            "mean": torch.as_tensor(mean, dtype=torch.float64, device=dev),
            "scale": torch.as_tensor(scale, dtype=torch.float64, device=dev),
        }
        return self


__all__ = ["INPUT_SUFFIX", "Mahalanobis", "capture", "default_layers"]
