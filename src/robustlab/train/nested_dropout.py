"""Feature compression for noisy labels: nested dropout and its co-teaching fine-tune.

Chen, Hu, Shen, Ai & Suykens, "Compressing Features for Learning with Noisy Labels",
IEEE TNNLS 2022 (arXiv 2206.13140; the workshop version: Chen, Shen, Hu & Suykens,
"Boosting Co-teaching with Compression Regularization for Label Noise", CVPR-W 2021);
official code ``yingyichen-cyy/Nested-Co-teaching`` (``nested/train_resnet.py``,
``co_teaching_resnet/``), whose defaults are quoted below.

Nested dropout (Rippel, Gelbart & Adams 2014) on the feature layer ``f(x) in R^d`` (the
input of the last linear layer): draw ``k in {1..d}`` and keep only the first ``k``
coordinates, ``f_k(x) = f(x) * [1_{j <= k}]_j`` (a *prefix* mask), so that the features
become ordered by importance; a small ``k`` is a compressed representation that the noisy
labels cannot be memorised into. After training, ``k`` is chosen on a (noisy) validation
set (:func:`choose_k`) and the model is truncated to it (:func:`compress`). Optionally two
compressed networks are then fine-tuned with co-teaching (``nested-co-teaching``).

>>> from robustlab import train
>>> obj = train.create("nested-dropout", std=10)                 # CIFAR-10's --nested 10
>>> train.Trainer(model, obj, epochs=30).fit(noisy_train)
>>> choice = choose_k(model, val.x, val.y)                      # best k on validation
>>> compress(model, choice.k)                                   # the plain model, truncated
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from robustlab.errors import ConfigError, InvalidInputError
from robustlab.losses import Loss
from robustlab.train.noisy import CoTeaching, _loss_name, _make_criterion
from robustlab.train.objectives import (
    Objective,
    accuracy_metric,
    apply_loss,
    loss_setup,
    objectives,
)
from robustlab.validation import check_choice, check_float, check_int


# -- the pieces -------------------------------------------------------------------------------
def k_distribution(d: int, std: float, mu: float = 0.0) -> torch.Tensor:
    """``p(k) ∝ exp(-((k - mu) / std)^2)`` for ``k = 1..d`` (float64, sums to 1): the official
    ``GaussianDist(mu, std, N)`` of ``nested/train_resnet.py`` (note: no factor 1/2 in the
    exponent). With ``mu = 0`` it is a half-Gaussian over the prefix length, putting most mass
    on small ``k``, the role of the geometric distribution in Rippel et al. (2014)."""
    d = check_int(d, "feature dimension d", minimum=1)
    std = check_float(std, "nested-dropout std", low=0.0, low_open=True)
    k = torch.arange(1, d + 1, dtype=torch.float64)
    logits = -(((k - float(mu)) / std) ** 2)
    return torch.softmax(logits, dim=0)


def sample_k(n: int, probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """``n`` prefix lengths in ``{1..d}`` drawn i.i.d. from ``probs`` (int64, shape ``(n,)``)."""
    return torch.multinomial(probs, int(n), replacement=True, generator=generator) + 1


def prefix_masks(k: torch.Tensor, d: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Row ``i`` keeps the first ``k_i`` of ``d`` coordinates: ``mask[i, j] = 1[j < k_i]``."""
    k = torch.as_tensor(k).reshape(-1, 1)
    return (torch.arange(int(d), device=k.device).unsqueeze(0) < k).to(dtype)


def feature_layer(model: nn.Module, layer: str | None = None) -> nn.Module:
    """The module whose *input* is the feature vector: ``layer`` by name
    (``model.get_submodule``), or by default the last ``nn.Linear`` of the model (the
    classifier of every zoo model: ``mlp``, ``mnist_net``, ``small_cnn``, the ResNets)."""
    if layer is not None:
        try:
            return model.get_submodule(layer)
        except AttributeError:
            names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
            raise ConfigError(
                f"the model has no submodule {layer!r} for nested dropout; its linear layers are {names}."
            ) from None
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(
            "nested dropout masks the input of the model's last nn.Linear (its classifier), but "
            "this model has none; pass layer='<name of the classifier module>'."
        )
    return linears[-1]


