"""Stateful objectives for learning with noisy labels: ELR, PS-KD and Co-teaching.

Each keeps state across steps (per-sample targets, last-epoch predictions, a second
network) that is part of :meth:`~robustlab.train.objectives.Objective.state_dict`, so a
run interrupted and resumed from its checkpoint ends with the same weights and the same
state as an uninterrupted one.

>>> from robustlab import train
>>> import robustlab.train.noisy  # registers "elr", "ps-kd", "co-teaching"
>>> obj = train.create("elr", preset="cifar100")                  # beta 0.9, lam 7
>>> obj = train.create("ps-kd", alpha=0.8)
>>> obj = train.create("co-teaching", forget_rate=0.4)            # tau = the noise rate

Notation: ``p = softmax(z)`` are the model's probabilities, ``y`` the (noisy) label,
``i`` the dataset index of a sample, ``t`` the 0-based epoch and ``T`` the number of
training epochs.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.errors import CheckpointError, ConfigError, InvalidInputError
from robustlab.losses import Loss
from robustlab.train.objectives import (
    Objective,
    accuracy_metric,
    apply_loss,
    as_loss,
    loss_setup,
    objectives,
)
from robustlab.validation import check_float, check_int

log = logging.getLogger("robustlab.train")

#: ELR's ``(beta, lam)`` from the official configs (shengliu66/ELR, ``ELR/config_*.json``).
ELR_PRESETS: dict[str, dict[str, float]] = {
    "cifar10": {"beta": 0.7, "lam": 3.0},  # config_cifar10.json (symmetric noise)
    "cifar100": {"beta": 0.9, "lam": 7.0},  # config_cifar100.json
    "cifar10-asym": {"beta": 0.9, "lam": 1.0},  # config_cifar10_asym.json
}

#: ELR clamps the probabilities to ``[ELR_CLAMP, 1 - ELR_CLAMP]`` (official code).
ELR_CLAMP = 1e-4


def _require_index(index: torch.Tensor | None, num_samples: int | None, what: str) -> torch.Tensor:
    """Refuse a missing index (and indices outside the training set)."""
    if index is None:
        raise ConfigError(
            f"{what} keeps per-sample state and needs dataset indices with every batch; "
            f"train it with robustlab's Trainer (which passes them) or pass index= explicitly."
        )
    if num_samples is None:
        raise ConfigError(
            f"{what} has no per-sample state yet: call setup(num_samples, num_classes) before "
            f"the first batch (the Trainer does this in fit())."
        )
    index = torch.as_tensor(index).long().reshape(-1)
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= num_samples):
        raise InvalidInputError(
            f"{what}: dataset index {int(index.max())} is outside the training set of "
            f"{num_samples} samples it was set up for."
        )
    return index


def _make_criterion(loss: str | Loss, loss_params: dict[str, Any], what: str, own: str) -> Loss:
    """The base loss; with a Loss instance, leftover keywords are typos of our own parameters."""
    if isinstance(loss, Loss) and loss_params:
        from robustlab.registry import close_matches

        names = ", ".join(repr(k) for k in loss_params)
        near = [m for k in loss_params for m in close_matches(k, own.split(", "), n=1)]
        hint = f" Did you mean {', '.join(map(repr, near))}?" if near else ""
        raise ConfigError(
            f"{what} does not take {names}.{hint} Its parameters are {own}; parameters of the "
            f"base loss go with the loss."
        )
    return as_loss(loss, **loss_params)


def _loss_name(loss: str | Loss) -> str:
    return loss if isinstance(loss, str) else getattr(type(loss), "registry_name", type(loss).__name__)


def _check_state_shape(t: torch.Tensor, expected: torch.Tensor, what: str, key: str) -> None:
    if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(expected.shape):
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise CheckpointError(
            f"the checkpoint's {what} {key!r} has shape {shape}, but this training set needs "
            f"{tuple(expected.shape)}; the checkpoint belongs to other data. Delete it or use "
            f"another checkpoint_dir."
        )


# -- ELR -------------------------------------------------------------------------------------
@objectives.register("elr")
class ELR(Objective):
    """Early-learning regularisation (Liu, Niles-Weed, Razavian & Fernandez-Granda, NeurIPS
    2020, "Early-Learning Regularization Prevents Memorization of Noisy Labels": the ELR
    term and its temporal-ensembling targets, Sec. 4; official code shengliu66/ELR,
    ``ELR/model/loss.py``, which the two equations below follow).

    Every sample ``i`` keeps a target ``t_i`` (zeros at the start), a temporal ensemble of
    the model's past predictions. At each step, with ``p`` clamped to
    ``[1e-4, 1 - 1e-4]`` and detached,

    ``t_i <- beta * t_i + (1 - beta) * p_i / sum_k p_ik``   (the update precedes the loss),

    and the per-sample loss is

    ``L_i = base(z_i, y_i) + lam * log(1 - <p_i, t_i>)``

    with the gradient flowing through ``p_i`` only. The regulariser pulls the prediction
    towards the early-learning targets instead of the (possibly wrong) label.

    Parameters
    ----------
    loss: the base loss (registry name or a Loss instance), default cross-entropy as in
        the paper; extra keyword arguments go to it (``ELR("gce", q=0.7)``).
    beta: target momentum in ``[0, 1)``.
    lam: regularisation weight ``>= 0``.
    preset: ``"cifar10"`` (beta 0.7, lam 3), ``"cifar100"`` (beta 0.9, lam 7) or
        ``"cifar10-asym"`` (beta 0.9, lam 1), the official configs; explicit ``beta``/
        ``lam`` override the preset. Without preset and values: the CIFAR-10 values.

    Needs dataset indices (refuses ``index=None``).
    """

    needs_indices = True  # type: ignore[assignment]

    def __init__(
        self,
        loss: str | Loss = "ce",
        *,
        beta: float | None = None,
        lam: float | None = None,
        preset: str | None = None,
        **loss_params: Any,
    ) -> None:
        super().__init__()
        base = dict(ELR_PRESETS["cifar10"])
        if preset is not None:
            key = str(preset).lower().replace("_", "-")
            if key not in ELR_PRESETS:
                from robustlab.registry import close_matches

                near = close_matches(str(preset), list(ELR_PRESETS))
                hint = f" Did you mean {', '.join(map(repr, near))}?" if near else ""
                raise ConfigError(
                    f"unknown ELR preset {preset!r}.{hint} Presets: {', '.join(ELR_PRESETS)}."
                )
            base = dict(ELR_PRESETS[key])
            preset = key
        # beta = 1 would freeze the targets at zero
        self.beta = check_float(base["beta"] if beta is None else beta, "ELR beta", low=0.0, high=1.0, high_open=True)
        self.lam = check_float(base["lam"] if lam is None else lam, "ELR lam", low=0.0)
        self.preset = preset
        self.criterion = _make_criterion(loss, loss_params, "ELR", "loss, beta, lam, preset")
        self.loss_name = _loss_name(loss)
        self.loss_params = dict(loss_params)
        self.target: torch.Tensor | None = None

    def setup(self, num_samples: int, num_classes: int) -> None:
        self.target = torch.zeros(int(num_samples), int(num_classes), dtype=torch.float32)
        loss_setup(self.criterion, num_samples, num_classes)

    def start_epoch(self, epoch: int, generator: torch.Generator) -> None:
        super().start_epoch(epoch, generator)
        hook = getattr(self.criterion, "start_epoch", None)
        if callable(hook):
            hook(epoch)

    def loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        n = None if self.target is None else len(self.target)
        index = _require_index(index, n, "ELR")
        assert self.target is not None
        logits = model(x)
        if self.target.device != logits.device:
            self.target = self.target.to(logits.device)
        index = index.to(logits.device)
        p = F.softmax(logits.float(), dim=1).clamp(ELR_CLAMP, 1.0 - ELR_CLAMP)
        with torch.no_grad():
            pd = p.detach()
            self.target[index] = self.beta * self.target[index] + (1.0 - self.beta) * (
                pd / pd.sum(dim=1, keepdim=True)
            )
        t = self.target[index]
        reg = torch.log(1.0 - (t * p).sum(dim=1))
        base = apply_loss(self.criterion, logits, y, index)
        return base.float() + self.lam * reg, {"accuracy": accuracy_metric(logits, y)}

    def state_dict(self) -> dict[str, Any]:
        return {"target": self.target, "criterion": self.criterion.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "target" in state and state["target"] is not None:
            if self.target is not None:
                _check_state_shape(state["target"], self.target, "ELR state", "target")
            self.target = state["target"].detach().clone().float()
        if "criterion" in state:
            self.criterion.load_state_dict(state["criterion"])

    def get_params(self) -> dict[str, Any]:
        return {"loss": self.loss_name, "beta": self.beta, "lam": self.lam, "preset": self.preset,
                **self.loss_params}


# -- PS-KD -----------------------------------------------------------------------------------
@objectives.register("ps-kd", aliases=("pskd",))
class PSKD(Objective):
    """Progressive self-knowledge distillation (Kim, Ji, Yoon & Hwang, ICCV 2021,
    "Self-Knowledge Distillation with Progressive Refinement of Targets": the progressive
    soft targets and the linear schedule of ``alpha_t``, Sec. 3; official code
    lgcnsai/PS-KD-Pytorch, ``main.py`` and ``loss/pskd_loss.py``).

    The model is its own teacher: sample ``i`` is trained at epoch ``t`` (0-based) on the
    soft target

    ``q_i = (1 - alpha_t) * onehot(y_i) + alpha_t * P_i``,   ``alpha_t = alpha * (t + 1) / T``,

    where ``P_i`` is the model's (detached) softmax prediction for sample ``i`` in the
    previous epoch, stored per sample (at epoch 0, ``P_i = onehot(y_i)``: plain CE), and
    ``T`` the number of training epochs. The per-sample loss is
    ``-sum_k q_ik log softmax(z_i)_k``. ``(t + 1) / T`` is the official code's
    ``(epoch + 1) / end_epoch``, i.e. ``alpha_t = alpha_T * t'/T`` with the 1-based epoch
    ``t'`` of the paper. The stored prediction is that of the training forward pass (train
    mode), as in the official code.

    Parameters
    ----------
    alpha: ``alpha_T``, the weight of the self-teacher at the last epoch, in ``[0, 1]``;
        default 0.8 (official ``--alpha_T``).

    Needs dataset indices (refuses ``index=None``).
    """

    needs_indices = True  # type: ignore[assignment]

    def __init__(self, alpha: float = 0.8) -> None:
        super().__init__()
        self.alpha = check_float(alpha, "PS-KD alpha (alpha_T)", low=0.0, high=1.0)
        self.epoch = 0
        self.epochs: int | None = None
        self.predictions: torch.Tensor | None = None

    def check_training(self, epochs: int) -> None:
        self.epochs = int(epochs)

    def setup(self, num_samples: int, num_classes: int) -> None:
        self.predictions = torch.zeros(int(num_samples), int(num_classes), dtype=torch.float32)

    def start_epoch(self, epoch: int, generator: torch.Generator) -> None:
        super().start_epoch(epoch, generator)
        self.epoch = int(epoch)

    def alpha_at(self, epoch: int) -> float:
        """``alpha_t = alpha * (epoch + 1) / T`` for the 0-based ``epoch``."""
        total = self.epochs if self.epochs is not None else self.total_epochs
        return max(0.0, self.alpha * (int(epoch) + 1) / max(int(total), 1))

    def soft_targets(self, y: torch.Tensor, index: torch.Tensor, num_classes: int) -> torch.Tensor:
        """The targets ``q`` of the current epoch for labels ``y`` of samples ``index``."""
        n = None if self.predictions is None else len(self.predictions)
        index = _require_index(index, n, "PS-KD")
        assert self.predictions is not None
        onehot = F.one_hot(y.long(), num_classes).float()
        if self.epoch == 0:
            return onehot
        a = self.alpha_at(self.epoch)
        prev = self.predictions[index.to(self.predictions.device)].to(onehot.device)
        return (1.0 - a) * onehot + a * prev

    def loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        n = None if self.predictions is None else len(self.predictions)
        index = _require_index(index, n, "PS-KD")
        assert self.predictions is not None
        logits = model(x)
        if self.predictions.device != logits.device:
            self.predictions = self.predictions.to(logits.device)
        index = index.to(logits.device)
        logp = F.log_softmax(logits.float(), dim=1)
        q = self.soft_targets(y, index, logits.shape[1])
        per_sample = -(q * logp).sum(dim=1)
        with torch.no_grad():
            self.predictions[index] = logp.detach().exp()
        return per_sample, {"accuracy": accuracy_metric(logits, y)}

    def state_dict(self) -> dict[str, Any]:
        return {"predictions": self.predictions}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("predictions") is not None:
            if self.predictions is not None:
                _check_state_shape(state["predictions"], self.predictions, "PS-KD state", "predictions")
            self.predictions = state["predictions"].detach().clone().float()

    def get_params(self) -> dict[str, Any]:
        return {"alpha": self.alpha}


# -- Co-teaching ----------------------------------------------------------------------------
@objectives.register("co-teaching", aliases=("coteaching",))
class CoTeaching(Objective):
    """Co-teaching (Han, Yao, Yu, Niu, Xu, Hu, Tsang & Sugiyama, NeurIPS 2018,
    "Co-teaching: Robust Training of Deep Neural Networks with Extremely Noisy Labels",
    Algorithm 1; official code bhanML/Co-teaching, ``loss.py`` and ``main.py``).

    Two networks, the model ``f`` and a peer ``g``, see the same minibatch of ``B``
    samples. Each ranks the batch by its own per-sample loss and keeps its
    ``num_remember = floor((1 - tau_t) * B)`` smallest-loss samples (the official
    ``int(remember_rate * len(loss_sorted))`` with ``remember_rate = 1 - forget_rate``);
    each network is then updated on the samples its **peer** kept:

    ``L = mean_{i in S_g} l(f(x_i), y_i) + mean_{i in S_f} l(g(x_i), y_i)``.

    The two terms touch disjoint parameters, so one optimiser over both networks makes
    the same updates as the official two optimisers (global-norm ``grad_clip`` couples
    them, though). The official code divides the already averaged loss once more by
    ``num_remember``; that constant factor is not reproduced (Adam, the official
    optimiser, is invariant to it up to its epsilon).

    Forget rate at epoch ``t`` (0-based, i.e. the number of finished epochs):
    ``tau_t = tau * min((t / T_k)^c, 1)``; the paper's keep fraction is
    ``R(t) = 1 - tau_t`` (the paper writes ``R(T) = 1 - min{T tau / T_k, tau}``).
    The official script builds ``linspace(0, tau^c, T_k)`` and starts training at index 1,
    which reaches ``tau`` after ``T_k - 1`` epochs; we follow the paper's schedule.

    Parameters
    ----------
    forget_rate: ``tau`` in ``[0, 1)``; required (the official default is the noise rate).
    num_gradual: ``T_k``, epochs of the linear ramp (official default 10; 0 = ``tau`` from
        the start).
    exponent: ``c`` (official default 1; the paper also tries 0.5 and 2).
    loss: per-sample loss for ranking and updating (default cross-entropy, as in the
        paper); stateful losses are refused (both networks would update their state).

    The peer network
    ----------------
    :meth:`bind` builds the peer as ``copy.deepcopy(model)`` re-initialised by calling
    ``reset_parameters()`` of every submodule on a CPU copy under a forked global RNG
    seeded with ``derive_seed("co-teaching-peer", seed)`` (the run's seed), then moved to
    the model's device: the same seed gives the same peer on every machine, and the
    global RNG is left as it was. Parameters of submodules without ``reset_parameters``
    keep the model's values (a warning is logged). :meth:`trainable_modules` returns the
    peer so that the Trainer optimises it; its weights are part of :meth:`state_dict`.
    The model (not the peer) is the network that is evaluated and saved.
    """

    def __init__(
        self,
        forget_rate: float | None = None,
        *,
        num_gradual: int = 10,
        exponent: float = 1.0,
        loss: str | Loss = "ce",
        **loss_params: Any,
    ) -> None:
        super().__init__()
        if forget_rate is None:
            raise ConfigError(
                "co-teaching needs forget_rate (tau, the fraction of each batch to drop once "
                "the ramp is over); the official code uses the noise rate, e.g. forget_rate=0.4 "
                "for 40% label noise."
            )
        # a forget rate of 1 would drop every sample
        self.forget_rate = check_float(forget_rate, "co-teaching forget_rate", low=0.0, high=1.0, high_open=True)
        self.num_gradual = check_int(num_gradual, "co-teaching num_gradual (T_k)", minimum=0)
        self.exponent = check_float(exponent, "co-teaching exponent (c)", low=0.0, low_open=True)
        self.criterion = _make_criterion(
            loss, loss_params, "co-teaching", "forget_rate, num_gradual, exponent, loss"
        )
        if getattr(self.criterion, "needs_indices", False):
            raise ConfigError(
                f"co-teaching cannot use the stateful loss {_loss_name(loss)!r}: both networks "
                f"would update its per-sample state. Use a stateless loss (ce, gce, sce, ...)."
            )
        self.loss_name = _loss_name(loss)
        self.loss_params = dict(loss_params)
        self.peer: nn.Module | None = None
        self.epoch = 0

    # -- the peer ---------------------------------------------------------------------------
    def bind(self, model: nn.Module, seed: int) -> None:
        """Build the peer network from ``model`` (see the class docstring)."""
        from robustlab.train.trainer import derive_seed

        try:
            device = next(model.parameters()).device
        except StopIteration:
            raise ConfigError("co-teaching needs a model with parameters to copy as its peer.") from None
        peer = copy.deepcopy(model).cpu()
        uncovered = [
            name for name, m in peer.named_modules()
            if any(True for _ in m.parameters(recurse=False)) and not callable(getattr(m, "reset_parameters", None))
        ]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed("co-teaching-peer", int(seed)))
            for m in peer.modules():
                reset = getattr(m, "reset_parameters", None)
                if callable(reset):
                    reset()
        if uncovered:
            log.warning(
                "co-teaching: the peer's submodules %s have no reset_parameters(); they start "
                "from the model's weights", ", ".join(uncovered),
            )
        self.peer = peer.to(device)
        self.peer.train(model.training)

    def trainable_modules(self) -> list[nn.Module]:
        return [] if self.peer is None else [self.peer]

    def _need_peer(self) -> nn.Module:
        if self.peer is None:
            raise ConfigError(
                "co-teaching has no peer network: call objective.bind(model, seed) before "
                "Trainer.fit (it copies the model's architecture and re-initialises it from seed)."
            )
        return self.peer

    def setup(self, num_samples: int, num_classes: int) -> None:
        self._need_peer()

    def start_epoch(self, epoch: int, generator: torch.Generator) -> None:
        super().start_epoch(epoch, generator)
        self.epoch = int(epoch)

    # -- the schedule ---------------------------------------------------------------------
    def forget_rate_at(self, epoch: int) -> float:
        """``tau_t = tau * min((epoch / T_k)^c, 1)`` for the 0-based ``epoch``."""
        if self.num_gradual == 0:
            return self.forget_rate
        return self.forget_rate * min((max(int(epoch), 0) / self.num_gradual) ** self.exponent, 1.0)

    def num_remember(self, batch_size: int, epoch: int | None = None) -> int:
        """``floor((1 - tau_t) * B)``, computed as the official ``int(remember_rate * B)`` in
        floating point (which can fall one short of the exact floor: ``tau_t = 0.08``,
        ``B = 125`` keeps 114, not 115, in both)."""
        remember_rate = 1.0 - self.forget_rate_at(self.epoch if epoch is None else epoch)
        return int(remember_rate * int(batch_size))

    def loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        peer = self._need_peer()
        logits_f = model(x)
        logits_g = peer(x)
        loss_f = apply_loss(self.criterion, logits_f, y, None).float()
        loss_g = apply_loss(self.criterion, logits_g, y, None).float()
        b = len(y)
        k = self.num_remember(b)
        with torch.no_grad():
            keep_f = torch.zeros(b, dtype=torch.bool, device=loss_f.device)  # kept by f, for g
            keep_g = torch.zeros(b, dtype=torch.bool, device=loss_f.device)  # kept by g, for f
            keep_f[torch.argsort(loss_f.detach(), stable=True)[:k]] = True
            keep_g[torch.argsort(loss_g.detach(), stable=True)[:k]] = True
        if k == 0:
            per_sample = 0.0 * (loss_f + loss_g)
        else:
            per_sample = (b / k) * (
                torch.where(keep_g, loss_f, torch.zeros_like(loss_f))
                + torch.where(keep_f, loss_g, torch.zeros_like(loss_g))
            )
        metrics = {
            "accuracy": accuracy_metric(logits_f, y),
            "peer_accuracy": accuracy_metric(logits_g, y),
            "selected": keep_g.float(),
        }
        return per_sample, metrics

    def state_dict(self) -> dict[str, Any]:
        return {} if self.peer is None else {"peer": self.peer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "peer" not in state:
            return
        peer = self._need_peer()
        try:
            peer.load_state_dict(state["peer"])
        except (RuntimeError, KeyError) as exc:
            raise CheckpointError(
                f"the checkpoint's co-teaching peer does not fit this model ({exc}); delete the "
                f"checkpoint or use another checkpoint_dir."
            ) from exc

    def get_params(self) -> dict[str, Any]:
        return {"forget_rate": self.forget_rate, "num_gradual": self.num_gradual,
                "exponent": self.exponent, "loss": self.loss_name, **self.loss_params}


__all__ = ["ELR", "ELR_CLAMP", "ELR_PRESETS", "PSKD", "CoTeaching"]
