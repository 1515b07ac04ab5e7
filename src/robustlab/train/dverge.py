"""DVERGE: diversifying the vulnerabilities of an ensemble's members (objective ``dverge``).

>>> from robustlab import data, models, train
>>> ds = data.load("digits")
>>> ens = models.for_dataset("ensemble", ds, member="mnist_net", size=3)
>>> train.Trainer(ens, train.create("dverge", eps=0.07), epochs=5, weight_decay=1e-4).fit(ds)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.attacks import ThreatModel
from robustlab.attacks.engine import generation_mode, model_bounds
from robustlab.errors import ConfigError
from robustlab.models.ensemble import Ensemble
from robustlab.train.adversarial.base import (
    BN_MODES,
    check_eps,
    clean_accuracy_metric,
    make_attack,
    perturb,
)
from robustlab.train.objectives import Objective, accuracy_metric, objectives
from robustlab.validation import check_bool, check_choice, check_float, check_int

_WEIGHT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_NORM_LAYERS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm)


def feature_layers(model: nn.Module) -> list[nn.Module]:
    """The modules whose outputs are DVERGE's layer-``l`` features, ``l = 1..L``.

    Every convolution and linear layer, in the order the model registers its leaf modules
    (the forward order for every zoo model's main path); when the next leaf is a
    normalisation layer (batch/group/layer norm) its output is taken instead, so the
    feature is "after the normalisation, before the ReLU", as the official
    ``get_features(..., before_relu=True)``. The last layer's output is the logits (the
    official ``layer == depth``).
    """
    leaves = [m for m in model.modules() if next(iter(m.children()), None) is None]
    out: list[nn.Module] = []
    for k, m in enumerate(leaves):
        if isinstance(m, _WEIGHT_LAYERS):
            nxt = leaves[k + 1] if k + 1 < len(leaves) else None
            out.append(nxt if isinstance(nxt, _NORM_LAYERS) else m)
    return out


class _Stop(Exception):
    """Raised by the feature hook to end the forward pass once the layer has run."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.value = value


def features(model: nn.Module, x: torch.Tensor, layer: int) -> torch.Tensor:
    """The output of :func:`feature_layers` ``(model)[layer - 1]`` for ``x`` (the forward
    pass stops there), flattened to ``(N, -1)``."""
    layers = feature_layers(model)
    if not 1 <= layer <= len(layers):
        raise ConfigError(f"layer {layer} is out of range: the model has {len(layers)} feature layers (1..{len(layers)}).")

    def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        raise _Stop(output)

    handle = layers[layer - 1].register_forward_hook(hook)
    try:
        model(x)
    except _Stop as stop:
        return stop.value.reshape(len(x), -1)
    finally:
        handle.remove()
    raise ConfigError(  # pragma: no cover - a layer the forward pass never reaches
        f"feature layer {layer} ({type(layers[layer - 1]).__name__}) is never called in the model's forward pass."
    )