@contextlib.contextmanager
def masked_features(layer: nn.Module, mask_fn: Any) -> Iterator[None]:
    """Within the block, ``layer``'s input ``f`` is replaced by ``f * mask_fn(f)``."""

    def hook(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        f = args[0]
        if f.dim() != 2:
            raise InvalidInputError(
                f"nested dropout needs a (batch, d) feature input to {type(layer).__name__}, got shape "
                f"{tuple(f.shape)}; choose a layer whose input is a flat feature vector."
            )
        return (f * mask_fn(f), *args[1:])

    handle = layer.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


# -- the objective ----------------------------------------------------------------------------
@objectives.register("nested-dropout", aliases=("nested",))
class NestedDropout(Objective):
    """Nested dropout on the feature layer (Chen et al. 2022, Sec. III-A, Eq. (3)-(4); module
    docstring for the paper and code).

    For each training sample ``i`` a prefix length ``k_i ~ p(k) ∝ exp(-((k - mu)/std)^2)``
    on ``{1..d}`` (:func:`k_distribution`) is drawn from the objective's generator (seeded
    by the Trainer per epoch, so a run is reproducible), the features entering the
    classifier are masked to their first ``k_i`` coordinates (:func:`prefix_masks`), and the
    per-sample loss is ``base(classifier(f(x_i) * m_{k_i}), y_i)``. ``k = d`` is the plain
    model exactly.

    Parameters
    ----------
    loss: the base loss (default cross-entropy, as in the paper); keyword arguments go to it.
    std: the official ``--nested`` (10 in the CIFAR-10 runs, 100 for CIFAR-100 and
        Clothing1M; default 10).
    mu: the official ``mu`` (default 0).
    per: ``"sample"`` (default: one ``k`` per sample, as the paper's per-example
        formulation and issue 14 ask) or ``"batch"`` (one ``k`` per minibatch, as the
        official code draws it with ``np.random.choice``).
    layer: name of the module whose input is masked (default: the last ``nn.Linear``).

    Deviations from the official code: the classifier keeps its bias (the official
    ``NetClassifier`` has none; the bias is not a feature and is never masked); no separate
    learning-rate warm-up (use the Trainer's ``warmup_epochs``). At evaluation the model is
    unmasked until :func:`compress` truncates it to the ``k`` chosen by :func:`choose_k`.

    Metrics: ``accuracy`` (of the masked forward pass) and ``nested_k`` (the mean drawn k).
    """

    def __init__(
        self,
        loss: str | Loss = "ce",
        *,
        std: float = 10.0,
        mu: float = 0.0,
        per: str = "sample",
        layer: str | None = None,
        **loss_params: Any,
    ) -> None:
        super().__init__()
        self.std = check_float(std, "nested-dropout std", low=0.0, low_open=True)
        self.mu = check_float(mu, "nested-dropout mu")
        self.per = check_choice(per, "nested-dropout per", ("sample", "batch"))
        if layer is not None and not isinstance(layer, str):
            raise ConfigError(f"nested-dropout layer must be a module name such as 'layers.4', got {layer!r}.")
        self.layer = layer
        self.criterion = _make_criterion(loss, loss_params, "nested-dropout", "std, mu, per, layer, loss")
        self.loss_name = _loss_name(loss)
        self.loss_params = dict(loss_params)
        self._probs: dict[int, torch.Tensor] = {}

    @property
    def needs_indices(self) -> bool:  # type: ignore[override]
        return bool(getattr(self.criterion, "needs_indices", False))

    def setup(self, num_samples: int, num_classes: int) -> None:
        loss_setup(self.criterion, num_samples, num_classes)

    def probs(self, d: int) -> torch.Tensor:
        if d not in self._probs:
            self._probs[d] = k_distribution(d, self.std, self.mu)
        return self._probs[d]

    def draw(self, batch: int, d: int) -> torch.Tensor:
        """The prefix lengths of a batch: ``batch`` draws, or one draw repeated (``per="batch"``)."""
        if self.generator is None:
            raise ConfigError(
                "nested-dropout has no random generator yet: the Trainer sets one per epoch through "
                "objective.start_epoch(epoch, generator); call that first when using it directly."
            )
        n = batch if self.per == "sample" else 1
        k = sample_k(n, self.probs(d), self.generator)
        return k.expand(batch) if self.per == "batch" else k

    def loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        drawn: list[torch.Tensor] = []

        def mask_fn(f: torch.Tensor) -> torch.Tensor:
            k = self.draw(f.shape[0], f.shape[1]).to(f.device)
            drawn.append(k)
            return prefix_masks(k, f.shape[1], f.dtype)

        with masked_features(feature_layer(model, self.layer), mask_fn):
            logits = model(x)
        per_sample = apply_loss(self.criterion, logits, y, index)
        k = drawn[-1].float() if drawn else torch.zeros(len(y))
        return per_sample, {"accuracy": accuracy_metric(logits, y), "nested_k": k.detach()}

    def state_dict(self) -> dict[str, Any]:
        return {"criterion": self.criterion.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "criterion" in state:
            self.criterion.load_state_dict(state["criterion"])

    def get_params(self) -> dict[str, Any]:
        return {"loss": self.loss_name, "std": self.std, "mu": self.mu, "per": self.per, "layer": self.layer,
                **self.loss_params}


# -- choosing and applying k ----------------------------------------------------------------
@dataclass(frozen=True)
class KChoice:
    """The validation accuracy of every prefix length and the chosen one."""

    k: int
    accuracy: float
    accuracies: dict[int, float]


@torch.no_grad()
def choose_k(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    ks: Sequence[int] | None = None,
    layer: str | None = None,
    batch_size: int = 512,
) -> KChoice:
    """The prefix length with the best accuracy on ``(x, y)`` (the official ``TestNested``:
    every ``k = 1..d`` evaluated in eval mode; ties go to the *smallest* ``k``, which the
    official ``argmax(acc - 1e-5 * k)`` approximates). ``ks`` restricts the candidates."""
    if len(x) != len(y) or len(x) == 0:
        raise InvalidInputError(f"choose_k needs matching, non-empty x and y, got {len(x)} and {len(y)} points.")
    lay = feature_layer(model, layer)
    was = model.training
    model.eval()
    feats: list[torch.Tensor] = []

    def grab(_m: nn.Module, args: tuple[Any, ...]) -> None:
        feats.append(args[0].detach())

    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    correct: torch.Tensor | None = None
    cand: torch.Tensor | None = None
    try:
        for s in range(0, len(x), batch_size):
            xb, yb = x[s:s + batch_size].to(device), y[s:s + batch_size].to(device)
            feats.clear()
            handle = lay.register_forward_pre_hook(grab)
            try:
                model(xb)
            finally:
                handle.remove()
            f = feats[-1]
            d = f.shape[1]
            if cand is None:
                cand = torch.arange(1, d + 1) if ks is None else torch.tensor(sorted({int(k) for k in ks}))
                if cand.numel() == 0 or int(cand.min()) < 1 or int(cand.max()) > d:
                    raise ConfigError(f"choose_k: every k must lie in 1..{d} (the feature dimension), got {ks}.")
                correct = torch.zeros(len(cand), dtype=torch.long)
            assert correct is not None
            if isinstance(lay, nn.Linear):  # logits of every prefix at once: cumulative feature contributions
                contrib = f.unsqueeze(1) * lay.weight.unsqueeze(0)  # (B, C, d)
                logits_all = contrib.cumsum(dim=2)[:, :, cand.to(f.device) - 1]  # (B, C, K)
                if lay.bias is not None:
                    logits_all = logits_all + lay.bias.view(1, -1, 1)
                pred = logits_all.argmax(dim=1)  # (B, K)
                correct += (pred == yb.unsqueeze(1)).sum(0).cpu()
            else:
                for j, k in enumerate(cand.tolist()):
                    out = lay(f * prefix_masks(torch.tensor([k], device=f.device), d, f.dtype))
                    correct[j] += int((out.argmax(1) == yb).sum())
    finally:
        model.train(was)
    assert correct is not None and cand is not None
    acc = correct.double() / len(x)
    best = int(torch.nonzero(acc == acc.max())[0])  # the smallest k among the best
    return KChoice(k=int(cand[best]), accuracy=float(acc[best]),
                   accuracies={int(k): float(a) for k, a in zip(cand.tolist(), acc.tolist())})


@torch.no_grad()
def compress(model: nn.Module, k: int, *, layer: str | None = None) -> nn.Module:
    """Truncate ``model`` to its first ``k`` features, in place: the columns ``k:`` of the
    classifier's weight are set to 0, which is exactly masking the features to the prefix
    ``k`` (the official test-time ``feature * mask_feat_dim[best_k]``) in a plain model that
    needs no hook. Returns ``model``."""
    lay = feature_layer(model, layer)
    if not isinstance(lay, nn.Linear):
        raise ConfigError(f"compress truncates an nn.Linear classifier; {type(lay).__name__} is not one.")
    k = check_int(k, "k", minimum=1)
    if k > lay.in_features:
        raise ConfigError(f"k={k} exceeds the feature dimension {lay.in_features}.")
    lay.weight[:, k:] = 0.0
    return model


# -- co-teaching fine-tune ---------------------------------------------------------------------
@objectives.register("nested-co-teaching", aliases=("nested-coteaching",))
class NestedCoTeaching(CoTeaching):
    """The second stage of Chen et al. (2022, Sec. III-C; the workshop paper's "Nested
    Co-teaching"): two networks trained with nested dropout, each truncated to its chosen
    ``k``, are fine-tuned together with co-teaching (:class:`~robustlab.train.noisy.CoTeaching`,
    Han et al. 2018: same schedule, losses and parameters).

    Parameters (besides co-teaching's ``forget_rate``, ``num_gradual``, ``exponent``, ``loss``)
    ----------
    k: features the model keeps (``None``: all); ``peer_k``: the peer's (default ``k``).
        The truncation is :func:`compress` and stays in force during fine-tuning: the
        gradient of the truncated classifier columns is zeroed before every step, so the
        trained and evaluated model is the compressed one.
    peer: the second nested-dropout network (an ``nn.Module`` of the model's architecture),
        copied at :meth:`bind`. ``None``: co-teaching's re-initialised peer (then the peer
        starts untrained, unlike the paper).
    layer: the classifier module name (default: the last ``nn.Linear``).
    """

    def __init__(
        self,
        forget_rate: float | None = None,
        *,
        k: int | None = None,
        peer_k: int | None = None,
        peer: nn.Module | None = None,
        layer: str | None = None,
        num_gradual: int = 10,
        exponent: float = 1.0,
        loss: str | Loss = "ce",
        **loss_params: Any,
    ) -> None:
        # our own parameters and co-teaching's are checked before co-teaching asks for forget_rate
        self.k = None if k is None else check_int(k, "nested-co-teaching k", minimum=1)
        self.peer_k = self.k if peer_k is None else check_int(peer_k, "nested-co-teaching peer_k", minimum=1)
        check_int(num_gradual, "nested-co-teaching num_gradual (T_k)", minimum=0)
        check_float(exponent, "nested-co-teaching exponent (c)", low=0.0, low_open=True)
        super().__init__(forget_rate, num_gradual=num_gradual, exponent=exponent, loss=loss, **loss_params)
        if peer is not None and not isinstance(peer, nn.Module):
            raise ConfigError(f"nested-co-teaching peer must be a trained torch module, got {type(peer).__name__}.")
        self.peer_init = peer
        self.layer = layer

    def bind(self, model: nn.Module, seed: int) -> None:
        super().bind(model, seed)
        if self.peer_init is not None:
            assert self.peer is not None
            try:
                self.peer.load_state_dict(self.peer_init.state_dict())
            except RuntimeError as exc:
                raise ConfigError(f"nested-co-teaching: the peer does not fit the model's architecture ({exc}).") from exc
        if self.k is not None:
            compress(model, self.k, layer=self.layer)
        if self.peer_k is not None:
            assert self.peer is not None
            compress(self.peer, self.peer_k, layer=self.layer)

    def after_backward(self, model: nn.Module) -> None:
        for net, k in ((model, self.k), (self.peer, self.peer_k)):
            if net is None or k is None:
                continue
            w = feature_layer(net, self.layer).weight
            if isinstance(w, torch.Tensor) and w.grad is not None:
                w.grad[:, k:] = 0.0

    def get_params(self) -> dict[str, Any]:
        return {**super().get_params(), "k": self.k, "peer_k": self.peer_k, "layer": self.layer,
                "peer": None if self.peer_init is None else type(self.peer_init).__name__}


__all__ = [
    "KChoice",
    "NestedCoTeaching",
    "NestedDropout",
    "choose_k",
    "compress",
    "feature_layer",
    "k_distribution",
    "masked_features",
    "prefix_masks",
    "sample_k",
]
