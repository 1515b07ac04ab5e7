"""The one training loop.

``Trainer`` owns the optimiser, the learning-rate schedule, autocast, weight EMA,
checkpoints with exact resume, progress and logging. What differs between methods is
the :class:`~robustlab.train.objectives.Objective`.

>>> from robustlab import data, models, train
>>> ds = data.load("digits")
>>> net = models.for_dataset("mlp", ds)
>>> history = train.Trainer(net, train.ERM("ce"), epochs=5, lr=0.05).fit(ds)
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustlab._atomic import atomic_path
from robustlab.data.base import Dataset
from robustlab.errors import CheckpointError, ConfigError, NonFiniteInputError
from robustlab.train.ema import WeightEMA
from robustlab.train.objectives import ERM, Objective
from robustlab.train.schedules import SCHEDULES, lr_factor
from robustlab.validation import check_labels, check_shape

log = logging.getLogger("robustlab.train")

OPTIMIZERS = ("sgd", "adam", "adamw")
CHECKPOINT_NAME = "last.pt"


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed derived deterministically from ``parts`` (stable across runs)."""
    digest = hashlib.sha256(json.dumps(parts, default=str).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class Trainer:
    """Train ``model`` with ``objective`` (default: ERM with cross-entropy).

    Parameters
    ----------
    epochs, batch_size: training length and minibatch size.
    optimizer: ``"sgd"`` (momentum, nesterov), ``"adam"`` or ``"adamw"``.
    lr, momentum, nesterov, weight_decay: optimiser settings.
    schedule: ``"constant"``, ``"cosine"``, ``"multistep"`` or ``"onecycle"``;
        ``warmup_epochs`` adds a linear warm-up; ``milestones``/``gamma`` for multistep.
    grad_clip: clip the global gradient norm to this value (None: no clipping).
    amp: autocast on CUDA (``"bf16"``/``True`` or ``"fp16"`` with a gradient scaler);
        ignored on CPU, where training runs in float32.
    ema_decay: keep an exponential moving average of the weights; at the end of
        training the averaged weights are loaded into the model.
    seed: seeds initial shuffling, dropout and objectives' generators per epoch
        (the global RNG state is restored after every epoch).
    device: where to train.
    checkpoint_dir: write ``last.pt`` there after every epoch (atomically) and resume
        from it when present, bit-exactly on the same machine.
    progress: show a progress bar (default: only when stderr is a terminal).
    callbacks: functions ``cb(trainer, record)`` called after each epoch's checkpoint.
    """

    def __init__(
        self,
        model: nn.Module,
        objective: Objective | None = None,
        *,
        epochs: int = 10,
        batch_size: int = 128,
        optimizer: str = "sgd",
        lr: float = 0.1,
        momentum: float = 0.9,
        nesterov: bool = False,
        weight_decay: float = 5e-4,
        schedule: str = "cosine",
        warmup_epochs: float = 0.0,
        milestones: Sequence[float] = (0.5, 0.75),
        gamma: float = 0.1,
        grad_clip: float | None = None,
        amp: bool | str = False,
        ema_decay: float | None = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
        checkpoint_dir: str | Path | None = None,
        progress: bool | None = None,
        callbacks: Sequence[Callable[[Trainer, dict[str, Any]], None]] = (),
    ) -> None:
        if epochs < 1 or batch_size < 1:
            raise ConfigError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}.")
        if optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}.")
        if schedule not in SCHEDULES:
            lr_factor(schedule, 0, 1, steps_per_epoch=1)  # raises with close matches
        if not (lr > 0 and math.isfinite(lr)):
            raise ConfigError(f"lr must be a positive number, got {lr}.")
        if warmup_epochs < 0 or warmup_epochs > epochs:
            raise ConfigError(f"warmup_epochs must lie in [0, epochs={epochs}], got {warmup_epochs}.")
        self.model = model
        self.objective = objective if objective is not None else ERM("ce")
        self.epochs = int(epochs)
        self.batch_size = int(batch_size)
        self.optimizer_name = optimizer
        self.lr = float(lr)
        self.momentum = momentum
        self.nesterov = nesterov
        self.weight_decay = weight_decay
        self.schedule = schedule
        self.warmup_epochs = warmup_epochs
        self.milestones = tuple(milestones)
        self.gamma = gamma
        self.grad_clip = grad_clip
        self.amp = amp
        self.ema_decay = ema_decay
        self.seed = int(seed)
        self.device = torch.device(device)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.progress = progress
        self.callbacks = list(callbacks)
        self.history: list[dict[str, Any]] = []
        self.ema: WeightEMA | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.resumed_from_epoch = 0

    # -- construction helpers ------------------------------------------------------------
    def _modules(self) -> list[nn.Module]:
        """The model plus any modules the objective trains alongside it."""
        return [self.model, *self.objective.trainable_modules()]

    def _train_mode(self, mode: bool) -> None:
        for m in self._modules():
            m.train(mode)

    def _make_optimizer(self) -> torch.optim.Optimizer:
        decay, no_decay = [], []
        for module in self._modules():
            for p in module.parameters():
                if not p.requires_grad:
                    continue
                # no weight decay on biases and normalisation parameters (1-D tensors)
                (no_decay if p.dim() <= 1 else decay).append(p)
        groups = [
            {"params": decay, "weight_decay": self.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        if self.optimizer_name == "sgd":
            return torch.optim.SGD(groups, lr=self.lr, momentum=self.momentum, nesterov=self.nesterov)
        if self.optimizer_name == "adam":
            return torch.optim.Adam(groups, lr=self.lr)
        return torch.optim.AdamW(groups, lr=self.lr)

    def _autocast(self) -> Any:
        if self.amp and self.device.type == "cuda":
            dtype = torch.float16 if self.amp == "fp16" else torch.bfloat16
            return torch.autocast("cuda", dtype=dtype)
        import contextlib

        return contextlib.nullcontext()

    def _check_data(self, ds: Dataset, what: str) -> None:
        expected = getattr(self.model, "input_shape", None)
        if expected is not None:
            check_shape(ds.x[:1], expected, what=f"model (training on {what})")
        k = getattr(self.model, "num_classes", ds.num_classes)
        check_labels(ds.y, int(k), name=f"{what} labels")

    # -- checkpoints ----------------------------------------------------------------------
    def _checkpoint_path(self) -> Path | None:
        return None if self.checkpoint_dir is None else self.checkpoint_dir / CHECKPOINT_NAME

    def save_checkpoint(self, epoch: int) -> None:
        """Write the full training state after ``epoch`` epochs (atomic)."""
        path = self._checkpoint_path()
        if path is None or self.optimizer is None:
            return
        state = {
            "format": "robustlab-train-checkpoint/1",
            "epoch": epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "ema": None if self.ema is None else self.ema.state_dict(),
            "objective": self.objective.state_dict(),
            "history": json.dumps(self.history),
        }
        with atomic_path(path) as tmp:
            torch.save(state, tmp)

    def _load_checkpoint(self) -> int:
        path = self._checkpoint_path()
        if path is None or not path.exists():
            return 0
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as exc:  # corrupt, truncated, or holds non-tensor objects
            raise CheckpointError(
                f"cannot resume from {path}: {type(exc).__name__}: {exc}. The file is corrupt "
                f"or not a robustlab training checkpoint (robustlab only loads tensors, never "
                f"arbitrary pickled objects). Delete it to start the run from scratch."
            ) from exc
        if not isinstance(state, dict) or state.get("format") != "robustlab-train-checkpoint/1":
            raise CheckpointError(f"{path} is not a robustlab training checkpoint; delete it to restart.")
        try:
            self.model.load_state_dict(state["model"])
            assert self.optimizer is not None
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(
                f"the checkpoint {path} does not fit this model/optimizer ({exc}); it belongs to "
                f"another configuration. Delete it or use another checkpoint_dir."
            ) from exc
        if state.get("ema") is not None:
            if self.ema is None:
                self.ema = WeightEMA(self.model, self.ema_decay or state["ema"]["decay"])
            self.ema.load_state_dict(state["ema"])
        self.objective.load_state_dict(state.get("objective") or {})
        self.history = json.loads(state.get("history") or "[]")
        return int(state["epoch"])

    # -- the loop -------------------------------------------------------------------------
    def _set_lr(self, step: int, total: int, steps_per_epoch: int) -> float:
        f = lr_factor(
            self.schedule,
            step,
            total,
            steps_per_epoch=steps_per_epoch,
            warmup_epochs=self.warmup_epochs,
            milestones=self.milestones,
            gamma=self.gamma,
        )
        lr = self.lr * f
        assert self.optimizer is not None
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        return lr

    def fit(self, train: Dataset, val: Dataset | None = None) -> list[dict[str, Any]]:
        """Train on ``train`` (evaluating clean accuracy on ``val`` each epoch if given).

        Returns the per-epoch history (also kept in ``self.history``). If
        ``checkpoint_dir`` holds a checkpoint of an interrupted run, training resumes
        after its last finished epoch.
        """
        self._check_data(train, "train")
        if val is not None:
            self._check_data(val, "validation")
        for m in self._modules():
            m.to(self.device)
        self.objective.check_training(self.epochs)
        self.objective.setup(len(train), train.num_classes)
        self.optimizer = self._make_optimizer()
        if self.ema_decay is not None:
            self.ema = WeightEMA(self.model, self.ema_decay)
        start = self._load_checkpoint()
        self.resumed_from_epoch = start
        if start:
            log.info("resuming from epoch %d (%s)", start, self._checkpoint_path())
        n = len(train)
        steps_per_epoch = math.ceil(n / self.batch_size)
        total = steps_per_epoch * self.epochs
        x_all, y_all = train.x, train.y
        show = self.progress if self.progress is not None else sys.stderr.isatty()
        for epoch in range(start, self.epochs):
            seed = derive_seed("epoch", self.seed, epoch)
            gen = torch.Generator().manual_seed(seed)
            obj_gen = torch.Generator(device=self.device).manual_seed(derive_seed("objective", self.seed, epoch))
            self.objective.start_epoch(epoch, obj_gen)
            order = torch.randperm(n, generator=gen)
            t0 = time.perf_counter()
            sums: dict[str, float] = {}
            count = 0
            self._train_mode(True)
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                torch.manual_seed(derive_seed("global", self.seed, epoch))
                with _progress(show, steps_per_epoch, f"epoch {epoch + 1}/{self.epochs}") as bar:
                    for b in range(steps_per_epoch):
                        idx = order[b * self.batch_size : (b + 1) * self.batch_size]
                        xb = x_all[idx].to(self.device, non_blocking=True)
                        yb = y_all[idx].to(self.device, non_blocking=True)
                        lr = self._set_lr(epoch * steps_per_epoch + b, total, steps_per_epoch)
                        self.objective.set_progress(epoch + b / steps_per_epoch, self.epochs)
                        metrics = self._step(xb, yb, idx.to(self.device))
                        bs = len(idx)
                        count += bs
                        for k, v in metrics.items():
                            sums[k] = sums.get(k, 0.0) + v * bs
                        bar(loss=sums["loss"] / count, acc=sums.get("accuracy", float("nan")) / count)
            seconds = time.perf_counter() - t0
            record: dict[str, Any] = {"epoch": epoch + 1, "lr": lr, "seconds": round(seconds, 4)}
            record.update({f"train_{k}": v / count for k, v in sums.items()})
            record["samples_per_s"] = count / max(seconds, 1e-9)
            if val is not None:
                record["val_accuracy"] = clean_accuracy_of(self.model, val.x, val.y, device=self.device)
            self.history.append(record)
            log.info("epoch %d: %s", epoch + 1, record)
            self.save_checkpoint(epoch + 1)
            for cb in self.callbacks:
                cb(self, record)
        if self.ema is not None:
            self.ema.copy_to(self.model)
        self._train_mode(False)
        return self.history

    def _step(self, xb: torch.Tensor, yb: torch.Tensor, idx: torch.Tensor) -> dict[str, float]:
        assert self.optimizer is not None
        with self._autocast():
            per_sample, metrics = self.objective.loss(self.model, xb, yb, idx)
        loss = per_sample.float().mean()
        if not torch.isfinite(loss):
            raise NonFiniteInputError(
                "the training loss became NaN/inf; lower the learning rate, enable grad_clip, "
                "or check the data for extreme values."
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip is not None:
            params = [p for m in self._modules() for p in m.parameters()]
            nn.utils.clip_grad_norm_(params, self.grad_clip)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)
        out = {"loss": float(loss.detach())}
        for k, v in metrics.items():
            out[k] = float(v.detach().float().mean())
        return out


@torch.no_grad()
def clean_accuracy_of(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 1024, device: Any = None
) -> float:
    """Fraction of ``x`` that ``model`` classifies as ``y`` (eval mode, restored after)."""
    was = model.training
    model.eval()
    dev = device or next(model.parameters()).device
    correct = 0
    for i in range(0, len(x), batch_size):
        pred = model(x[i : i + batch_size].to(dev)).argmax(1).cpu()
        correct += int((pred == y[i : i + batch_size]).sum())
    model.train(was)
    return correct / max(len(x), 1)


class _progress:
    """A rich progress bar when ``show``; a no-op otherwise."""

    def __init__(self, show: bool, total: int, label: str) -> None:
        self.show, self.total, self.label = show, total, label
        self._p: Any = None
        self._t0 = time.perf_counter()
        self._done = 0

    def __enter__(self) -> Callable[..., None]:
        if self.show:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._p = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeRemainingColumn(),
                transient=True,
            )
            self._p.start()
            self._task = self._p.add_task(self.label, total=self.total, stats="")
        return self.update

    def update(self, **stats: float) -> None:
        self._done += 1
        if self._p is not None:
            rate = self._done / max(time.perf_counter() - self._t0, 1e-9)
            text = " ".join(f"{k}={v:.4f}" for k, v in stats.items()) + f" {rate:.1f} it/s"
            self._p.update(self._task, advance=1, stats=text)

    def __exit__(self, *exc: Any) -> None:
        if self._p is not None:
            self._p.stop()
