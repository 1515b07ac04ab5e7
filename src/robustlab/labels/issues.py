"""Find wrong labels: out-of-sample probabilities by K-fold cross-fitting, then confident
learning.

>>> from robustlab import data, labels
>>> train = data.load("digits")
>>> res = data.noise.corrupt_labels(train.y, "symmetric", 0.2, 10, seed=0)
>>> noisy = train.with_labels(res.noisy_labels)
>>> issues = labels.find_issues(noisy, folds=5, seed=0)       # needs robustlab[noise]
>>> issues.indices[:10]          # most suspect samples first
>>> issues.precision, issues.recall   # against the known flips (noisy.clean_y)

Step 1, :func:`cross_val_probs`: split the data into ``folds`` stratified folds; for each
fold train a fresh model (our Trainer, a model from the registry) on the other folds and
predict the held-out fold. Every sample's probabilities therefore come from a model that
never saw it, which is what confident learning needs (a model scoring its own training
samples has memorised their labels, right or wrong).

Step 2, :func:`find_issues`: hand the given labels and these probabilities to cleanlab's
confident learning (Northcutt, Jiang & Chuang, JAIR 2021, "Confident Learning: Estimating
Uncertainty in Dataset Labels"): ``cleanlab.filter.find_label_issues`` (default
``filter_by="prune_by_noise_rate"``) flags the samples, ranked by self-confidence
``p_i[y_i]`` (``return_indices_ranked_by="self_confidence"``), and
``cleanlab.rank.get_label_quality_scores`` (``method="self_confidence"``) scores every
sample (lower = more likely mislabelled). cleanlab (>= 2.9, Apache-2.0) is the optional
extra ``noise``: ``pip install "robustlab[noise]"``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from robustlab.data.base import Dataset
from robustlab.errors import ConfigError, InvalidInputError, LabelError
from robustlab.registry import Registry
from robustlab.validation import check_int

#: Methods that turn (labels, out-of-sample probabilities) into ranked suspects.
issue_methods: Registry[Any] = Registry("label-issue method")

#: Trainer settings used by :func:`cross_val_probs` unless overridden.
CROSS_FIT_DEFAULTS: dict[str, Any] = {"epochs": 20, "batch_size": 64, "lr": 0.05, "progress": False}

ModelSpec = str | Callable[[Dataset], nn.Module]


def _labels_numpy(y: Any) -> np.ndarray:
    if isinstance(y, torch.Tensor):
        return y.detach().cpu().numpy().astype(np.int64)
    return np.asarray(y).astype(np.int64)


def stratified_folds(labels: Any, folds: int, seed: int) -> np.ndarray:
    """The fold (``0 .. folds-1``) of every sample, stratified by label.

    The members of each class (in sorted class order) are permuted with one
    ``numpy.random.default_rng(seed)`` and dealt to the folds in turn, continuing where
    the previous class stopped. Hence every class's count differs by at most 1 between
    folds, and so do the fold sizes. Depends only on ``labels``, ``folds`` and ``seed``.
    """
    y = _labels_numpy(labels)
    if y.ndim != 1:
        raise LabelError(f"labels have shape {y.shape}; stratified folds need 1-D labels.")
    folds = check_int(folds, "folds", minimum=2)
    seed = check_int(seed, "seed", minimum=0)
    if folds > len(y):
        raise ConfigError(f"folds={folds} is more than the {len(y)} samples; use folds <= {len(y)}.")
    rng = np.random.default_rng(seed)
    out = np.empty(len(y), dtype=np.int64)
    offset = 0
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        out[members] = (offset + np.arange(len(members))) % folds
        offset += len(members)
    return out


def _build_model(model: ModelSpec, train: Dataset, model_params: Mapping[str, Any], seed: int) -> nn.Module:
    from robustlab import models

    with torch.random.fork_rng(devices=[]):  # seeded init; the global RNG is restored
        torch.manual_seed(seed)
        if isinstance(model, str):
            return models.for_dataset(model, train, **dict(model_params))
        if callable(model):
            if model_params:
                raise ConfigError("model_params are for registry models; a model factory takes none.")
            net = model(train)
            if not isinstance(net, nn.Module):
                raise ConfigError(
                    f"the model factory must return a torch.nn.Module, got {type(net).__name__}."
                )
            return net
    raise ConfigError(f"model must be a registry name or a factory(train_set) -> nn.Module, got {model!r}.")


@torch.no_grad()
def _predict_proba(net: nn.Module, x: torch.Tensor, device: torch.device, batch_size: int = 1024) -> np.ndarray:
    net.eval()
    out = []
    for i in range(0, len(x), batch_size):
        logits = net(x[i : i + batch_size].to(device)).double()
        out.append(torch.softmax(logits, dim=1).cpu())
    return torch.cat(out).numpy()


def cross_val_probs(
    dataset: Dataset,
    model: ModelSpec = "mlp",
    folds: int = 5,
    seed: int = 0,
    *,
    loss: str = "ce",
    model_params: Mapping[str, Any] | None = None,
    **trainer_kwargs: Any,
) -> np.ndarray:
    """Out-of-sample predicted probabilities ``(N, K)`` (float64, rows sum to 1) by
    stratified K-fold cross-fitting.

    For fold ``f`` (:func:`stratified_folds` with ``seed``) a fresh model is trained with
    :class:`~robustlab.train.Trainer` and ``ERM(loss)`` on the samples of the other folds
    and predicts the samples of fold ``f``, so no sample is ever scored by a model that was
    trained on it.

    Parameters
    ----------
    dataset: the data with the labels to check (``dataset.y``).
    model: a model registry name (built with :func:`robustlab.models.for_dataset` on the
        fold's training part, i.e. normalised with that part's statistics) or a factory
        ``f(train_part) -> nn.Module``.
    folds: number of folds ``K >= 2`` (cleanlab's default is 5).
    seed: seeds the folds, each fold's model initialisation
        (``derive_seed("cross-fit-init", seed, f)``, under a forked global RNG) and its
        Trainer (``derive_seed("cross-fit", seed, f)``): same inputs, same probabilities.
    loss: the training loss (registry name).
    model_params: extra parameters for a registry model (``{"hidden": [128]}``).
    trainer_kwargs: :class:`~robustlab.train.Trainer` settings; defaults
        :data:`CROSS_FIT_DEFAULTS` (20 epochs, batch 64, lr 0.05, no progress bar).
    """
    from robustlab.train import ERM, Trainer, derive_seed

    if not isinstance(dataset, Dataset):
        raise ConfigError(f"dataset must be a robustlab Dataset, got {type(dataset).__name__}.")
    seed = check_int(seed, "seed", minimum=0)
    fold_of = stratified_folds(dataset.y, folds, seed)
    if "checkpoint_dir" in trainer_kwargs:
        raise ConfigError("cross_val_probs trains one model per fold and takes no checkpoint_dir.")
    kwargs = {**CROSS_FIT_DEFAULTS, **trainer_kwargs}
    device = torch.device(kwargs.get("device", "cpu"))
    probs = np.zeros((len(dataset), dataset.num_classes), dtype=np.float64)
    for f in range(int(folds)):
        held = np.flatnonzero(fold_of == f)
        fit_idx = np.flatnonzero(fold_of != f)
        train_part = dataset.subset(torch.from_numpy(fit_idx))
        net = _build_model(model, train_part, model_params or {}, derive_seed("cross-fit-init", seed, f))
        out_k = getattr(net, "num_classes", dataset.num_classes)
        if int(out_k) != dataset.num_classes:
            raise ConfigError(
                f"the model outputs {out_k} classes but the dataset has {dataset.num_classes}."
            )
        trainer = Trainer(net, ERM(loss), seed=derive_seed("cross-fit", seed, f), **kwargs)
        trainer.fit(train_part)
        p = _predict_proba(net, dataset.x[torch.as_tensor(held)], device)
        if p.shape != (len(held), dataset.num_classes):
            raise ConfigError(
                f"the model returned outputs of shape {p.shape} for {len(held)} samples of "
                f"{dataset.num_classes} classes."
            )
        probs[held] = p
    return probs


def check_pred_probs(pred_probs: Any, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Refuse probabilities that do not fit the labels: shape ``(N, K)``, finite, in
    ``[0, 1]``, rows summing to 1 (within 1e-4)."""
    if isinstance(pred_probs, torch.Tensor):
        pred_probs = pred_probs.detach().cpu().numpy()
    try:
        p = np.asarray(pred_probs, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"pred_probs must be an (N, K) array of numbers: {exc}") from None
    if p.shape != (len(labels), num_classes):
        raise InvalidInputError(
            f"pred_probs has shape {p.shape}; with {len(labels)} labels of {num_classes} "
            f"classes it must be ({len(labels)}, {num_classes})."
        )
    if not np.all(np.isfinite(p)) or (p < 0).any() or (p > 1).any():
        raise InvalidInputError("pred_probs must be finite probabilities in [0, 1].")
    sums = p.sum(1)
    if len(p) and not np.allclose(sums, 1.0, atol=1e-4):
        bad = int(np.argmax(np.abs(sums - 1.0)))
        raise InvalidInputError(
            f"pred_probs row {bad} sums to {sums[bad]:.6g}; each row must be a probability "
            f"distribution (apply softmax to logits)."
        )
    return p


@dataclass
class LabelIssues:
    """Suspected label errors, most suspect first.

    Attributes
    ----------
    indices: int64 dataset indices of the flagged samples, ranked (most suspect first).
    scores: label-quality score of each flagged sample (same order; lower = more suspect).
    quality: label-quality score of every sample (``(N,)``).
    num_samples: ``N``.
    method, options: how the issues were found.
    precision, recall: against the known flipped samples when the dataset carried
        ``clean_y`` (else ``None``); see :meth:`precision_recall`.
    """

    indices: np.ndarray
    scores: np.ndarray
    quality: np.ndarray
    num_samples: int
    method: str = "cleanlab"
    options: dict[str, Any] = field(default_factory=dict)
    precision: float | None = None
    recall: float | None = None

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def mask(self) -> np.ndarray:
        """Per-sample bool: flagged."""
        m = np.zeros(self.num_samples, dtype=bool)
        m[self.indices] = True
        return m

    def precision_recall(self, true_flipped_mask: Any) -> tuple[float, float]:
        """``(precision, recall)`` of the flagged set against a per-sample bool mask of the
        truly mislabelled samples: precision = |flagged and flipped| / |flagged|, recall =
        |flagged and flipped| / |flipped|; an empty denominator gives 0.0 (scikit-learn's
        ``zero_division=0``)."""
        if isinstance(true_flipped_mask, torch.Tensor):
            true_flipped_mask = true_flipped_mask.detach().cpu().numpy()
        truth = np.asarray(true_flipped_mask)
        if truth.shape != (self.num_samples,) or truth.dtype != bool:
            raise InvalidInputError(
                f"true_flipped_mask must be a bool array of shape ({self.num_samples},), got "
                f"{truth.dtype} {truth.shape}; e.g. dataset.y != dataset.clean_y."
            )
        hits = int(truth[self.indices].sum())
        precision = hits / len(self.indices) if len(self.indices) else 0.0
        flipped = int(truth.sum())
        recall = hits / flipped if flipped else 0.0
        return precision, recall

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (indices and scores as lists)."""
        return {
            "method": self.method,
            "options": dict(self.options),
            "num_samples": int(self.num_samples),
            "num_issues": len(self.indices),
            "indices": [int(i) for i in self.indices],
            "scores": [float(s) for s in self.scores],
            "precision": self.precision,
            "recall": self.recall,
        }


def _import_cleanlab() -> Any:
    try:
        import cleanlab
        import cleanlab.filter
        import cleanlab.rank
    except ImportError as exc:
        raise ConfigError(
            f"label-issue detection with method 'cleanlab' needs the optional package cleanlab "
            f">= 2.9, which could not be imported ({exc}). Install it with "
            f'`pip install "robustlab[noise]"`.'
        ) from exc
    return cleanlab


@issue_methods.register("cleanlab", aliases=("confident-learning",))
def cleanlab_issues(
    labels: np.ndarray,
    pred_probs: np.ndarray,
    *,
    filter_by: str = "prune_by_noise_rate",
    n_jobs: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Confident learning with cleanlab: ``(ranked flagged indices, quality of all samples)``.

    ``n_jobs=1`` keeps cleanlab in this process (no multiprocessing pool).
    """
    cleanlab = _import_cleanlab()
    try:
        ranked = cleanlab.filter.find_label_issues(
            labels, pred_probs, filter_by=filter_by, return_indices_ranked_by="self_confidence",
            n_jobs=n_jobs,
        )
        quality = cleanlab.rank.get_label_quality_scores(labels, pred_probs, method="self_confidence")
    except ValueError as exc:
        raise ConfigError(f"cleanlab refused the inputs: {exc}") from exc
    return np.asarray(ranked, dtype=np.int64), np.asarray(quality, dtype=np.float64)


def find_issues(
    dataset: Dataset,
    pred_probs: Any = None,
    *,
    method: str = "cleanlab",
    model: ModelSpec = "mlp",
    folds: int = 5,
    seed: int = 0,
    method_params: Mapping[str, Any] | None = None,
    **cross_fit_kwargs: Any,
) -> LabelIssues:
    """Ranked suspect labels of ``dataset`` (see the module docstring for the method).

    Parameters
    ----------
    dataset: the data whose labels ``dataset.y`` are checked; when it carries
        ``clean_y`` (labels corrupted by :mod:`robustlab.data.noise`), precision and recall
        against the flipped samples are filled in.
    pred_probs: out-of-sample probabilities ``(N, K)``; computed with
        :func:`cross_val_probs` (``model``, ``folds``, ``seed``, ``cross_fit_kwargs``) when
        ``None``. Never pass in-sample probabilities of a model trained on these labels.
    method: a registered method (``issue_methods.available()``): ``"cleanlab"``.
    method_params: options of the method (cleanlab: ``filter_by``, ``n_jobs``).
    """
    factory = issue_methods.get(method)  # unknown names first, with close matches
    name = issue_methods.canonical(method)
    if not isinstance(dataset, Dataset):
        raise ConfigError(f"dataset must be a robustlab Dataset, got {type(dataset).__name__}.")
    params = dict(method_params or {})
    from robustlab.registry import check_params

    check_params(factory, params, what=f"label-issue method {name!r}")
    if name == "cleanlab":
        _import_cleanlab()  # fail before the (long) cross-fitting
    labels = _labels_numpy(dataset.y)
    if pred_probs is None:
        pred_probs = cross_val_probs(dataset, model, folds, seed, **cross_fit_kwargs)
    elif cross_fit_kwargs:
        raise ConfigError(
            f"{', '.join(sorted(cross_fit_kwargs))} configure the cross-fitting, which does not "
            f"run when pred_probs is given."
        )
    p = check_pred_probs(pred_probs, labels, dataset.num_classes)
    ranked, quality = factory(labels, p, **params)
    issues = LabelIssues(
        indices=ranked,
        scores=quality[ranked],
        quality=quality,
        num_samples=len(labels),
        method=name,
        options={"folds": folds, "seed": seed, **params},
    )
    if dataset.clean_y is not None:
        issues.precision, issues.recall = issues.precision_recall(
            (dataset.y != dataset.clean_y).cpu().numpy()
        )
    return issues


__all__ = [
    "CROSS_FIT_DEFAULTS",
    "LabelIssues",
    "check_pred_probs",
    "cleanlab_issues",
    "cross_val_probs",
    "find_issues",
    "issue_methods",
    "stratified_folds",
]
