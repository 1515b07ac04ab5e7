"""The one training loop.

``Trainer`` owns the optimiser, the learning-rate schedule, autocast, weight EMA,
checkpoints with exact resume, robust validation, best-checkpoint selection, early
stopping, threads, progress and logging, and it says when training has failed. What
differs between methods is the :class:`~robustlab.train.objectives.Objective`.

>>> from robustlab import data, models, train
>>> ds = data.load("digits")
>>> net = models.for_dataset("mlp", ds)
>>> history = train.Trainer(net, train.ERM("ce"), epochs=5, lr=0.05).fit(ds)

Adversarial training with robust validation and the selection of the most robust
checkpoint against robust overfitting (Rice, Wong & Kolter 2020, "Overfitting in
adversarially robust deep learning", Sec. 3-4):

>>> obj = train.create("pgd-at", eps=0.1)
>>> t = train.Trainer(net, obj, epochs=30, val_attack="pgd", select="robust", early_stopping=5)
>>> history = t.fit(train_split, val_split)   # t.summary()["best_epoch"], t.summary()["flags"]

:meth:`Trainer.fit` reads top to bottom: :meth:`~Trainer._prepare` (device, objective
binding, optimiser, EMA, resume), then per epoch :meth:`~Trainer._train_epoch` (the
optimiser steps), :meth:`~Trainer._end_epoch` (the objective's verdict, rollback, the
training-at-chance check), :meth:`~Trainer._validate_and_select` (validation,
best-checkpoint selection, early stopping) and :meth:`~Trainer._finish_epoch` (test
accuracy, history, the progress line, checkpoint, callbacks), then
:meth:`~Trainer._finish` (the selected or averaged weights).

Objective hooks the Trainer calls besides ``loss`` (all optional, see
:class:`~robustlab.train.objectives.Objective`): ``check_training`` and ``setup`` before
training (and ``bind(model, seed)`` when the objective has it), ``start_epoch`` and
``set_progress`` during it, ``after_backward(model)``
between the backward pass and the optimiser step (AWP restores its perturbed weights
there), ``end_epoch(model, epoch) -> EpochVerdict | None`` after each epoch (the
catastrophic-overfitting check of ``fgsm-rs``; see :mod:`robustlab.train.monitors`), and
``ramp_epochs()`` (how long the objective ramps its difficulty, e.g. the eps warm-up).

The same loop trains data-parallel under ``torchrun`` (see :class:`Trainer`, "Data-parallel
training", and :mod:`robustlab.train.distributed`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from robustlab._atomic import atomic_path
from robustlab.data.base import Dataset
from robustlab.errors import CheckpointError, ConfigError, InvalidInputError, NonFiniteInputError
from robustlab.evaluate import robust_accuracy
from robustlab.evaluate.metrics import clean_accuracy
from robustlab.progress import Progress, format_seconds, is_terminal
from robustlab.seeding import derive_seed
from robustlab.threads import thread_budget
from robustlab.train import distributed
from robustlab.train.adversarial.base import check_eps
from robustlab.train.augment import build_augmentation
from robustlab.train.ema import WeightEMA
from robustlab.train.monitors import EpochVerdict, chance_check
from robustlab.train.objectives import ERM, Objective
from robustlab.train.schedules import SCHEDULES, lr_factor
from robustlab.validation import (
    check_bool,
    check_choice,
    check_device,
    check_float,
    check_int,
    check_labels,
    check_shape,
    check_subset,
)

log = logging.getLogger("robustlab.train")

OPTIMIZERS = ("sgd", "adam", "adamw")
CHECKPOINT_NAME = "last.pt"
BEST_NAME = "best.pt"
SELECT = ("robust", "clean")
AMP = (False, True, "bf16", "fp16")
NORMS = ("linf", "l2", "l1")
#: attack settings of the robust validation when ``val_attack="pgd"`` and no parameters
#: are given: PGD-10 with step eps/4 (Rice et al. 2020's validation attack, 2/255 at 8/255)
DEFAULT_VAL_PGD = {"steps": 10, "rel_step_size": 0.25}
#: at most this many training points (a fixed seeded subset) are predicted after each epoch
#: to tell whether training is at chance (see :func:`robustlab.train.monitors.chance_check`)
CHANCE_POINTS = 512
NON_FINITE_LOSS = (
    "the training loss became NaN/inf; lower the learning rate, enable grad_clip, "
    "or check the data for extreme values."
)


def _is_count(metric: str) -> bool:
    """Metrics named ``*_count`` are summed over the epoch instead of averaged."""
    return metric.endswith("_count")


def _flag(value: Any, name: str) -> bool:
    """A yes/no parameter: ``True`` or ``False`` (not a string, not 2)."""
    return check_bool(value, name)


@dataclass
class _Run:
    """What one call of :meth:`Trainer.fit` keeps across its epochs."""

    start: int
    n: int
    steps_per_epoch: int
    total_steps: int
    show: bool
    end_epoch: Callable[[nn.Module, int], Any] | None
    memory_format: torch.memory_format | None
    val_threat: Any
    chance_index: torch.Tensor
    warmup_end: float
    epoch_seconds: list[float] = field(default_factory=list)


class Trainer:
    """Train ``model`` with ``objective`` (default: ERM with cross-entropy).

    Every keyword parameter but ``checkpoint_dir``, ``progress`` and ``callbacks`` is a
    training setting: the experiment config is derived from this signature (names,
    annotations, defaults), and every value is checked here (``epochs=2.5`` or
    ``batch_size=True`` raise :class:`~robustlab.errors.ConfigError` naming the parameter).

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
    device: where to train (``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``, or a
        ``torch.device``); one this machine lacks is refused here, before any work.
    threads: CPU threads for the run (None: robustlab's rule, see
        :mod:`robustlab.threads`: one thread for small per-batch work unless the user
        fixed a count); the count used is ``summary()["threads"]``.
    checkpoint_dir: write ``last.pt`` there after every epoch (atomically) and resume
        from it when present, bit-exactly on the same machine. With ``select`` the best
        weights so far are also written to ``best.pt`` (and kept inside ``last.pt``, so
        resuming keeps them). A file that is not a robustlab checkpoint is refused.
    progress: show a progress bar over each epoch's steps (default: only when stderr is
        a terminal). Either way one line per epoch goes to the ``robustlab.progress``
        logger, e.g. ``epoch 3/40  loss 0.412  acc 88.1%  val 90.2%  val-robust 61.0%
        1.2 s  ETA 44 s``.
    callbacks: functions ``cb(trainer, record)`` called after each epoch's checkpoint.
    augment: corruption augmentation, e.g. ``{"corruptions": "common", "severities": [1, 2,
        3, 4, 5], "p": 0.5}``: each training image is replaced with probability ``p`` by a
        random corruption at a random severity before the objective sees the batch
        (:mod:`robustlab.train.augment`); None: no augmentation.

    Validation (``fit(train, val)``): clean accuracy on ``val`` every epoch
    (``val_accuracy``) and, with ``val_attack``, robust accuracy (``val_robust_accuracy``,
    through :func:`robustlab.evaluate.robust_accuracy`) every ``val_every`` epochs and
    after the last one.

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

    Training that fails says so: after every epoch that ends past the warm-up (the lr
    warm-up and the objective's ramp, e.g. the eps warm-up), the model's clean
    predictions on a fixed seeded subset of at most :data:`CHANCE_POINTS` training
    points are compared with the training labels
    (:func:`~robustlab.train.monitors.chance_check`); a model no better than
    always predicting the most common label (plus 2 points) gets the flag
    ``training-at-chance`` in that epoch's record (``record["flags"]``) and, when the
    final (or selected) weights are at chance, in ``summary()["flags"]``, with the likely
    fix.

    Data-parallel training (``torchrun``)
    -------------------------------------
    Launched by ``torchrun`` (``WORLD_SIZE`` > 1), :meth:`fit` joins the process group
    (``env://``; ``gloo`` on CPU, ``nccl`` on CUDA where ``device="cuda"`` means
    ``cuda:LOCAL_RANK``) and trains on all ranks together; any script that calls ``fit``
    works unchanged, and so does the CLI::

        torchrun --nproc_per_node=2 -m robustlab run config.yaml
        torchrun --nproc_per_node=4 train.py          # a script calling Trainer(...).fit(...)

    - ``batch_size`` stays the *global* batch: every rank draws the same seeded permutation
      of the training set (``derive_seed("epoch", seed, epoch)``), takes the same global
      batch and keeps its contiguous part of it (rows ``[lo, hi)`` of
      :func:`~robustlab.train.distributed.shard`: the first ``B % W`` ranks get one row
      more, e.g. 25 rows on 2 ranks: 13 and 12). ``batch_size`` and the training set must
      have at least ``W`` rows.
    - Each rank's loss is the sum of its part's per-sample losses divided by the global
      batch size, and the gradients are summed over ranks (one flat all-reduce per step,
      :func:`~robustlab.train.distributed.all_reduce_gradients`), so every step is the
      single-process step on the same global batch up to float summation order (measured:
      max |weight difference| 1.2e-7 after 3 epochs of ERM on a small MLP, 2 ranks vs one
      process; ``tests/train/test_distributed.py`` asserts 1e-5). The gradients are
      reduced by robustlab rather than by wrapping the model in
      ``DistributedDataParallel``: objectives run the model several times per step, take
      gradients with ``torch.autograd.grad`` (attacks, GradAlign's double backward, AWP's
      weight perturbation), walk its layers (bound propagation) or train extra modules
      (co-teaching's peer), none of which DDP's hooks cover. Initial weights are rank
      0's (broadcast, as DDP does), and the weights (and EMA) are broadcast from rank 0
      again after every epoch.
    - Randomness per rank: objectives' generators (random starts, noise), the
      augmentation generator and the global RNG (dropout) are seeded from
      ``(seed, epoch, rank)`` (:func:`~robustlab.train.distributed.rank_seed`; one process
      keeps ``(seed, epoch)``). Ranks thus draw different random numbers for their
      different rows, so adversarial training with random starts, dropout or augmentation
      is *not* the single-process run draw for draw (only deterministic objectives such as
      ERM without dropout are). Objectives that decide within a batch (co-teaching's
      small-loss selection, AWP's weight perturbation) decide within each rank's part, and
      per-sample state (ELR's targets) is updated by the rank that holds the row; the
      checkpoint keeps rank 0's copy of it (a warning says so).
    - BatchNorm normalises each rank's part with that part's statistics (as DDP without
      SyncBatchNorm), and the running statistics are averaged over ranks after every
      epoch. ``nn.SyncBatchNorm`` (CUDA only) gives global-batch statistics.
      The tests use an MLP without BatchNorm.
    - Epoch records are global: metric sums and sample counts are summed over ranks.
      Validation and test accuracy are sharded (each rank measures its contiguous part of
      the points; correct counts are summed, so clean accuracy equals the single-process
      number exactly; robust validation draws each rank's random starts from
      ``(seed, epoch, rank)``).
    - Rank 0 alone runs the end-of-epoch checks (the objective's verdict, e.g. the
      catastrophic-overfitting check, and the training-at-chance check) and sends the
      record, stop reason, rollback, patience and best epoch to the other ranks as JSON;
      every rank follows, so all ranks stop, roll back and select together and never
      wait in a collective the others skip.
    - Only rank 0 writes files (``last.pt``, ``best.pt``; the experiment runner's store row,
      model file and records) and logs; the other ranks wait for it in the next
      collective, and :meth:`fit` ends with a barrier. Resume: every rank reads rank 0's
      ``last.pt`` (on several machines ``checkpoint_dir`` must be on a shared file system;
      ranks that disagree on the epoch raise :class:`~robustlab.errors.ConfigError`).
      Callbacks run on every rank (one that writes files should check
      :func:`robustlab.train.distributed.is_main`).
    - An error on one rank (e.g. a full disk on rank 0) ends that process; torchrun then
      stops the others. A non-finite loss is detected on the summed loss, so every rank
      raises it together.
    """

    def __init__(
        self,
        model: nn.Module,
        objective: Objective | None = None,
        *,
        epochs: int = 10,
        batch_size: int = 128,
        optimizer: Literal["sgd", "adam", "adamw"] = "sgd",
        lr: float = 0.1,
        momentum: float = 0.9,
        nesterov: bool = False,
        weight_decay: float = 5e-4,
        schedule: Literal["constant", "cosine", "multistep", "onecycle"] = "cosine",
        warmup_epochs: float = 0.0,
        milestones: tuple[float, ...] = (0.5, 0.75),
        gamma: float = 0.1,
        grad_clip: float | None = None,
        amp: bool | Literal["bf16", "fp16"] = False,
        channels_last: bool = False,
        ema_decay: float | None = None,
        seed: int = 0,
        device: str = "cpu",
        threads: int | None = None,
        checkpoint_dir: str | Path | None = None,
        progress: bool | None = None,
        callbacks: Sequence[Callable[[Trainer, dict[str, Any]], None]] = (),
        val_attack: str | None = None,
        val_attack_params: dict[str, Any] | None = None,
        val_norm: Literal["linf", "l2", "l1"] | None = None,
        val_eps: float | str | None = None,
        val_every: int = 1,
        val_subset: int | None = None,
        select: Literal["robust", "clean"] | None = None,
        early_stopping: int | None = None,
        augment: dict[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.objective = objective if objective is not None else ERM("ce")
        self.epochs = check_int(epochs, "epochs", minimum=1)
        self.batch_size = check_int(batch_size, "batch_size", minimum=1)
        self.optimizer_name = check_choice(optimizer, "optimizer", OPTIMIZERS)
        self.lr = check_float(lr, "lr", low=0.0, low_open=True)
        self.momentum = check_float(momentum, "momentum", low=0.0, high=1.0, high_open=True)
        self.nesterov = _flag(nesterov, "nesterov")
        if self.nesterov and self.momentum == 0:
            raise ConfigError("nesterov=True needs momentum > 0 (Nesterov momentum without momentum is plain SGD).")
        self.weight_decay = check_float(weight_decay, "weight_decay", low=0.0)
        self.schedule = check_choice(schedule, "schedule", SCHEDULES)
        self.warmup_epochs = check_float(warmup_epochs, "warmup_epochs", low=0.0, high=float(self.epochs))
        if isinstance(milestones, (str, bytes)) or not isinstance(milestones, Sequence):
            raise ConfigError(f"milestones must be a list of epochs (or fractions of training), got {milestones!r}.")
        self.milestones = tuple(check_float(m, "milestones", low=0.0, low_open=True) for m in milestones)
        self.gamma = check_float(gamma, "gamma", low=0.0, low_open=True)
        self.grad_clip = None if grad_clip is None else check_float(grad_clip, "grad_clip", low=0.0, low_open=True)
        if isinstance(amp, bool):
            self.amp: bool | str = amp
        else:
            self.amp = check_choice(amp, "amp", AMP[2:] + (False, True))
        self.channels_last = _flag(channels_last, "channels_last")
        self.ema_decay = (
            None if ema_decay is None
            else check_float(ema_decay, "ema_decay", low=0.0, high=1.0, low_open=True, high_open=True)
        )
        self.seed = check_int(seed, "seed", minimum=0)
        self.device = check_device(device)
        self.threads = None if threads is None else check_int(threads, "threads", minimum=1)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.progress = None if progress is None else _flag(progress, "progress")
        self.callbacks = list(callbacks)
        self.augment = augment
        self.augmentation = build_augmentation(augment)
        self._init_validation(val_attack, val_attack_params, val_norm, val_eps, val_every, val_subset, select, early_stopping)
        self.history: list[dict[str, Any]] = []
        self.ema: WeightEMA | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scaler: Any = None
        self.resumed_from_epoch = 0
        self.threads_used: int | None = None
        self._snapshot_before: dict[str, Any] | None = None  # weights an epoch began with (for a rollback)
        self._world = distributed.World()  # this process's rank (set by fit under torchrun)
        self._reset_run_state()

    def _init_validation(
        self,
        val_attack: str | None,
        val_attack_params: dict[str, Any] | None,
        val_norm: str | None,
        val_eps: float | str | None,
        val_every: int,
        val_subset: int | None,
        select: str | None,
        early_stopping: int | None,
    ) -> None:
        from robustlab import attacks

        self.val_every = check_int(val_every, "val_every", minimum=1)
        self.val_subset = check_subset(val_subset, "val_subset")
        self.select = check_choice(select, "select", (None, *SELECT))
        if self.select == "robust" and val_attack is None:
            raise ConfigError("select='robust' needs a robust validation: set val_attack (e.g. 'pgd' or 'fast').")
        self.early_stopping = None if early_stopping is None else check_int(early_stopping, "early_stopping", minimum=1)
        if self.early_stopping is not None and self.select is None:
            raise ConfigError("early_stopping watches the select metric: set select='robust' or 'clean' as well.")
        if (val_norm is None) != (val_eps is None):
            raise ConfigError("give both val_norm and val_eps (or neither, to use the objective's threat model).")
        self.val_threat = (
            None if val_norm is None or val_eps is None else attacks.ThreatModel(val_norm, check_eps(val_eps, "val_eps"))
        )
        if val_attack is not None and not isinstance(val_attack, str):
            raise ConfigError(f"val_attack must be an attack registry name such as 'pgd', got {val_attack!r}.")
        if val_attack_params is not None and not isinstance(val_attack_params, Mapping):
            raise ConfigError(f"val_attack_params must be a mapping of attack parameters, got {val_attack_params!r}.")
        self.val_attack_name = val_attack
        params = dict(val_attack_params or {})
        if val_attack is not None and not params and attacks.attacks.canonical(val_attack) == "pgd":
            params = dict(DEFAULT_VAL_PGD)
        self.val_attack_params = params
        self.val_attack = None if val_attack is None else attacks.create(val_attack, **params)

    def _reset_run_state(self) -> None:
        self.best: dict[str, Any] | None = None  # {"epoch", "score", "model"}
        self.since_best = 0
        self.stop_reason: str | None = None

    # -- the loop -------------------------------------------------------------------------
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
        Everything that can be refused (empty or misshapen data, labels out of range,
        settings that cannot work together) is refused before the first step.
        """
        val_threat = self._check_inputs(train, val, test)
        self._world = distributed.setup(self.device)  # under torchrun: join the process group
        self.device = distributed.device_for(self.device, self._world)  # cuda -> cuda:LOCAL_RANK
        self.model.to(self.device)
        probe = train.x[: self.batch_size].to(self.device)
        with thread_budget(self.model, probe, threads=self.threads) as threads:
            self.threads_used = threads
            run = self._prepare(train, val_threat)
            for epoch in range(run.start, self.epochs):
                if self.stop_reason is not None:
                    break
                with Progress(f"epoch {epoch + 1}/{self.epochs}", run.steps_per_epoch, show=run.show) as bar:
                    t0 = time.perf_counter()
                    with self._epoch_rng(epoch):
                        record = self._train_epoch(run, train, epoch, bar)
                        rolled_back = self._end_epoch(run, train, epoch, record)
                        if val is not None and not rolled_back:
                            self._validate_and_select(run, val, epoch, record)
                    self._finish_epoch(run, epoch, record, test, bar, t0)
            self._finish()
        distributed.barrier()  # when fit returns on any rank, rank 0's files are written
        return self.history

    def _check_inputs(self, train: Dataset, val: Dataset | None, test: Dataset | None) -> Any:
        """Refuse data and settings that cannot work, before anything changes; returns the
        threat model of the robust validation (None without one)."""
        self._check_data(train, "training")
        if val is not None:
            self._check_data(val, "validation")
        if test is not None:
            self._check_data(test, "test")
        if self.select is not None and val is None:
            raise ConfigError(f"select={self.select!r} needs validation data: call fit(train, val).")
        val_threat = self._resolve_val_threat() if val is not None else None
        self.objective.check_training(self.epochs)
        w = distributed.world()
        if w.distributed and min(self.batch_size, len(train)) < w.size:
            raise ConfigError(
                f"{w.size} ranks share each batch of {min(self.batch_size, len(train))} rows, so some would get "
                f"none: raise batch_size (the global batch) to at least {w.size}, or start fewer ranks."
            )
        return val_threat

    def _prepare(self, train: Dataset, val_threat: Any) -> _Run:
        """Objective binding and setup, optimiser, scaler, EMA, resume from a checkpoint."""
        bind = getattr(self.objective, "bind", None)
        if callable(bind):  # objectives that build modules from the model (co-teaching's peer)
            bind(self.model, self.seed)
        for m in self._modules():
            m.to(self.device)
        images = train.x.dim() == 4
        if self.augmentation is not None:
            self.augmentation.check(train.x)
        channels_last = self.channels_last and images and self.device.type == "cuda"
        if channels_last:
            self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        # every rank starts from rank 0's weights (as DDP does), however each initialised them
        distributed.broadcast_tensors(distributed.module_tensors(self._modules()))
        self.objective.setup(len(train), train.num_classes)
        self.optimizer = self._make_optimizer()
        self._reset_run_state()
        self.scaler = torch.amp.GradScaler("cuda") if self._cuda_amp() and self.amp == "fp16" else None
        if self.ema_decay is not None:
            self.ema = WeightEMA(self.model, self.ema_decay)
        distributed.barrier()  # rank 0 has finished any write before a rank reads last.pt
        start = self._load_checkpoint()  # every rank reads rank 0's checkpoint
        distributed.check_same(start, "the epoch to resume from")
        self.resumed_from_epoch = start
        if start and self._world.is_main:
            log.info("resuming from epoch %d (%s)", start, self._checkpoint_path())
        if self._world.distributed and self._world.is_main and getattr(self.objective, "needs_indices", False):
            log.warning(
                "%s keeps per-sample state: under torchrun each rank updates the rows of its own part of "
                "each batch and checkpoints keep rank 0's copy, so it is not the single-process state.",
                type(self.objective).__name__,
            )
        n = len(train)
        steps_per_epoch = math.ceil(n / self.batch_size)
        end_epoch = getattr(self.objective, "end_epoch", None)
        if getattr(type(self.objective), "end_epoch", None) is getattr(Objective, "end_epoch", object()):
            end_epoch = None  # the base class's no-op: no per-epoch weight snapshot needed
        gen = torch.Generator().manual_seed(derive_seed("chance-subset", self.seed))
        chance_index = torch.randperm(n, generator=gen)[:CHANCE_POINTS].sort().values
        ramp = getattr(self.objective, "ramp_epochs", None)
        warmup_end = max(self.warmup_epochs, float(ramp()) if callable(ramp) else 0.0)
        return _Run(
            start=start,
            n=n,
            steps_per_epoch=steps_per_epoch,
            total_steps=steps_per_epoch * self.epochs,
            show=self._world.is_main and (self.progress if self.progress is not None else is_terminal()),
            end_epoch=end_epoch,
            memory_format=torch.channels_last if channels_last else None,
            val_threat=val_threat,
            chance_index=chance_index,
            warmup_end=warmup_end,
        )

    @contextlib.contextmanager
    def _epoch_rng(self, epoch: int) -> Iterator[None]:
        """The global RNG (dropout) seeded for ``epoch``; the caller's state is restored."""
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(distributed.rank_seed("global", self.seed, epoch, self._world))
            yield

    def _train_epoch(self, run: _Run, train: Dataset, epoch: int, bar: Progress) -> dict[str, Any]:
        """One pass over the shuffled training set; returns the epoch's record so far
        (``epoch``, ``lr``, ``seconds``, ``train_<metric>``, ``samples_per_s``)."""
        w = self._world
        # the same permutation (so the same global batches) on every rank
        order = torch.randperm(run.n, generator=torch.Generator().manual_seed(derive_seed("epoch", self.seed, epoch)))
        obj_gen = torch.Generator(device=self.device).manual_seed(distributed.rank_seed("objective", self.seed, epoch, w))
        self.objective.start_epoch(epoch, obj_gen)
        aug_gen = torch.Generator().manual_seed(distributed.rank_seed("augment", self.seed, epoch, w))
        self._snapshot_before = self._snapshot() if run.end_epoch is not None else None
        t0 = time.perf_counter()
        sums: dict[str, float] = {}
        count = 0
        lr = self.lr
        self._train_mode(True)
        for b in range(run.steps_per_epoch):
            global_idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            lo, hi = distributed.shard(len(global_idx), w.rank, w.size)
            idx = global_idx[lo:hi]  # this rank's contiguous part of the global batch
            xb = train.x[idx].to(self.device, non_blocking=True)
            if self.augmentation is not None and len(idx):
                xb = self.augmentation(xb, aug_gen)
            if run.memory_format is not None:
                xb = xb.contiguous(memory_format=run.memory_format)
            yb = train.y[idx].to(self.device, non_blocking=True)
            lr = self._set_lr(epoch * run.steps_per_epoch + b, run.total_steps, run.steps_per_epoch)
            self.objective.set_progress(epoch + b / run.steps_per_epoch, self.epochs)
            metrics = self._step(xb, yb, idx.to(self.device), global_size=len(global_idx))
            bs = len(idx)
            count += bs
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + (v if _is_count(k) else v * bs)
            bar.advance(loss=sums.get("loss", float("nan")) / max(count, 1),
                        acc=sums.get("accuracy", float("nan")) / max(count, 1))
        if w.distributed:
            sums, count = self._reduce_metrics(sums, count)
        seconds = time.perf_counter() - t0
        record: dict[str, Any] = {"epoch": epoch + 1, "lr": lr, "seconds": round(seconds, 4)}
        record.update({f"train_{k}": (v if _is_count(k) else v / count) for k, v in sums.items()})
        record["samples_per_s"] = count / max(seconds, 1e-9)
        self._train_mode(False)
        return record

    def _reduce_metrics(self, sums: dict[str, float], count: int) -> tuple[dict[str, float], int]:
        """The epoch's metric sums and sample count over all ranks (rank 0's metric names)."""
        keys = distributed.broadcast_json(sorted(sums))
        vec = torch.tensor([sums.get(k, 0.0) for k in keys] + [float(count)], dtype=torch.float64)
        distributed.all_reduce_sum(vec)
        values = vec.tolist()
        return dict(zip(keys, values[:-1])), int(round(values[-1]))

    def _end_epoch(self, run: _Run, train: Dataset, epoch: int, record: dict[str, Any]) -> bool:
        """The objective's end-of-epoch verdict (metrics, stop, rollback to the weights the
        epoch began with), then the training-at-chance check. Returns whether it rolled back.

        Under torchrun the BatchNorm running statistics are first averaged over ranks, then
        rank 0 alone runs these checks and sends its record, stop reason and rollback to the
        other ranks, which follow it; every rank then holds rank 0's weights (and EMA)."""
        if not self._world.distributed:
            rolled_back = self._epoch_checks(run, train, epoch, record)
            self._snapshot_before = None
            return rolled_back
        distributed.average_buffers(self._modules())
        rolled_back = self._epoch_checks(run, train, epoch, record) if self._world.is_main else False
        decision = distributed.broadcast_json(
            {"record": record, "stop_reason": self.stop_reason, "rolled_back": rolled_back}
        )
        if not self._world.is_main:
            record.clear()
            record.update(decision["record"])
            self.stop_reason = decision["stop_reason"]
            if decision["rolled_back"]:
                assert self._snapshot_before is not None
                self._rollback(self._snapshot_before)
        self._snapshot_before = None
        self._broadcast_weights()
        return bool(decision["rolled_back"])

    def _broadcast_weights(self) -> None:
        """Every rank takes rank 0's weights, buffers and EMA (identical already, by
        construction: this guards against any drift)."""
        tensors = distributed.module_tensors(self._modules())
        if self.ema is not None:
            tensors += distributed.state_of(self.ema.shadow)
        distributed.broadcast_tensors(tensors)

    def _epoch_checks(self, run: _Run, train: Dataset, epoch: int, record: dict[str, Any]) -> bool:
        """The objective's verdict and the training-at-chance check (one process, or rank 0)."""
        rolled_back = False
        if run.end_epoch is not None:
            verdict = run.end_epoch(self.model, epoch)
            if verdict is not None:
                if not isinstance(verdict, EpochVerdict):
                    raise ConfigError(f"{type(self.objective).__name__}.end_epoch must return an EpochVerdict or None.")
                record.update(verdict.metrics)
                if verdict.action == "rollback":
                    assert self._snapshot_before is not None
                    self._rollback(self._snapshot_before)
                    rolled_back = True
                if verdict.action is not None:
                    self.stop_reason = verdict.reason or f"{type(self.objective).__name__} stopped training"
        if epoch + 1 > run.warmup_end:
            flag = self._check_at_chance(run, train, epoch)
            if flag is not None:
                record.setdefault("flags", []).append(flag)
        return rolled_back

    def _check_at_chance(self, run: _Run, train: Dataset, epoch: int) -> str | None:
        """The ``training-at-chance`` flag (with the likely fix) if the model's clean
        predictions on the fixed training subset are no better than a constant."""
        idx = run.chance_index
        finding = chance_check(self.model, train.x[idx], train.y[idx])
        if not finding.at_chance:
            return None
        threat = getattr(self.objective, "threat", None)
        if threat is not None and threat.eps > 0:
            params = self.objective.get_params()
            ramp = next((k for k in ("eps_warmup", "rampup", "warmup") if k in params), "eps_warmup")
            fix = (
                f"lower eps ({threat.eps:g} now) or add or lengthen the eps warm-up "
                f"(train.objective_params.{ramp}), lower the learning rate (train.lr, {self.lr:g} now) "
                f"or add an lr warm-up (train.warmup_epochs)"
            )
        else:
            fix = (
                f"lower the learning rate (train.lr, {self.lr:g} now) or add an lr warm-up "
                f"(train.warmup_epochs), and check that the labels belong to the inputs"
            )
        return (
            f"training-at-chance: after epoch {epoch + 1} {finding}: no better than a constant "
            f"prediction, so training has failed. Likely fix: {fix}."
        )

    def _validate_and_select(self, run: _Run, val: Dataset, epoch: int, record: dict[str, Any]) -> None:
        """Clean (and, when due, robust) validation; best-checkpoint selection and early stopping."""
        due = (epoch + 1) % self.val_every == 0 or epoch + 1 == self.epochs or self.stop_reason is not None
        record.update(self._validate(val, epoch, due, run.val_threat))
        if self.select is not None:
            self._consider_best(epoch, record)

    def _finish_epoch(
        self, run: _Run, epoch: int, record: dict[str, Any], test: Dataset | None, bar: Progress, t0: float
    ) -> None:
        """Test accuracy (watched only), the history record, one progress line, the
        checkpoint and the callbacks."""
        if test is not None:
            record["test_accuracy"] = self._global_accuracy(
                test.x, test.y, lambda x, y: clean_accuracy_of(self.model, x, y, device=self.device)
            )
        if self._world.distributed:
            self._follow_main(record)
        main = self._world.is_main
        if self.stop_reason is not None:
            record["stopped"] = self.stop_reason
            if main:
                log.warning("%s", self.stop_reason)
        for flag in record.get("flags", []):
            previous = self.history[-1].get("flags", []) if self.history else []
            if main and flag.split(":")[0] not in [f.split(":")[0] for f in previous]:
                log.warning("%s", flag)
        self.history.append(record)
        run.epoch_seconds.append(time.perf_counter() - t0)
        if main:
            log.debug("epoch %d: %s", epoch + 1, record)
            bar.note(self._epoch_line(run, epoch, record))
        self.save_checkpoint(epoch + 1)  # rank 0 only
        for cb in self.callbacks:
            cb(self, record)

    def _follow_main(self, record: dict[str, Any]) -> None:
        """Every rank takes rank 0's record and run state (stop reason, patience, best
        epoch): the same inputs give the same decisions on every rank already; this makes
        sure no rank ever decides differently and waits in a collective the others skip."""
        state = {
            "record": record,
            "stop_reason": self.stop_reason,
            "since_best": self.since_best,
            "best": None if self.best is None else {k: v for k, v in self.best.items() if k != "model"},
        }
        state = distributed.broadcast_json(state)
        if self._world.is_main:
            return
        record.clear()
        record.update(state["record"])
        self.stop_reason = state["stop_reason"]
        self.since_best = int(state["since_best"])
        best = state["best"]
        if best is None:
            self.best = None
        elif self.best is None or self.best["epoch"] != best["epoch"]:
            weights = self.ema.shadow if self.ema is not None else self.model.state_dict()
            self.best = {**best, "model": {k: v.detach().clone() for k, v in weights.items()}}
        else:
            self.best.update(best)

    def _epoch_line(self, run: _Run, epoch: int, record: dict[str, Any]) -> str:
        """``epoch 3/40  loss 0.412  acc 88.1%  val 90.2%  val-robust 61.0%  1.2 s  ETA 44 s``."""
        parts = [f"epoch {epoch + 1}/{self.epochs}"]
        if "train_loss" in record:
            parts.append(f"loss {record['train_loss']:.3f}")
        for key, label in (
            ("train_accuracy", "acc"),
            ("train_adv_accuracy", "adv-acc"),
            ("val_accuracy", "val"),
            ("val_robust_accuracy", "val-robust"),
            ("test_accuracy", "test"),
        ):
            if key in record and record[key] == record[key]:
                parts.append(f"{label} {100 * record[key]:.1f}%")
        parts.append(format_seconds(run.epoch_seconds[-1]))
        left = self.epochs - (epoch + 1)
        if left and self.stop_reason is None:
            mean = sum(run.epoch_seconds) / len(run.epoch_seconds)
            parts.append(f"ETA {format_seconds(mean * left)}")
        if self.select is not None and self.best is not None:
            parts.append(f"best epoch {self.best['epoch']} ({100 * self.best['score']:.1f}%)")
            if self.early_stopping is not None:
                parts.append(f"patience {self.since_best}/{self.early_stopping}")
        for flag in record.get("flags", []):
            parts.append(f"! {flag.split(':')[0]}")
        if self.stop_reason is not None:
            parts.append("stopped")
        return "  ".join(parts)

    def _finish(self) -> None:
        """Load the selected weights (or the averaged ones) and leave eval mode on."""
        if self.select is not None and self.best is not None:
            self.model.load_state_dict(self.best["model"])
        elif self.ema is not None:
            self.ema.copy_to(self.model)
        self._train_mode(False)

    def summary(self) -> dict[str, Any]:
        """Run-level facts to store with the results: epochs trained, the selected epoch
        and its score, why training stopped early (None if it did not), the CPU threads
        used, and ``flags`` (``"code: sentence"`` strings, e.g. ``training-at-chance``) of
        the epoch whose weights the run ended with (the selected epoch with ``select``)."""
        final: dict[str, Any] = self.history[-1] if self.history else {}
        if self.select is not None and self.best is not None and 0 < self.best["epoch"] <= len(self.history):
            final = self.history[self.best["epoch"] - 1]
        return {
            "epochs_trained": len(self.history),
            "selected": self.select,
            "best_epoch": None if self.best is None else self.best["epoch"],
            "best_metric": None if self.best is None else self.best["metric"],
            "best_score": None if self.best is None else self.best["score"],
            "stopped_early": self.stop_reason is not None,
            "stop_reason": self.stop_reason,
            "threads": self.threads_used,
            "flags": list(final.get("flags", [])),
        }

    # -- steps ----------------------------------------------------------------------------
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

    def _step(
        self, xb: torch.Tensor, yb: torch.Tensor, idx: torch.Tensor, *, global_size: int | None = None
    ) -> dict[str, float]:
        """One optimiser step on the batch ``(xb, yb)`` (rows ``idx`` of the training set).

        Under torchrun ``xb`` is this rank's part of a global batch of ``global_size`` rows
        (possibly empty): the loss is the sum of this part's per-sample losses divided by
        ``global_size``, and the gradients are summed over ranks before the step, so the
        step is the single-process step on the global batch (the mean over its rows) up to
        float summation order. Returned metrics are means over this rank's part."""
        assert self.optimizer is not None
        spread = self._world.distributed
        computed = len(idx) > 0 or not spread  # a rank whose part is empty only joins the reduction
        metrics: dict[str, torch.Tensor] = {}
        if computed:
            with self._autocast():
                per_sample, metrics = self.objective.loss(self.model, xb, yb, idx)
            per_sample = per_sample.float()
        else:
            per_sample = torch.zeros(0, device=self.device)
        loss = per_sample.sum() / max(global_size or 1, 1) if spread else per_sample.mean()
        after_backward = getattr(self.objective, "after_backward", None)
        try:
            if not spread and not torch.isfinite(loss):
                raise NonFiniteInputError(NON_FINITE_LOSS)
            self.optimizer.zero_grad(set_to_none=True)
            if computed:
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                else:
                    loss.backward()
        finally:
            if computed and callable(after_backward):
                after_backward(self.model)  # e.g. AWP restores its perturbed weights here
        if spread:
            total = distributed.all_reduce_gradients(self._params(), loss.detach())
            if total is not None and not torch.isfinite(total):
                raise NonFiniteInputError(NON_FINITE_LOSS)  # on every rank: they share the total
        if self.grad_clip is not None:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self._params(), self.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)
        if not computed:
            return {}
        out = {"loss": float(per_sample.detach().mean())}
        for k, v in metrics.items():
            v = v.detach().float()
            out[k] = float(v.sum()) if _is_count(k) else float(v.mean())
        return out

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

    # -- construction helpers ------------------------------------------------------------
    def _modules(self) -> list[nn.Module]:
        """The model plus any modules the objective trains alongside it."""
        return [self.model, *self.objective.trainable_modules()]

    def _params(self) -> list[nn.Parameter]:
        """The trained parameters, each once, in the same order on every rank."""
        seen: set[int] = set()
        out: list[nn.Parameter] = []
        for m in self._modules():
            for p in m.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
        return out

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
        if len(ds) == 0:
            advice = {
                "training": "pass a training set with at least one sample (check the split, the subset or "
                "the val_fraction that produced it)",
                "validation": "pass validation data with at least one sample (e.g. data.val_fraction > 0), "
                "or call fit(train) without validation data and without select",
                "test": "pass a test set with at least one sample, or leave test=None",
            }[what]
            raise InvalidInputError(f"the {what} set is empty (0 samples); {advice}.")
        expected = getattr(self.model, "input_shape", None)
        if expected is not None:
            check_shape(ds.x[:1], expected, what=f"model (training on {what} data)")
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
        if path is None or self.optimizer is None or not distributed.is_main():
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
        if self.checkpoint_dir is None or self.best is None or not distributed.is_main():
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
        """Restore the state of an interrupted run from ``last.pt``; returns its epoch (0:
        no checkpoint). Only tensors and plain values are loaded (``weights_only=True``)."""
        path = self._checkpoint_path()
        if path is None or not path.exists():
            return 0
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception:  # corrupt, truncated, or holds non-tensor objects
            # torch's own message is left out on purpose: it advises weights_only=False,
            # i.e. running whatever the file contains
            raise CheckpointError(
                f"cannot resume from {path}: the file is unreadable or holds non-tensor objects "
                f"(corrupt, truncated, or not a robustlab training checkpoint). robustlab never "
                f"unpickles arbitrary objects, so it will not load it. Delete {path} to restart "
                f"the run from scratch."
            ) from None
        if not isinstance(state, dict) or state.get("format") != "robustlab-train-checkpoint/1":
            raise CheckpointError(f"{path} is not a robustlab training checkpoint; delete {path} to restart.")
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
        """Clean (and robust) validation accuracy in float32, eval mode, EMA weights if on.
        Robust accuracy goes through the one evaluation path
        (:func:`robustlab.evaluate.robust_accuracy`) with a generator seeded per epoch."""
        out: dict[str, float] = {}
        with self._evaluation_weights():
            out["val_accuracy"] = self._global_accuracy(
                val.x, val.y, lambda x, y: clean_accuracy_of(self.model, x, y, device=self.device)
            )
            if robust and self.val_attack is not None:
                x, y = self._val_subset(val)
                seed = distributed.rank_seed("val", self.seed, epoch, self._world)
                attack = self.val_attack

                def robust_acc(xs: torch.Tensor, ys: torch.Tensor) -> float:
                    gen = torch.Generator(device=self.device).manual_seed(seed)
                    return robust_accuracy(
                        self.model, xs, ys, threat, attack, generator=gen,
                        batch_size=max(self.batch_size, 256), threads=self.threads_used,
                    ).accuracy

                out["val_robust_accuracy"] = self._global_accuracy(x, y, robust_acc)
        return out

    def _global_accuracy(
        self, x: torch.Tensor, y: torch.Tensor, measure: Callable[[torch.Tensor, torch.Tensor], float]
    ) -> float:
        """``measure(x, y)`` (an accuracy); under torchrun each rank measures its contiguous
        part of the points and the correct counts are summed, so clean accuracy is exactly
        the single-process number (attacks draw each rank's random starts from its own
        generator)."""
        w = self._world
        if not w.distributed:
            return measure(x, y)
        lo, hi = distributed.shard(len(x), w.rank, w.size)
        correct = torch.tensor([float(round(measure(x[lo:hi], y[lo:hi]) * (hi - lo))) if hi > lo else 0.0],
                               dtype=torch.float64)
        distributed.all_reduce_sum(correct)
        return float(correct.item()) / len(x)

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


@torch.no_grad()
def clean_accuracy_of(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 1024, device: Any = None
) -> float:
    """Fraction of ``x`` that ``model`` classifies as ``y``: the evaluation path's
    :func:`robustlab.evaluate.clean_accuracy` (``device`` is where the model already is)."""
    return clean_accuracy(model, x, y, batch_size=batch_size)


__all__ = ["BEST_NAME", "CHANCE_POINTS", "CHECKPOINT_NAME", "DEFAULT_VAL_PGD", "Trainer", "clean_accuracy_of", "derive_seed"]
