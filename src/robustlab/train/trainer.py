"""The one training loop.

``Trainer`` owns the optimiser, the learning-rate schedule, autocast, weight EMA,
checkpoints with exact resume, robust validation, best-checkpoint selection, early
stopping, progress and logging. What differs between methods is the
:class:`~robustlab.train.objectives.Objective`.

>>> from robustlab import data, models, train
>>> ds = data.load("digits")
>>> net = models.for_dataset("mlp", ds)
>>> history = train.Trainer(net, train.ERM("ce"), epochs=5, lr=0.05).fit(ds)

Adversarial training with robust validation and the selection of the most robust
checkpoint against robust overfitting (Rice, Wong & Kolter 2020, "Overfitting in
adversarially robust deep learning", Sec. 3-4):

>>> obj = train.create("pgd-at", eps=0.1)
>>> t = train.Trainer(net, obj, epochs=30, val_attack="pgd", select="robust", early_stopping=5)
>>> history = t.fit(train_split, val_split)   # t.summary()["best_epoch"]

Objective hooks the Trainer calls besides ``loss`` (all optional, see
:class:`~robustlab.train.objectives.Objective`): ``check_training`` and ``setup`` before
training (and ``bind(model, seed)`` when the objective has it), ``start_epoch`` and
``set_progress`` during it, ``after_backward(model)``
between the backward pass and the optimiser step (AWP restores its perturbed weights
there), and ``end_epoch(model, epoch) -> EpochVerdict | None`` after each epoch (the
catastrophic-overfitting check of ``fgsm-rs``; see :mod:`robustlab.train.monitors`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustlab._atomic import atomic_path
from robustlab.data.base import Dataset
from robustlab.errors import CheckpointError, ConfigError, NonFiniteInputError
from robustlab.seeding import derive_seed
from robustlab.train.ema import WeightEMA
from robustlab.train.monitors import EpochVerdict, robust_accuracy
from robustlab.train.objectives import ERM, Objective
from robustlab.train.schedules import SCHEDULES, lr_factor
from robustlab.validation import check_labels, check_shape

log = logging.getLogger("robustlab.train")

OPTIMIZERS = ("sgd", "adam", "adamw")
CHECKPOINT_NAME = "last.pt"
BEST_NAME = "best.pt"
SELECT = ("robust", "clean")
#: attack settings of the robust validation when ``val_attack="pgd"`` and no parameters
#: are given: PGD-10 with step eps/4 (Rice et al. 2020's validation attack, 2/255 at 8/255)
DEFAULT_VAL_PGD = {"steps": 10, "rel_step_size": 0.25}


def _is_count(metric: str) -> bool:
    """Metrics named ``*_count`` are summed over the epoch instead of averaged."""
    return metric.endswith("_count")


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
    amp: autocast on CUDA (``"bf16"``/``True``, or ``"fp16"`` with a gradient scaler)
        for the training steps, adversarial generation included; validation and
        end-of-epoch checks always run in float32. Ignored on CPU (float32 throughout).
    channels_last: on CUDA, keep image models and batches in channels-last memory format.
    ema_decay: keep an exponential moving average of the weights; validation uses the
        averaged weights, and at the end of training they are loaded into the model.
    seed: seeds initial shuffling, dropout and objectives' generators per epoch
        (the global RNG state is restored after every epoch).
    device: where to train.
    checkpoint_dir: write ``last.pt`` there after every epoch (atomically) and resume
        from it when present, bit-exactly on the same machine. With ``select`` the best
        weights so far are also written to ``best.pt`` (and kept inside ``last.pt``, so
        resuming keeps them).
    progress: show a progress bar (default: only when stderr is a terminal).
    callbacks: functions ``cb(trainer, record)`` called after each epoch's checkpoint.

    Validation (``fit(train, val)``): clean accuracy on ``val`` every epoch
    (``val_accuracy``) and, with ``val_attack``, robust accuracy (``val_robust_accuracy``)
    every ``val_every`` epochs and after the last one.

    val_attack: an attack registry name (``"pgd"``, ``"fast"``, ...) for robust
        validation, or None. ``val_attack_params`` are its parameters (default for
        ``pgd``: 10 steps of eps/4, Rice et al. 2020's validation attack).
    val_norm, val_eps: the validation threat model; default: the objective's
        (``objective.threat``, e.g. the eps adversarial training uses). Required for
        objectives without a threat model (ERM).
    val_every: robust validation every this many epochs (and after the last).
    val_subset: robustly validate on this many points of ``val`` (a fixed seeded
        subset; None: all).
    select: ``"robust"`` (robust validation accuracy) or ``"clean"`` (clean validation
        accuracy): keep the weights of the best epoch and load them at the end
        (best-checkpoint selection, Rice et al. 2020). None: keep the last weights.
    early_stopping: stop when the ``select`` metric has not improved for this many
        validations (patience); None: never stop early.
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
        channels_last: bool = False,
        ema_decay: float | None = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
        checkpoint_dir: str | Path | None = None,
        progress: bool | None = None,
        callbacks: Sequence[Callable[[Trainer, dict[str, Any]], None]] = (),
        val_attack: str | None = None,
        val_attack_params: Mapping[str, Any] | None = None,
        val_norm: str | None = None,
        val_eps: float | str | None = None,
        val_every: int = 1,
        val_subset: int | None = None,
        select: str | None = None,
        early_stopping: int | None = None,
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
        if amp not in (False, True, "bf16", "fp16"):
            raise ConfigError(f"amp must be False, True, 'bf16' or 'fp16', got {amp!r}.")
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
        self.channels_last = bool(channels_last)
        self.ema_decay = ema_decay
        self.seed = int(seed)
        self.device = torch.device(device)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.progress = progress
        self.callbacks = list(callbacks)
        self._init_validation(val_attack, val_attack_params, val_norm, val_eps, val_every, val_subset, select, early_stopping)
        self.history: list[dict[str, Any]] = []
        self.ema: WeightEMA | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scaler: Any = None
        self.resumed_from_epoch = 0
        self._reset_run_state()

    def _init_validation(
        self,
        val_attack: str | None,
        val_attack_params: Mapping[str, Any] | None,
        val_norm: str | None,
        val_eps: float | str | None,
        val_every: int,
        val_subset: int | None,
        select: str | None,
        early_stopping: int | None,
    ) -> None:
        from robustlab import attacks

        if isinstance(val_every, bool) or not isinstance(val_every, int) or val_every < 1:
            raise ConfigError(f"val_every must be an int >= 1, got {val_every!r}.")
        if val_subset is not None and val_subset < 1:
            raise ConfigError(f"val_subset must be >= 1 (or None for all points), got {val_subset}.")
        if select is not None and select not in SELECT:
            raise ConfigError(
                f"select must be 'robust' (robust validation accuracy), 'clean' or None, got {select!r}."
            )
        if select == "robust" and val_attack is None:
            raise ConfigError("select='robust' needs a robust validation: set val_attack (e.g. 'pgd' or 'fast').")
        if early_stopping is not None:
            if isinstance(early_stopping, bool) or not isinstance(early_stopping, int) or early_stopping < 1:
                raise ConfigError(f"early_stopping is a patience in validations, an int >= 1; got {early_stopping!r}.")
            if select is None:
                raise ConfigError(
                    "early_stopping watches the select metric: set select='robust' or 'clean' as well."
                )
        if (val_norm is None) != (val_eps is None):
            raise ConfigError("give both val_norm and val_eps (or neither, to use the objective's threat model).")
        self.val_threat = None if val_norm is None else attacks.ThreatModel(val_norm, val_eps)  # type: ignore[arg-type]
        self.val_attack_name = val_attack
        params = dict(val_attack_params or {})
        if val_attack is not None and not params and attacks.attacks.canonical(val_attack) == "pgd":
            params = dict(DEFAULT_VAL_PGD)
        self.val_attack_params = params
        self.val_attack = None if val_attack is None else attacks.create(val_attack, **params)
        self.val_every = val_every
        self.val_subset = val_subset
        self.select = select
        self.early_stopping = early_stopping

    def _reset_run_state(self) -> None:
        self.best: dict[str, Any] | None = None  # {"epoch", "score", "model"}
        self.since_best = 0
        self.stop_reason: str | None = None

    # -- construction helpers ------------------------------------------------------------
    def _modules(self) -> list[nn.Module]:
        """The model plus any modules the objective trains alongside it."""
        return [self.model, *self.objective.trainable_modules()]

    def _train_mode(self, mode: bool) -> None:
        for m in self._modules():
            m.train(mode)

    def _make_optimizer(self) -> torch.optim.Optimizer:
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
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

    def _cuda_amp(self) -> bool:
        return bool(self.amp) and self.device.type == "cuda"

    def _autocast(self) -> Any:
        if self._cuda_amp():
            dtype = torch.float16 if self.amp == "fp16" else torch.bfloat16
            return torch.autocast("cuda", dtype=dtype)
        return contextlib.nullcontext()

    def _check_data(self, ds: Dataset, what: str) -> None:
        expected = getattr(self.model, "input_shape", None)
        if expected is not None:
            check_shape(ds.x[:1], expected, what=f"model (training on {what})")
        k = getattr(self.model, "num_classes", ds.num_classes)
        check_labels(ds.y, int(k), name=f"{what} labels")

    def _resolve_val_threat(self) -> Any:
        if self.val_attack is None:
            return None
        if self.val_threat is not None:
            return self.val_threat
        threat = getattr(self.objective, "threat", None)
        if threat is None:
            raise ConfigError(
                f"robust validation with {self.val_attack_name!r} needs a threat model: the objective "
                f"{type(self.objective).__name__} has none, so give val_norm and val_eps (e.g. 'linf', 0.1)."
            )
        return threat

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
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
            "objective": self.objective.state_dict(),
            "history": json.dumps(self.history),
            "best": self.best,
            "run": json.dumps({"since_best": self.since_best, "stop_reason": self.stop_reason}),
        }
        with atomic_path(path) as tmp:
            torch.save(state, tmp)

    def _save_best_file(self) -> None:
        """``best.pt``: the selected weights alone, for users (also kept in ``last.pt``)."""
        if self.checkpoint_dir is None or self.best is None:
            return
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "format": "robustlab-best-weights/1",
            "epoch": self.best["epoch"],
            "metric": self.best["metric"],
            "score": self.best["score"],
            "model": self.best["model"],
        }
        with atomic_path(self.checkpoint_dir / BEST_NAME) as tmp:
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
        if state.get("scaler") is not None and self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.objective.load_state_dict(state.get("objective") or {})
        self.history = json.loads(state.get("history") or "[]")
        self.best = state.get("best")
        run = json.loads(state.get("run") or "{}")
        self.since_best = int(run.get("since_best", 0))
        self.stop_reason = run.get("stop_reason")
        return int(state["epoch"])

    # -- validation -----------------------------------------------------------------------
    @contextlib.contextmanager
    def _evaluation_weights(self) -> Iterator[None]:
        """The weights validation sees: the EMA weights when EMA is on (restored exactly
        afterwards), else the model's own."""
        if self.ema is None:
            yield
            return
        backup = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.ema.copy_to(self.model)
        try:
            yield
        finally:
            self.model.load_state_dict(backup)

    def _val_subset(self, val: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
        if self.val_subset is None or self.val_subset >= len(val):
            return val.x, val.y
        gen = torch.Generator().manual_seed(derive_seed("val-subset", self.seed))
        idx = torch.randperm(len(val), generator=gen)[: self.val_subset].sort().values
        return val.x[idx], val.y[idx]

    def _validate(self, val: Dataset, epoch: int, robust: bool, threat: Any) -> dict[str, float]:
        """Clean (and robust) validation accuracy in float32, eval mode, EMA weights if on."""
        out: dict[str, float] = {}
        with self._evaluation_weights():
            out["val_accuracy"] = clean_accuracy_of(self.model, val.x, val.y, device=self.device)
            if robust and self.val_attack is not None:
                x, y = self._val_subset(val)
                gen = torch.Generator(device=self.device).manual_seed(derive_seed("val", self.seed, epoch))
                out["val_robust_accuracy"] = robust_accuracy(
                    self.model, x, y, self.val_attack, threat, generator=gen, batch_size=max(self.batch_size, 256)
                )
        return out

    def _consider_best(self, epoch: int, record: dict[str, Any]) -> None:
        key = "val_robust_accuracy" if self.select == "robust" else "val_accuracy"
        score = record.get(key)
        if score is None:
            return
        if self.best is None or score > self.best["score"]:
            weights = self.ema.shadow if self.ema is not None else self.model.state_dict()
            self.best = {
                "epoch": epoch + 1,
                "metric": key,
                "score": float(score),
                "model": {k: v.detach().clone() for k, v in weights.items()},
            }
            self.since_best = 0
            self._save_best_file()
        else:
            self.since_best += 1
            if self.early_stopping is not None and self.since_best >= self.early_stopping and self.stop_reason is None:
                self.stop_reason = (
                    f"early stopping after epoch {epoch + 1}: {key} has not improved for "
                    f"{self.since_best} validations (best {self.best['score']:.4f} at epoch "
                    f"{self.best['epoch']})"
                )
        record["best_epoch"] = self.best["epoch"]

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

    def _snapshot(self) -> dict[str, Any]:
        return {
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "ema": None if self.ema is None else {k: v.clone() for k, v in self.ema.state_dict()["shadow"].items()},
            "ema_updates": None if self.ema is None else self.ema.updates,
        }

    def _rollback(self, snap: dict[str, Any]) -> None:
        self.model.load_state_dict(snap["model"])
        if self.ema is not None and snap["ema"] is not None:
            self.ema.shadow = snap["ema"]
            self.ema.updates = snap["ema_updates"]

    def fit(
        self, train: Dataset, val: Dataset | None = None, *, test: Dataset | None = None
    ) -> list[dict[str, Any]]:
        """Train on ``train`` (validating on ``val`` each epoch if given).

        ``test``, if given, is only *watched*: its clean accuracy under the current
        training weights is recorded every epoch as ``test_accuracy`` (so last-epoch and
        best-epoch test accuracy can both be reported, as the noisy-label literature
        does); nothing is ever decided on it (selection and early stopping use ``val``).

        Returns the per-epoch history (also kept in ``self.history``). If
        ``checkpoint_dir`` holds a checkpoint of an interrupted run, training resumes
        after its last finished epoch (a run that stopped early stays stopped).
        Everything that can be refused is refused before the first step.
        """
        self._check_data(train, "train")
        if val is not None:
            self._check_data(val, "validation")
        if test is not None:
            self._check_data(test, "test")
        if self.select is not None and val is None:
            raise ConfigError(f"select={self.select!r} needs validation data: call fit(train, val).")
        val_threat = self._resolve_val_threat() if val is not None else None
        self.objective.check_training(self.epochs)
        self.model.to(self.device)
        bind = getattr(self.objective, "bind", None)
        if callable(bind):  # objectives that build modules from the model (co-teaching's peer)
            bind(self.model, self.seed)
        for m in self._modules():
            m.to(self.device)
        images = train.x.dim() == 4
        if self.channels_last and images and self.device.type == "cuda":
            self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.objective.setup(len(train), train.num_classes)
        self.optimizer = self._make_optimizer()
        self._reset_run_state()
        self.scaler = torch.amp.GradScaler("cuda") if self._cuda_amp() and self.amp == "fp16" else None
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
        end_epoch = getattr(self.objective, "end_epoch", None)
        if getattr(type(self.objective), "end_epoch", None) is getattr(Objective, "end_epoch", object()):
            end_epoch = None  # the base class's no-op: no per-epoch weight snapshot needed
        fmt = torch.channels_last if (self.channels_last and images and self.device.type == "cuda") else None
        for epoch in range(start, self.epochs):
            if self.stop_reason is not None:
                break
            seed = derive_seed("epoch", self.seed, epoch)
            gen = torch.Generator().manual_seed(seed)
            obj_gen = torch.Generator(device=self.device).manual_seed(derive_seed("objective", self.seed, epoch))
            self.objective.start_epoch(epoch, obj_gen)
            snapshot = self._snapshot() if callable(end_epoch) else None
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
                        if fmt is not None:
                            xb = xb.contiguous(memory_format=fmt)
                        yb = y_all[idx].to(self.device, non_blocking=True)
                        lr = self._set_lr(epoch * steps_per_epoch + b, total, steps_per_epoch)
                        self.objective.set_progress(epoch + b / steps_per_epoch, self.epochs)
                        metrics = self._step(xb, yb, idx.to(self.device))
                        bs = len(idx)
                        count += bs
                        for k, v in metrics.items():
                            sums[k] = sums.get(k, 0.0) + (v if _is_count(k) else v * bs)
                        bar(loss=sums["loss"] / count, acc=sums.get("accuracy", float("nan")) / count)
                seconds = time.perf_counter() - t0
                record: dict[str, Any] = {"epoch": epoch + 1, "lr": lr, "seconds": round(seconds, 4)}
                record.update({f"train_{k}": (v if _is_count(k) else v / count) for k, v in sums.items()})
                record["samples_per_s"] = count / max(seconds, 1e-9)
                self._train_mode(False)
                rolled_back = False
                if callable(end_epoch):
                    verdict = end_epoch(self.model, epoch)
                    if verdict is not None:
                        if not isinstance(verdict, EpochVerdict):
                            raise ConfigError(
                                f"{type(self.objective).__name__}.end_epoch must return an EpochVerdict or None."
                            )
                        record.update(verdict.metrics)
                        if verdict.action == "rollback":
                            assert snapshot is not None
                            self._rollback(snapshot)
                            rolled_back = True
                        if verdict.action is not None:
                            self.stop_reason = verdict.reason or f"{type(self.objective).__name__} stopped training"
                if val is not None and not rolled_back:
                    due = (epoch + 1) % self.val_every == 0 or epoch + 1 == self.epochs or self.stop_reason is not None
                    record.update(self._validate(val, epoch, due, val_threat))
                    if self.select is not None:
                        self._consider_best(epoch, record)
            if test is not None:
                record["test_accuracy"] = clean_accuracy_of(self.model, test.x, test.y, device=self.device)
            if self.stop_reason is not None:
                record["stopped"] = self.stop_reason
                log.warning("%s", self.stop_reason)
            self.history.append(record)
            log.info("epoch %d: %s", epoch + 1, record)
            self.save_checkpoint(epoch + 1)
            for cb in self.callbacks:
                cb(self, record)
        if self.select is not None and self.best is not None:
            self.model.load_state_dict(self.best["model"])
        elif self.ema is not None:
            self.ema.copy_to(self.model)
        self._train_mode(False)
        return self.history

    def summary(self) -> dict[str, Any]:
        """Run-level facts to store with the results: epochs trained, the selected epoch
        and its score, and why training stopped early (None if it did not)."""
        return {
            "epochs_trained": len(self.history),
            "selected": self.select,
            "best_epoch": None if self.best is None else self.best["epoch"],
            "best_metric": None if self.best is None else self.best["metric"],
            "best_score": None if self.best is None else self.best["score"],
            "stopped_early": self.stop_reason is not None,
            "stop_reason": self.stop_reason,
        }

    def _step(self, xb: torch.Tensor, yb: torch.Tensor, idx: torch.Tensor) -> dict[str, float]:
        assert self.optimizer is not None
        with self._autocast():
            per_sample, metrics = self.objective.loss(self.model, xb, yb, idx)
        loss = per_sample.float().mean()
        after_backward = getattr(self.objective, "after_backward", None)
        try:
            if not torch.isfinite(loss):
                raise NonFiniteInputError(
                    "the training loss became NaN/inf; lower the learning rate, enable grad_clip, "
                    "or check the data for extreme values."
                )
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
            else:
                loss.backward()
        finally:
            if callable(after_backward):
                after_backward(self.model)  # e.g. AWP restores its perturbed weights here
        if self.grad_clip is not None:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            params = [p for m in self._modules() for p in m.parameters()]
            nn.utils.clip_grad_norm_(params, self.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)
        out = {"loss": float(loss.detach())}
        for k, v in metrics.items():
            v = v.detach().float()
            out[k] = float(v.sum()) if _is_count(k) else float(v.mean())
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
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

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
