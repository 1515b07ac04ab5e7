"""Truncated ``L_q`` loss with its periodic per-sample weight refresh (Zhang & Sabuncu 2018).

"Generalized Cross Entropy Loss for Training Deep Neural Networks with Noisy Labels",
NeurIPS 2018, Sec. 3.3. The truncated loss (Eq. 9) is

    ``L_trunc(z, y) = L_q(k)`` if ``p_y <= k``, else ``L_q(p_y)``,  ``L_q(p) = (1 - p^q) / q``,

optimised as ``min_{theta, w in {0,1}^n} sum_i w_i L_q(p_{y_i}) - L_q(k) sum_i w_i``,
alternating SGD steps on ``theta`` with a "pruning" step that sets
``w_i = 1[L_q(p_{y_i}) < L_q(k)] = 1[p_{y_i} > k]``.

The authors released no code; the reference implementation is AlanChou/Truncated-Loss
(``TruncatedLoss.py``, ``main.py``), whose choices are followed here: per-sample loss
``w_i (L_q(p_{y_i}) - L_q(k))`` (the objective above, per sample; it differs from Eq. 9's
value by the constant ``L_q(k)`` on kept samples and is 0 on pruned ones), weights
initialised to 1, no probability clamp, ``q = 0.7``, ``k = 0.5``.

The refresh schedule, precisely
-------------------------------
*Reference code*: before training 0-based epoch ``e`` with ``(e + 1) >= start_prune`` and
``(e + 1) % 10 == 0`` (``start_prune = 40`` for CIFAR-10, 80 for CIFAR-100 in its
README), it reloads the best-so-far checkpoint (selected on *test* accuracy, as its
README admits), runs it in eval mode over the whole training set and recomputes every
``w_i``, then trains the epoch with the current model.

*Here* (online): ``start_epoch(e)`` opens a refresh round at the same epochs
(``(e + 1) >= prune_start`` and ``(e + 1) % prune_every == 0``); each sample's weight is
then recomputed from the *current* model's logits (the batch being trained, detached)
the first time the sample is visited after the round opened, before its loss is
computed. So (i) the model is the current one in training mode, not the best checkpoint
in eval mode, and (ii) samples visited later in the epoch are judged by a model that has
already trained on part of that epoch. A caller who wants the reference protocol runs a
full pass with the chosen model and calls :meth:`TruncatedLq.update_weights` on every
batch after ``start_epoch`` (it marks those samples as refreshed for the round).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from robustlab.losses import functional as Fn
from robustlab.losses.base import StatefulLoss, losses, param_name
from robustlab.validation import check_float, check_int


@losses.register("truncated-lq", aliases=("truncated_lq", "tlq", "truncated-gce"))
class TruncatedLq(StatefulLoss):
    """Truncated ``L_q`` (Zhang & Sabuncu 2018, Eq. 9) with per-sample pruning weights.

    Per-sample loss ``w_i (L_q(p_{y_i}) - L_q(k))`` with ``w_i in {0, 1}`` kept per
    training sample (initially 1) and refreshed to ``1[L_q(p_{y_i}) < L_q(k)]`` in refresh
    epochs; see the module docstring for the exact schedule and how it differs from the
    reference code. Defaults ``q = 0.7``, ``k = 0.5`` (the paper and the reference code),
    ``prune_start = 40`` (1-based epoch of the first refresh, the reference's
    ``--start_prune`` for CIFAR-10) and ``prune_every = 10`` (hard-coded there).

    Needs dataset indices: ``loss(logits, target, index)``; call :meth:`start_epoch` with
    the 0-based epoch before each epoch.
    """

    per_sample_state: ClassVar[dict[str, tuple[float, torch.dtype]]] = {
        "weight": (1.0, torch.float32),
        "refreshed_round": (0, torch.int64),
    }
    weight: torch.Tensor  # per-sample w_i in {0, 1} (buffer)
    refreshed_round: torch.Tensor  # per-sample: the last refresh round applied (buffer)
    refresh_round: torch.Tensor  # scalar: refresh rounds opened so far (buffer)
    last_refresh_epoch: torch.Tensor  # scalar: epoch of the last round opened, -1 if none

    def __init__(
        self,
        q: float = 0.7,
        k: float = 0.5,
        prune_start: int = 40,
        prune_every: int = 10,
        reduction: str = "mean",
    ) -> None:
        super().__init__(reduction)
        self.q = check_float(q, param_name(self, "q"), low=0.0, high=1.0, low_open=True)
        self.k = check_float(
            k, param_name(self, "k"), low=0.0, high=1.0, low_open=True, high_open=True
        )
        self.prune_start = check_int(prune_start, param_name(self, "prune_start"), minimum=1)
        self.prune_every = check_int(prune_every, param_name(self, "prune_every"), minimum=1)
        # refresh bookkeeping: a sample is due for a refresh if refreshed_round < refresh_round
        self.register_buffer("refresh_round", torch.zeros((), dtype=torch.int64))
        self.register_buffer("last_refresh_epoch", torch.full((), -1, dtype=torch.int64))

    @property
    def lq_k(self) -> float:
        """The truncation level ``L_q(k) = (1 - k^q) / q``."""
        return (1.0 - self.k**self.q) / self.q

    def is_refresh_epoch(self, epoch: int) -> bool:
        """Whether the weights are refreshed in 0-based ``epoch`` (reference schedule)."""
        return (epoch + 1) >= self.prune_start and (epoch + 1) % self.prune_every == 0

    def start_epoch(self, epoch: int) -> None:
        """Open a refresh round if ``epoch`` (0-based) is a refresh epoch.

        Calling it again for the same epoch (e.g. after resuming mid-epoch) does not open
        a second round, so samples already refreshed in that epoch are not refreshed twice.
        """
        check_int(epoch, param_name(self, "epoch"), minimum=0)
        if self.is_refresh_epoch(epoch) and int(self.last_refresh_epoch) != epoch:
            self.refresh_round += 1
            self.last_refresh_epoch.fill_(epoch)

    def _lq(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return Fn.truncated_lq(Fn.gather(logits.log_softmax(1), target), self.q)

    @torch.no_grad()
    def update_weights(
        self, logits: torch.Tensor, target: torch.Tensor, index: torch.Tensor
    ) -> None:
        """Set ``w_i = 1[L_q(p_{y_i}) < L_q(k)]`` for the batch (the reference ``update_weight``).

        For the reference protocol: after ``start_epoch``, run the chosen model over the
        whole training set and call this on every batch; those samples then count as
        refreshed for the current round.
        """
        target = target.long()
        index = self._ensure_state(logits, index)
        keep = self._lq(logits.detach(), target) < self.lq_k
        self.weight[index] = keep.to(self.weight.dtype)
        self.refreshed_round[index] = self.refresh_round

    def per_sample(  # type: ignore[override]
        self, logits: torch.Tensor, target: torch.Tensor, index: torch.Tensor
    ) -> torch.Tensor:
        index = self._ensure_state(logits, index)
        lq = self._lq(logits, target)
        with torch.no_grad():
            due = self.refreshed_round[index] < self.refresh_round
            fresh = (lq.detach() < self.lq_k).to(self.weight.dtype)
            self.weight[index] = torch.where(due, fresh, self.weight[index])
            self.refreshed_round[index] = self.refresh_round
        w = self.weight[index].to(lq.dtype)
        return w * (lq - self.lq_k)


__all__ = ["TruncatedLq"]
