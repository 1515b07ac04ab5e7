"""Instance-reweighted adversarial training: DONE (Sow, Lin, Wang & Liang, ICLR 2024).

Two objectives:

- ``done``: :class:`DONE`, the KL-regularised DRO weights ``w_i ∝ exp(l_i / r)`` normalised
  over the *whole training set*, with the normaliser tracked across minibatches as a
  compositional estimate (the outer part of the paper's compositional bilevel problem);
- ``done-minibatch``: :class:`DONEMinibatch`, the same weights normalised within each
  minibatch (what ``done`` meant before issue 14).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from robustlab.errors import CheckpointError, ConfigError
from robustlab.losses import Loss
from robustlab.train.adversarial.base import (
    AdversarialObjective,
    clean_accuracy_metric,
    make_attack,
    relative_step,
)
from robustlab.train.objectives import accuracy_metric, objectives
from robustlab.validation import check_bool, check_choice, check_float, check_int


def done_weights(losses: torch.Tensor, r: float) -> torch.Tensor:
    """DONE's instance weights: the solution of the KL-regularised DRO problem
    ``max_{w in simplex} sum_i w_i l_i - r KL(w || uniform)``, i.e.
    ``w = softmax(l / r)`` (computed stably; sums to 1, uniform as ``r -> inf``, one-hot
    on the largest loss as ``r -> 0``)."""
    check_float(r, "r (the DONE temperature)", low=0.0, low_open=True)
    return torch.softmax(losses.detach().double() / r, dim=0).to(losses.dtype)


@objectives.register("done-minibatch")
class DONEMinibatch(AdversarialObjective):
    """DONE's weights within each minibatch (this library's first, simplified DONE; until
    issue 14 it was registered as ``done``, which is now the whole-training-set version
    :class:`DONE`). Sow, Lin, Wang & Liang, ICLR 2024, "Doubly Robust Instance-Reweighted
    Adversarial Training", the KL-regularised DRO weights of their Eq. (3)-(4), normalised
    over the minibatch instead of the training set.

    Inner maximisation as ``pgd-at`` (``pgd`` from the attack registry). With per-sample
    adversarial losses ``l_i = L(f(x'_i), y_i)`` of the batch, the weights are
    ``w = softmax(l / r)`` (:func:`done_weights`, detached) and the outer loss is
    ``sum_i w_i l_i`` (returned per sample as ``B w_i l_i``, so the batch mean is the
    weighted sum). ``r`` trades uniform weights (``r -> inf``: PGD-AT) against
    worst-example training (``r -> 0``).

    What is implemented vs the paper: the closed-form weights within each minibatch, i.e.
    the softmax normaliser is the batch's ``sum_j exp(l_j / r)``, not the training set's
    (:class:`DONE` tracks the latter). No official code was available to take defaults
    from, so ``r=1`` and the attack settings of ``pgd-at`` are this library's choices.

    Metrics: ``adv_accuracy``, ``accuracy`` (clean, eval mode), ``done_entropy`` (the
    entropy of the batch weights in nats; ``log B`` when uniform) and
    ``done_max_weight``.
    """

    default_bn_mode = "train"

    def __init__(
        self,
        loss: str | Loss = "ce",
        loss_params: Mapping[str, Any] | None = None,
        *,
        r: float = 1.0,
        norm: str = "linf",
        eps: float | str = 8 / 255,
        steps: int = 10,
        step_size: float | str | None = None,
        rel_step_size: float | None = None,
        random_start: bool = True,
        eps_warmup: float = 0.0,
        bn_mode: str | None = None,
    ) -> None:
        super().__init__(loss=loss, loss_params=loss_params, norm=norm, eps=eps, eps_warmup=eps_warmup, bn_mode=bn_mode)
        self.r = check_float(r, "r (the DONE temperature; r -> 0 weights only the worst example)", low=0.0, low_open=True)
        self.steps = check_int(steps, "steps", minimum=1)
        self.rel_step = relative_step(step_size, rel_step_size, self.threat.eps, 0.25)
        self.attack = make_attack(
            "pgd", steps=self.steps, rel_step_size=self.rel_step,
            random_start=check_bool(random_start, "random_start"), loss="ce"
        )
        self._record_params(locals())

    def outer(self, model, x, x_adv, y, index, *, metrics=True):  # type: ignore[no-untyped-def]
        logits_adv = model(x_adv)
        per = self._supervised(logits_adv, y, index)
        w = done_weights(per, self.r)
        entropy = -(torch.xlogy(w, w)).sum()
        return per * w * len(per), {
            "adv_accuracy": accuracy_metric(logits_adv, y),
            "accuracy": clean_accuracy_metric(model, x, y),
            "done_entropy": entropy.detach(),
            "done_max_weight": w.max().detach(),
        }


#: the normaliser estimators of :class:`DONE`
NORMALISERS = ("ema", "table")


@objectives.register("done")
class DONE(AdversarialObjective):
    """DONE, doubly robust instance-reweighted adversarial training (Sow, Lin, Wang &
    Liang, ICLR 2024, "Doubly Robust Instance-Reweighted Adversarial Training"), with the
    DRO weights over the **whole training set**.

    The problem (their Sec. 3): ``min_theta max_{w in simplex_n} sum_i w_i l_i(theta) -
    r KL(w || uniform)`` with ``l_i(theta) = L(f_theta(x_i + delta_i*(theta)), y_i)`` the
    adversarial loss of training point ``i``. The inner maximum has the closed form
    ``w_i = exp(l_i / r) / sum_j exp(l_j / r)``, and substituting it gives the compositional
    objective

    ``F(theta) = r log g(theta)``,   ``g(theta) = (1/n) sum_j exp(l_j(theta) / r)``,

    whose gradient is ``sum_i w_i grad l_i = (1/n) sum_i exp(l_i / r) / g(theta) grad l_i``.
    A minibatch ``B`` gives an unbiased estimate of ``g`` but not of ``1 / g``, so — the
    compositional part of the paper's CID algorithm — ``g`` is tracked across minibatches by
    an estimate ``u``, and the step uses

    ``(1/|B|) sum_{i in B} v_i grad l_i``,   ``v_i = exp(l_i / r) / u``   (``v_i / n = w_i``),

    returned per sample as ``v_i * l_i`` with ``v_i`` detached (so the batch mean is the
    estimate). ``u`` is updated with the current batch *before* it is used, and kept in log
    space (``exp(l / r)`` overflows for ``l / r`` above ~700):

    - ``normaliser="ema"`` (default): ``u <- (1 - beta) u + beta (1/|B|) sum_{i in B}
      exp(l_i / r)`` (the first batch sets ``u``), the running estimate of stochastic
      compositional gradient methods (Wang, Fang & Liu 2017, SCGD); ``beta`` default 0.1
      (this library's choice: we could not read the paper's step sizes).
    - ``normaliser="table"``: ``u`` = the mean of ``exp(l_j / r)`` over the latest loss of
      every training point seen so far (needs dataset indices): with a fixed model it is
      the exact full-set normaliser after one pass (a SAGA-like table, our option).

    ``r -> inf`` gives ``v = 1`` (PGD-AT); small ``r`` puts the weight on the hardest points of
    the whole training set, not of the batch as ``done-minibatch`` does.

    What is not implemented (and why): the paper's inner problem is a penalised log-barrier
    version of the attack, which makes ``delta*(theta)`` differentiable so that the
    hypergradient can include the implicit term ``-grad^2_{theta delta} (grad^2_{delta
    delta})^{-1} grad_delta l``. We could read only the paper's abstract and summaries (the
    full text was not retrievable here, and the authors' code, announced as "available
    soon", is not public as far as we could find), so the inner attack is PGD (``pgd`` from
    the attack registry, as ``pgd-at``; Danskin's gradient, no implicit term), and the
    step sizes, ``r`` and the attack settings are this library's choices (``r=1``).

    Metrics: ``adv_accuracy``, ``accuracy`` (clean, eval mode), ``done_log_normaliser``
    (``log u``), ``done_scale`` (mean of ``v`` over the batch: 1 when the batch is typical of
    the training set) and ``done_max_weight`` (largest ``v_i / n``, a full-set weight).
    """

    default_bn_mode = "train"

    def __init__(
        self,
        loss: str | Loss = "ce",
        loss_params: Mapping[str, Any] | None = None,
        *,
        r: float = 1.0,
        normaliser: str = "ema",
        beta: float = 0.1,
        norm: str = "linf",
        eps: float | str = 8 / 255,
        steps: int = 10,
        step_size: float | str | None = None,
        rel_step_size: float | None = None,
        random_start: bool = True,
        eps_warmup: float = 0.0,
        bn_mode: str | None = None,
    ) -> None:
        super().__init__(loss=loss, loss_params=loss_params, norm=norm, eps=eps, eps_warmup=eps_warmup, bn_mode=bn_mode)
        self.r = check_float(r, "r (the DONE temperature; r -> 0 weights only the worst example)", low=0.0, low_open=True)
        self.normaliser = check_choice(normaliser, "normaliser", NORMALISERS)
        self.beta = check_float(beta, "beta (the DONE normaliser's update rate)", low=0.0, high=1.0, low_open=True)
        self.steps = check_int(steps, "steps", minimum=1)
        self.rel_step = relative_step(step_size, rel_step_size, self.threat.eps, 0.25)
        self.attack = make_attack(
            "pgd", steps=self.steps, rel_step_size=self.rel_step,
            random_start=check_bool(random_start, "random_start"), loss="ce"
        )
        self.log_u: torch.Tensor | None = None  # float64 scalar, log of the normaliser estimate
        self.table: torch.Tensor | None = None  # (n,) float64: latest l_j / r of each point
        self.seen: torch.Tensor | None = None  # (n,) bool
        self.num_samples: int | None = None
        self._record_params(locals())

    @property
    def needs_indices(self) -> bool:  # type: ignore[override]
        return self.normaliser == "table" or bool(getattr(self.criterion, "needs_indices", False))

    def setup(self, num_samples: int, num_classes: int) -> None:
        super().setup(num_samples, num_classes)
        self.num_samples = int(num_samples)
        self.log_u = None
        if self.normaliser == "table":
            self.table = torch.zeros(self.num_samples, dtype=torch.float64)
            self.seen = torch.zeros(self.num_samples, dtype=torch.bool)

    def update_normaliser(self, z: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        """Update ``log u`` with the batch's ``z = l / r`` (float64, detached) and return it."""
        z = z.detach().double().cpu()
        if self.normaliser == "ema":
            batch = torch.logsumexp(z, 0) - math.log(len(z))
            if self.log_u is None or self.beta == 1.0:
                self.log_u = batch
            else:
                self.log_u = torch.logaddexp(self.log_u + math.log1p(-self.beta), batch + math.log(self.beta))
        else:
            from robustlab.train.noisy import _require_index

            idx = _require_index(index, self.num_samples, "DONE (normaliser='table')").cpu()
            assert self.table is not None and self.seen is not None
            self.table[idx] = z
            self.seen[idx] = True
            seen = self.table[self.seen]
            self.log_u = torch.logsumexp(seen, 0) - math.log(len(seen))
        return self.log_u

    def full_set_weights(self, losses: torch.Tensor) -> torch.Tensor:
        """``w_i = exp(l_i / r) / (n u)`` for losses of points ``i`` under the current estimate
        ``u`` (``n`` = the training-set size; equals ``done_weights`` of all ``n`` losses once
        ``u`` is exact)."""
        if self.log_u is None or self.num_samples is None:
            raise ConfigError("DONE has no normaliser estimate yet: train at least one batch first.")
        return torch.exp(losses.detach().double() / self.r - self.log_u - math.log(self.num_samples))

    def outer(self, model, x, x_adv, y, index, *, metrics=True):  # type: ignore[no-untyped-def]
        logits_adv = model(x_adv)
        per = self._supervised(logits_adv, y, index)
        z = per.detach().double() / self.r
        log_u = self.update_normaliser(z, index).to(z.device)
        v = torch.exp(z - log_u)
        n = self.num_samples if self.num_samples is not None else len(per)
        return per * v.to(per.dtype), {
            "adv_accuracy": accuracy_metric(logits_adv, y),
            "accuracy": clean_accuracy_metric(model, x, y),
            "done_log_normaliser": log_u.float(),
            "done_scale": v.mean().float(),
            "done_max_weight": (v.max() / n).float(),
        }

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "log_u": self.log_u, "table": self.table, "seen": self.seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if state.get("log_u") is not None:
            self.log_u = torch.as_tensor(state["log_u"], dtype=torch.float64).clone()
        for key in ("table", "seen"):
            t = state.get(key)
            if t is None:
                continue
            mine = getattr(self, key)
            if mine is not None and tuple(t.shape) != tuple(mine.shape):
                raise CheckpointError(
                    f"the checkpoint's DONE {key!r} has shape {tuple(t.shape)}, but this training set needs "
                    f"{tuple(mine.shape)}; the checkpoint belongs to other data. Delete it or use another "
                    f"checkpoint_dir."
                )
            setattr(self, key, t.detach().clone())