@objectives.register("dverge")
class DVERGE(Objective):
    """DVERGE (Yang, Zhang, Dong, Inkawhich, Gardner, Touchet, Wilkes, Berry & Li, NeurIPS
    2020, "DVERGE: Diversifying Vulnerabilities for Enhanced Robust Generation of
    Ensembles", Sec. 3: the feature-distillation problem and the round-robin diversity
    training), following the official ``train/train_dverge.py`` + ``distillation.py``
    (zjysteven/DVERGE), which is what the defaults and the details below come from.

    **Feature distillation**: for member ``f_i``, a layer ``l`` and a source/target
    pair ``(x_s, x_t)``, ``x'_{f_i^l}(x_t, x_s) = argmin_{||z - x_t||_inf <= eps}
    ||f_i^l(z) - f_i^l(x_s)||^2``: an image that looks like ``x_t`` (the batch being
    trained) but has the layer-``l`` features of another image ``x_s``. Solved as in the
    official ``Linf_distillation``: no random start, ``steps`` signed steps of
    ``step_size`` *down* the feature MSE, with momentum (the gradient divided by its
    per-sample L1 norm and accumulated, ``g <- mu g + grad / ||grad||_1``), each iterate
    projected onto the eps-ball and ``[0, 1]``. The MSE is summed per sample instead of
    averaged over the batch: the sign and the L1 normalisation remove the constant.

    **Training** (the official round-robin): all members distill the batch
    first, with their weights as they are; then member ``i`` minimises
    ``sum_{j != i} CE(f_i(x'_{f_j^l}(x, x_s)), y)``: it learns to classify, with the
    batch's labels, the images whose features member ``j`` confuses with another image's
    (the vulnerability of ``j`` that ``i`` must not share). With ``plus_adv`` the member
    loss becomes ``coeff * (that sum) + CE(f_i(x_adv_i), y)`` with ``x_adv_i`` PGD on
    ``f_i`` (official: eps 8/255, step 2/255, 10 steps, random start). The per-sample loss
    returned is the sum over members, so each member's parameters receive exactly the
    gradient of its own loss.

    With **one member** there is no other member: it trains on its own distilled images
    (ERM on ``x'_{f_1^l}``); the official code would have no loss at all.

    Official defaults (``arguments.py``): ``eps=0.07``, ``step_size=0.007``,
    ``steps=10``, momentum on (``mu=1``), no random start, the layer redrawn uniformly from
    ``1..depth`` every epoch (``layer=None``; a fixed layer is ``--distill-fixed-layer
    --distill-layer``), ``plus_adv`` off with ``coeff=1``; 3 ResNet-20 members, SGD lr 0.1,
    momentum 0.9, weight decay 1e-4, batch 128, 200 epochs, lr x0.1 at 100 and 150,
    starting from an ERM-trained ensemble (``--start-from baseline``: train the members
    first, then this objective). Members stay in training mode while distilling and
    attacking (``bn_mode="train"``).

    Deviations
    ----------
    - *Targets.* The official loader pairs every batch with a second, independently
      shuffled batch of the training set as the ``x_s`` images. The Trainer hands an
      objective one batch, so ``x_s`` is the batch itself under a random cyclic
      permutation (a derangement: no image is its own source for batches of 2 or more),
      drawn from the objective's per-epoch generator.
    - *Layers.* The official ResNet counts its main-path convolutions and the final linear
      layer (``depth``). Here any zoo model works: the layers are those of
      :func:`feature_layers` (shortcut convolutions included), and the layer is drawn from
      ``1..L`` with ``L`` the members' common number of such layers (members with
      different counts need a fixed ``layer`` valid for all).
    - *Target features* are computed once per distillation instead of at every step (the
      same values unless batch-norm statistics change between steps).
    - *One optimiser.* The official code has one SGD optimiser and scheduler per member.
      The Trainer's single optimiser over the ensemble makes the same updates (the member
      losses touch disjoint parameters and SGD is per-parameter); a global-norm
      ``grad_clip`` couples the members, and the Trainer's default weight decay is 5e-4
      (pass ``weight_decay=1e-4`` for the official value).

    Parameters
    ----------
    eps, step_size, steps: the distillation's L-inf budget, step and number of steps.
    layer: fixed feature layer (1-based), or ``None`` for a random layer per epoch.
    momentum, mu: the normalised-gradient momentum of the official distillation.
    random_start: start the distillation from a uniform point of the ball (official: off).
    plus_adv, coeff, adv_eps, adv_step_size, adv_steps: DVERGE+AT (the official
        ``--plus-adv``).
    bn_mode: module mode while distilling and attacking (``"train"``, ``"eval"``,
        ``"keep"``).

    Metrics: ``accuracy`` (the ensemble on clean inputs, eval mode), ``distilled_accuracy``
    (members on the other members' distilled images, averaged), ``layer`` (this epoch's),
    and with ``plus_adv`` ``adv_accuracy`` (members on their own PGD images, averaged).
    """

    def __init__(
        self,
        *,
        eps: float | str = 0.07,
        step_size: float | str = 0.007,
        steps: int = 10,
        layer: int | None = None,
        momentum: bool = True,
        mu: float = 1.0,
        random_start: bool = False,
        plus_adv: bool = False,
        coeff: float = 1.0,
        adv_eps: float | str = 8 / 255,
        adv_step_size: float | str = 2 / 255,
        adv_steps: int = 10,
        bn_mode: str = "train",
    ) -> None:
        super().__init__()
        self.threat = ThreatModel("linf", check_eps(eps))
        self.step_size = check_eps(step_size, "step_size")
        if self.step_size == 0 and self.threat.eps > 0:
            raise ConfigError("dverge step_size must be > 0 (a step of 0 never moves).")
        self.steps = check_int(steps, "dverge steps", minimum=0)
        self.layer = None if layer is None else check_int(layer, "dverge layer", minimum=1)
        self.momentum = check_bool(momentum, "dverge momentum")
        self.mu = check_float(mu, "dverge mu", low=0.0)
        self.random_start = check_bool(random_start, "dverge random_start")
        self.plus_adv = check_bool(plus_adv, "dverge plus_adv")
        self.coeff = check_float(coeff, "dverge coeff", low=0.0)
        self.adv_threat = ThreatModel("linf", check_eps(adv_eps, "adv_eps"))
        self.adv_step_size = check_eps(adv_step_size, "adv_step_size")
        self.adv_steps = check_int(adv_steps, "dverge adv_steps", minimum=1)
        self.bn_mode = check_choice(bn_mode, "bn_mode", BN_MODES)
        rel = self.adv_step_size / self.adv_threat.eps if self.adv_threat.eps > 0 else 1.0
        self.attack = make_attack("pgd", steps=self.adv_steps, rel_step_size=rel, random_start=True, loss="ce")
        self.current_layer: int | None = self.layer
        self.num_layers: int | None = None

    # -- the ensemble ---------------------------------------------------------------------
    @staticmethod
    def members_of(model: nn.Module) -> list[nn.Module]:
        """The members of the Trainer's model, which must be an :class:`Ensemble`."""
        if not isinstance(model, Ensemble):
            raise ConfigError(
                f"dverge trains an ensemble, but the model is a {type(model).__name__}. Build one "
                f"with models.for_dataset('ensemble', data, member='mnist_net', size=3) (or "
                f"models.Ensemble([...]))."
            )
        return list(model.members)

    def _layer_count(self, model: nn.Module) -> int:
        counts = [len(feature_layers(m)) for m in self.members_of(model)]
        if min(counts) == 0:
            raise ConfigError("dverge needs members with convolution or linear layers to take features from.")
        if self.layer is not None:
            if self.layer > min(counts):
                raise ConfigError(
                    f"dverge layer={self.layer} but a member has only {min(counts)} feature layers "
                    f"(convolutions and linear layers); choose a layer in 1..{min(counts)}."
                )
        elif len(set(counts)) > 1:
            raise ConfigError(
                f"the members have different numbers of feature layers {counts}; a random layer per "
                f"epoch needs equal counts, so pass a fixed layer= valid for all (1..{min(counts)})."
            )
        return min(counts)

    def bind(self, model: nn.Module, seed: int) -> None:
        """Check that the model is an ensemble and count its members' feature layers."""
        self.num_layers = self._layer_count(model)

    def start_epoch(self, epoch: int, generator: torch.Generator) -> None:
        """Draw this epoch's layer uniformly from ``1..L`` (official ``random.randint(1, depth)``)."""
        super().start_epoch(epoch, generator)
        if self.layer is None and self.num_layers is not None:
            draw = torch.randint(1, self.num_layers + 1, (1,), generator=generator, device=generator.device)
            self.current_layer = int(draw.item())

    def _need_generator(self) -> torch.Generator:
        if self.generator is None:
            raise ConfigError(
                "dverge has no random generator yet: the Trainer sets one per epoch through "
                "objective.start_epoch(epoch, generator); call that first when using it directly."
            )
        return self.generator

    # -- the two pieces -------------------------------------------------------------------
    def targets(self, x: torch.Tensor) -> torch.Tensor:
        """The source images ``x_s`` whose features are distilled into ``x``: the batch under
        a random cyclic permutation (see the class docstring)."""
        gen = self._need_generator()
        n = len(x)
        perm = torch.randperm(n, generator=gen, device=gen.device).to(x.device)
        src = torch.empty_like(perm)
        src[perm] = perm.roll(-1)
        return x[src]

    def distill(self, member: nn.Module, x: torch.Tensor, source: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        """Feature distillation: images within ``eps`` (L-inf) of ``x``, inside the input box, whose
        layer-``layer`` features approach those of ``source`` (detached)."""
        layer = self.current_layer if layer is None else layer
        if layer is None:
            raise ConfigError("dverge has no layer yet: bind the objective to the ensemble and call start_epoch first.")
        bounds = model_bounds(member)
        x = x.detach()
        with generation_mode(member, self.bn_mode):
            with torch.no_grad():
                goal = features(member, source.detach(), layer)
            x_adv = x.clone()
            if self.random_start and self.threat.eps > 0:
                gen = self._need_generator()
                noise = torch.rand(x.shape, generator=gen, device=gen.device, dtype=x.dtype).to(x.device)
                x_adv = (x + (2 * noise - 1) * self.threat.eps).clamp(*bounds)
            g = torch.zeros_like(x)
            for _ in range(self.steps if self.threat.eps > 0 else 0):
                x_adv.requires_grad_(True)
                with torch.enable_grad():
                    loss = (features(member, x_adv, layer) - goal).pow(2).sum()
                    (grad,) = torch.autograd.grad(loss, x_adv)
                if self.momentum:
                    l1 = grad.reshape(len(grad), -1).abs().sum(1).clamp_min(1e-12)
                    g = self.mu * g + grad / l1.view(-1, *([1] * (grad.dim() - 1)))
                    direction = g
                else:
                    direction = grad
                x_adv = self.threat.project(x_adv.detach() - self.step_size * direction.sign(), x, bounds)
        return x_adv.detach()

    # -- the loss -------------------------------------------------------------------------
    def loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        members = self.members_of(model)
        if self.num_layers is None:
            self.num_layers = self._layer_count(model)
            if self.current_layer is None and self.generator is not None:
                self.start_epoch(0, self.generator)
        source = self.targets(x)
        distilled = [self.distill(m, x, source) for m in members]
        adv: list[torch.Tensor] = []
        if self.plus_adv:
            adv = [perturb(self.attack, m, x, y, self.adv_threat, self.generator, self.bn_mode) for m in members]
        total = torch.zeros(len(x), device=x.device)
        hits = torch.zeros(len(x), device=x.device)
        adv_hits = torch.zeros(len(x), device=x.device)
        count = 0
        for i, m in enumerate(members):
            others = [j for j in range(len(members)) if j != i] or [i]
            member_loss = torch.zeros(len(x), device=x.device)
            for j in others:
                logits = m(distilled[j])
                member_loss = member_loss + F.cross_entropy(logits, y, reduction="none")
                hits = hits + accuracy_metric(logits, y)
                count += 1
            if self.plus_adv:
                logits_adv = m(adv[i])
                member_loss = self.coeff * member_loss + F.cross_entropy(logits_adv, y, reduction="none")
                adv_hits = adv_hits + accuracy_metric(logits_adv, y)
            total = total + member_loss
        metrics = {
            "accuracy": clean_accuracy_metric(model, x, y),
            "distilled_accuracy": hits / count,
            "layer": torch.full((len(x),), float(self.current_layer or 0), device=x.device),
        }
        if self.plus_adv:
            metrics["adv_accuracy"] = adv_hits / len(members)
        return total, metrics

    def get_params(self) -> dict[str, Any]:
        return {
            "eps": self.threat.eps, "step_size": self.step_size, "steps": self.steps, "layer": self.layer,
            "momentum": self.momentum, "mu": self.mu, "random_start": self.random_start,
            "plus_adv": self.plus_adv, "coeff": self.coeff, "adv_eps": self.adv_threat.eps,
            "adv_step_size": self.adv_step_size, "adv_steps": self.adv_steps, "bn_mode": self.bn_mode,
        }


__all__ = ["DVERGE", "feature_layers", "features"]
