"""PubDef: training against transfer attacks from public source models (objective ``pubdef``).

>>> obj = train.create("pubdef", sources=["erm.safetensors", "trades.safetensors"], eps=0.3)
>>> train.Trainer(net, obj, epochs=10).fit(train_set)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.attacks import ThreatModel
from robustlab.attacks.engine import model_device
from robustlab.errors import CheckpointError, ConfigError, ShapeMismatchError
from robustlab.models.io import load_model
from robustlab.train.adversarial.base import check_eps, make_attack, relative_step
from robustlab.train.objectives import Objective, accuracy_metric, objectives
from robustlab.validation import check_bool, check_choice, check_float, check_int

SAMPLING = ("random", "all")


@objectives.register("pubdef")
class PubDef(Objective):
    """PubDef (Sitawarin, Chang, Huang, Altoyan & Wagner, ICLR 2024, "PubDef: Defending
    Against Transfer Attacks From Public Models", the defence's training loss), following
    the official code (wagner-group/pubdef: ``save_adv_main.py``, ``main.py``,
    ``src/utils/loss.py``, ``scripts/example_full.sh``), from which the loss's exact form,
    the weights and the attack settings below are taken.

    The defender knows a set of public source models ``S`` and trains on clean images and
    on transfer adversarial examples ``x_s`` crafted on each source ``s`` (PGD on the
    source's cross-entropy), the loss of the official ``CELoss`` with dataset weights:

    ``L(x, y) = (w_0 CE(f(x), y) + sum_s w_s CE(f(x_s), y)) / (w_0 + sum_s w_s)``

    (``w_0 = clean_weight``, ``w_s = source_weights``; the official code normalises the
    weights to sum to one the same way). ``sampling="all"`` computes every source's term
    (the official stacked data mode). ``sampling="random"`` (the official example's
    ``--data-load-mode mix``, which keeps one transfer example per training image, drawn
    uniformly from the sources) draws one source per image with probability
    ``w_s / sum w`` and weights its term by ``sum_s w_s``: an unbiased one-sample estimate
    of the same loss, with one transfer forward pass per image. Sources of weight 0 are
    never attacked, so all source weights 0 is ERM exactly.

    Transfer examples (official ``save_adv_main.py`` with ``--eval-atk-steps 10``): PGD
    with ``steps=10`` of size ``eps/4`` (``max(0.001, eps / 4 / (steps / 10))``), a uniform
    random start, one restart, the final iterate, the source in eval mode; official
    ``eps=8/255`` (CIFAR). They are made from the *training* images and are fixed during
    training: with ``cache=True`` (default) each image's examples are generated the first
    time the image is seen (in the first epoch, with that epoch's generator) and reused in
    every later epoch, which is what pre-generating them once before training gives
    (the cache is part of :meth:`state_dict`, so resuming reuses it). ``cache=False``
    regenerates them for every batch (fresh random starts; ``steps`` source passes per
    source and batch).

    Deviations: the official code saves four copies per image (``--num-dataset-copies
    4``, different random starts) as 8-bit PNG files and picks a copy at random; we keep
    one copy in full precision. Clean and transfer images go through the model in one
    forward pass, as in the official code (shared batch-norm statistics). With the
    Trainer's ``augment``, the cached examples are those of the first augmented view of
    each image (the official code augments loaded examples independently).

    Parameters
    ----------
    sources: paths of robustlab safetensors checkpoints (:func:`robustlab.models.load_model`)
        of the source models; at least one. A missing file raises
        :class:`~robustlab.errors.CheckpointError` here; a source whose ``num_classes`` or
        ``input_shape`` differs from the trained model's is refused at :meth:`bind`.
    source_weights: one non-negative weight per source (default ``1/len(sources)`` each,
        so clean and transfer terms weigh 1:1 as the official ``--dataset-weights 1.0 1.0``).
    clean_weight: ``w_0`` (default 1).
    norm, eps, steps, step_size / rel_step_size: the transfer attack (default L-inf,
        ``8/255``, 10 steps of ``eps/4``).
    sampling: ``"random"`` (default) or ``"all"``, see above.
    cache: keep each image's transfer examples (needs the batches' dataset indices).

    Metrics: ``accuracy`` (clean, training mode), ``transfer_accuracy`` (on the transfer
    examples used, averaged over sources with ``sampling="all"``).
    """

    def __init__(
        self,
        sources: Sequence[str | os.PathLike[str]] | None = None,
        source_weights: Sequence[float] | None = None,
        *,
        clean_weight: float = 1.0,
        norm: str = "linf",
        eps: float | str = 8 / 255,
        steps: int = 10,
        step_size: float | str | None = None,
        rel_step_size: float | None = None,
        sampling: str = "random",
        cache: bool = True,
    ) -> None:
        super().__init__()
        # the numbers first (named in the error), then the source files
        self.clean_weight = check_float(clean_weight, "pubdef clean_weight", low=0.0)
        self.threat = ThreatModel(norm, check_eps(eps))
        self.steps = check_int(steps, "pubdef steps", minimum=1)
        self.rel_step = relative_step(step_size, rel_step_size, self.threat.eps, 0.25)
        self.sampling = check_choice(sampling, "pubdef sampling", SAMPLING)
        self.cache = check_bool(cache, "pubdef cache")
        if sources is None or isinstance(sources, (str, os.PathLike)) or len(sources) == 0:
            raise ConfigError(
                "pubdef needs sources: a non-empty list of paths to source models saved with "
                "robustlab.models.save_model (e.g. sources=['erm.safetensors', 'trades.safetensors'])."
            )
        self.sources = [Path(s) for s in sources]
        missing = [str(p) for p in self.sources if not p.is_file()]
        if missing:
            raise CheckpointError(
                f"pubdef source model file(s) not found: {', '.join(missing)}. Train the source models "
                f"first and save them with robustlab.models.save_model(model, path)."
            )
        if source_weights is None:
            weights = [1.0 / len(self.sources)] * len(self.sources)
        else:
            if isinstance(source_weights, (str, bytes)) or len(source_weights) != len(self.sources):
                raise ConfigError(
                    f"pubdef source_weights must give one weight per source ({len(self.sources)}), "
                    f"got {source_weights!r}."
                )
            weights = [check_float(w, f"pubdef source_weights[{i}]", low=0.0) for i, w in enumerate(source_weights)]
        self.source_weights = weights
        if self.clean_weight + sum(weights) <= 0:
            raise ConfigError("pubdef weights are all 0: give the clean term or a source a positive weight.")
        self.attack = make_attack("pgd", steps=self.steps, rel_step_size=self.rel_step, random_start=True, loss="ce")
        self.models: list[nn.Module] | None = None
        self._examples: torch.Tensor | None = None  # (S, N, *input_shape)
        self._filled: torch.Tensor | None = None  # (N,) bool
        self._num_samples: int | None = None

    @property
    def needs_indices(self) -> bool:  # type: ignore[override]
        return self.cache

    # -- sources --------------------------------------------------------------------------
    def _active(self) -> list[int]:
        return [s for s, w in enumerate(self.source_weights) if w > 0]

    def load_sources(self, model: nn.Module, device: torch.device | str | None = None) -> list[nn.Module]:
        """Load the source models (eval mode, frozen) onto ``device`` and check that they
        classify the trained model's classes from its inputs."""
        dev = device if device is not None else (model_device(model) or "cpu")
        loaded = []
        for path in self.sources:
            src = load_model(path, device=dev).eval()
            for p in src.parameters():
                p.requires_grad_(False)
            for attr, err in (("num_classes", ConfigError), ("input_shape", ShapeMismatchError)):
                mine, theirs = getattr(model, attr, None), getattr(src, attr, None)
                if mine is not None and theirs is not None and tuple(_as_tuple(mine)) != tuple(_as_tuple(theirs)):
                    raise err(
                        f"pubdef source {path} has {attr}={theirs} but the trained model has {attr}={mine}; "
                        f"sources must classify the same data."
                    )
            loaded.append(src)
        self.models = loaded
        return loaded

    def bind(self, model: nn.Module, seed: int) -> None:
        """Load the sources onto the model's device."""
        self.load_sources(model)

    def setup(self, num_samples: int, num_classes: int) -> None:
        self._num_samples = int(num_samples)
        self._examples = None
        self._filled = None

    # -- transfer examples ----------------------------------------------------------------
    def generate(self, source: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Transfer examples for ``(x, y)`` from source ``source`` (PGD on the source)."""
        if self.models is None:
            raise ConfigError("pubdef has no source models loaded: call bind(model, seed) (the Trainer does).")
        if self.generator is None:
            raise ConfigError(
                "pubdef has no random generator yet: the Trainer sets one per epoch through "
                "objective.start_epoch(epoch, generator); call that first when using it directly."
            )
        src = self.models[source]
        return self.attack.generate(src, x, y, self.threat, generator=self.generator, bn_mode="eval")

    def _transfer(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None, wanted: list[int]) -> dict[int, torch.Tensor]:
        if not self.cache:
            return {s: self.generate(s, x, y) for s in wanted}
        if index is None:
            raise ConfigError("pubdef with cache=True needs the batch's dataset indices (pass index=).")
        index = index.to(x.device).long()
        if self._examples is None or self._filled is None:
            n = self._num_samples if self._num_samples is not None else int(index.max()) + 1
            self._examples = torch.zeros((len(self.sources), n, *x.shape[1:]), dtype=x.dtype, device=x.device)
            self._filled = torch.zeros((len(self.sources), n), dtype=torch.bool, device=x.device)
        if int(index.max()) >= self._examples.shape[1]:
            raise ConfigError(
                f"pubdef got dataset index {int(index.max())} but was set up for {self._examples.shape[1]} "
                f"samples (setup(num_samples, ...))."
            )
        out = {}
        for s in wanted:
            new = ~self._filled[s, index]
            if bool(new.any()):
                self._examples[s, index[new]] = self.generate(s, x[new], y[new])
                self._filled[s, index[new]] = True
            out[s] = self._examples[s, index]
        return out

    # -- the loss -------------------------------------------------------------------------
    def loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.models is None:
            self.load_sources(model, x.device)
        active = self._active()
        n = len(x)
        if not active:
            logits = model(x)
            return F.cross_entropy(logits, y, reduction="none"), {"accuracy": accuracy_metric(logits, y)}
        weights = torch.tensor(self.source_weights, dtype=torch.float32, device=x.device)
        norm = self.clean_weight + float(weights.sum())
        if self.sampling == "random":
            if self.generator is None:
                raise ConfigError("pubdef has no random generator yet: call start_epoch(epoch, generator) first.")
            gen = self.generator
            choice = torch.multinomial(weights.to(gen.device), n, replacement=True, generator=gen).to(x.device)
            examples = self._transfer(x, y, index, active)
            x_t = torch.empty_like(x)
            for s in active:
                sel = choice == s
                x_t[sel] = examples[s][sel]
            logits = model(torch.cat([x, x_t]))
            clean, trans = logits[:n], logits[n:]
            loss = (self.clean_weight * F.cross_entropy(clean, y, reduction="none")
                    + float(weights.sum()) * F.cross_entropy(trans, y, reduction="none")) / norm
            return loss, {"accuracy": accuracy_metric(clean, y), "transfer_accuracy": accuracy_metric(trans, y)}
        examples = self._transfer(x, y, index, active)
        logits = model(torch.cat([x, *(examples[s] for s in active)]))
        clean = logits[:n]
        loss = self.clean_weight * F.cross_entropy(clean, y, reduction="none")
        hits = torch.zeros(n, device=x.device)
        for k, s in enumerate(active, start=1):
            part = logits[k * n : (k + 1) * n]
            loss = loss + self.source_weights[s] * F.cross_entropy(part, y, reduction="none")
            hits = hits + accuracy_metric(part, y)
        return loss / norm, {"accuracy": accuracy_metric(clean, y), "transfer_accuracy": hits / len(active)}

    # -- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self._examples is None or self._filled is None:
            return {}
        return {"examples": self._examples, "filled": self._filled}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "examples" in state and "filled" in state:
            self._examples = state["examples"]
            self._filled = state["filled"]

    def get_params(self) -> dict[str, Any]:
        return {
            "sources": [str(p) for p in self.sources], "source_weights": list(self.source_weights),
            "clean_weight": self.clean_weight, "norm": self.threat.norm, "eps": self.threat.eps,
            "steps": self.steps, "rel_step_size": self.rel_step, "sampling": self.sampling, "cache": self.cache,
        }


def _as_tuple(v: Any) -> tuple[Any, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,)


__all__ = ["SAMPLING", "PubDef"]
