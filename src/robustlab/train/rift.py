"""RiFT: robust critical fine-tuning of an adversarially trained model.

K. Zhu, X. Hu, J. Wang, X. Xie, G. Yang. "Improving Generalization of Adversarial Training
via Robust Critical Fine-Tuning." ICCV 2023 (arXiv:2308.02533). Official code:
github.com/microsoft/robustlearn, folder ``RiFT`` (``main.py``, ``utils.py``).

>>> from robustlab.train.rift import rift
>>> res = rift(at_model, train_set, val_set=val_set, eps=0.1)      # doctest: +SKIP
>>> res.alpha, res.module, res.model                                # doctest: +SKIP

Three steps, as in the paper (Sec. 3-4) and the official code:

1. **Module robust criticality** (Def. 3.1, Eq. (4)): for each ``nn.Conv2d``/``nn.Linear``
   module with weight ``W``, the largest increase of the adversarial loss over weight changes
   with ``||dW||_F <= eps_mrc * ||W||_F``::

       MRC(W) = max_{||dW|| <= eps ||W||} L_adv(theta + dW) - L_adv(theta)

   approximated by gradient ascent on the loss of *fixed* adversarial examples (found once by
   PGD against the adversarially trained model), only ``W`` free: SGD with lr 1, ``mrc_epochs``
   passes over the examples in batches of 512, and after each pass ``dW`` is projected onto
   the ball (:func:`project_weight_change`); the MRC is the largest loss seen minus the
   starting loss. Official values: ``eps_mrc = 0.1``, 10 passes, lr 1, batches of 512, only
   weights (no biases) perturbed.
2. **Fine-tuning** the module with the lowest MRC (the non-robust-critical module) on *clean*
   data, all other parameters frozen (weight and bias of that module), with the one Trainer:
   SGD momentum 0.9, lr 1e-3, weight decay 5e-4, 10 epochs, batch 128, lr x0.1 at half of
   training (official ``--lr 0.001``, ``--wd 0.0005``, ``--epochs 10``, step schedule with
   one decay at ``epochs // 2``).
3. **Interpolation** (Eq. (6)): ``theta(alpha) = alpha * theta_FT + (1 - alpha) * theta_AT``
   over every floating-point weight *and buffer* (BatchNorm statistics included), for alpha in
   ``0, 0.1, ..., 1`` (official grid); the chosen alpha has the highest clean accuracy among
   those whose robust accuracy is not below the adversarially trained model's (alpha = 0)
   by more than ``tolerance`` (default 0, "without a robust-accuracy drop"); ties go to the
   higher robust accuracy, then the smaller alpha.

Deviations from the official code, and why:

- the MRC examples come from the *training* set (``mrc_points`` of them, default 1024); the
  official ``generate_adv_dataset`` attacks the CIFAR *test* split, which leaks test data
  into the choice of module;
- the fine-tuned epoch and alpha are chosen on ``val_set`` (a held-out split), where the
  official code keeps the epoch with the best *test* accuracy and reads alpha off test
  numbers; without ``val_set`` the last epoch is kept and alpha is chosen on a seeded 20%
  of ``train_set`` that fine-tuning does not see;
- the PGD for the MRC examples and for selecting alpha uses the threat model given
  (official: L-inf 8/255, 10 steps of 2/225 — a typo for 2/255 — with random start);
  robust accuracy for alpha uses the evaluation path (``robust_accuracy`` with PGD-10);
- integer buffers (``num_batches_tracked``) are kept from the adversarially trained model
  instead of being interpolated into floats.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.attacks import ThreatModel
from robustlab.attacks import create as create_attack
from robustlab.data.base import Dataset
from robustlab.errors import ConfigError
from robustlab.evaluate.metrics import clean_accuracy
from robustlab.evaluate.path import robust_accuracy
from robustlab.models.mixed import check_alpha
from robustlab.train.adversarial.base import check_eps
from robustlab.train.objectives import ERM
from robustlab.train.trainer import Trainer
from robustlab.validation import check_float, check_int

#: the official interpolation grid (``np.arange(0, 1.1, 0.1)`` in ``utils.interpolation``)
ALPHAS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))
#: the official MRC settings (``layer_sharpness(..., epsilon=0.1)``, 10 epochs, SGD lr 1, batch 512)
MRC_EPS, MRC_EPOCHS, MRC_LR, MRC_BATCH = 0.1, 10, 1.0, 512


def project_weight_change(delta: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``delta`` projected onto the ball ``||delta||_F <= eps * ||weight||_F`` (rescaled when
    outside, unchanged when inside), the constraint of the MRC (official ``layer_sharpness``).

    >>> project_weight_change(torch.tensor([[1., 0.]]), torch.tensor([[3., 4.]]), 0.1)
    tensor([[0.5000, 0.0000]])
    """
    eps = check_float(eps, "eps_mrc", low=0.0, low_open=True)
    radius = eps * torch.linalg.vector_norm(weight)
    norm = torch.linalg.vector_norm(delta)
    if norm > radius:
        return delta * (radius / norm)
    return delta.clone()


def critical_modules(model: nn.Module) -> list[str]:
    """Names of the modules whose criticality RiFT measures: every ``nn.Conv2d`` and
    ``nn.Linear`` with a weight, in model order (official: Conv2d and Linear)."""
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and n]


def _mean_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            total += float(F.cross_entropy(model(x[i:i + batch_size]), y[i:i + batch_size], reduction="sum"))
    return total / len(x)


def module_robust_criticality(
    model: nn.Module,
    x_adv: torch.Tensor,
    y: torch.Tensor,
    *,
    modules: Sequence[str] | None = None,
    eps: float = MRC_EPS,
    epochs: int = MRC_EPOCHS,
    lr: float = MRC_LR,
    batch_size: int = MRC_BATCH,
    seed: int = 0,
) -> dict[str, float]:
    """MRC of each module (default :func:`critical_modules`) on fixed adversarial examples
    ``(x_adv, y)``: the largest cross-entropy reached by gradient ascent on the module's
    weight within ``eps * ||W||_F``, minus the loss at the unperturbed weights (Eq. (4);
    see the module docstring). The model itself is not changed. Batches are drawn in a
    seeded order (official: a shuffled DataLoader)."""
    eps = check_float(eps, "eps_mrc", low=0.0, low_open=True)
    epochs = check_int(epochs, "mrc_epochs", minimum=1)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    names = critical_modules(model) if modules is None else list(modules)
    known = dict(model.named_modules())
    for name in names:
        if name not in known or not isinstance(getattr(known[name], "weight", None), torch.Tensor):
            raise ConfigError(f"RiFT: the model has no module {name!r} with a weight; choose from {critical_modules(model)}.")
    was_training = model.training
    model.eval()
    base = _mean_loss(model, x_adv, y, batch_size)
    out: dict[str, float] = {}
    gen = torch.Generator().manual_seed(seed)
    for name in names:
        clone = copy.deepcopy(model).eval()
        weight = clone.get_submodule(name).weight
        assert isinstance(weight, torch.Tensor)
        for p in clone.parameters():
            p.requires_grad_(False)
        weight.requires_grad_(True)
        start = weight.detach().clone()
        opt = torch.optim.SGD([weight], lr=lr)
        worst = base
        for _ in range(epochs):
            order = torch.randperm(len(x_adv), generator=gen)
            for i in range(0, len(order), batch_size):
                idx = order[i:i + batch_size].to(x_adv.device)
                opt.zero_grad()
                (-F.cross_entropy(clone(x_adv[idx]), y[idx])).backward()
                opt.step()
            with torch.no_grad():
                weight.copy_(start + project_weight_change(weight - start, start, eps))
            worst = max(worst, _mean_loss(clone, x_adv, y, batch_size))
        out[name] = worst - base
    model.train(was_training)
    return out


def interpolate(at_state: dict[str, torch.Tensor], ft_state: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """``alpha * ft + (1 - alpha) * at`` for every floating-point tensor of two state dicts
    with the same keys (Eq. (6)); other tensors (integer counters) come from ``at_state``."""
    alpha = check_alpha(alpha, "alpha (0 = the adversarially trained weights, 1 = the fine-tuned ones)")
    if set(at_state) != set(ft_state):
        missing = sorted(set(at_state) ^ set(ft_state))
        raise ConfigError(f"RiFT interpolation needs two state dicts of one architecture; keys differ: {missing[:5]}.")
    out = {}
    for k, a in at_state.items():
        b = ft_state[k]
        out[k] = (alpha * b + (1 - alpha) * a).to(a.dtype) if torch.is_floating_point(a) else a.clone()
    return out


@dataclass
class RiftResult:
    """What :func:`rift` found: ``alpha`` chosen, ``model`` (the interpolated weights at that
    alpha, eval mode), ``module`` fine-tuned, ``mrc`` of every module, ``curve`` (one
    ``{"alpha", "clean_accuracy", "robust_accuracy"}`` per alpha, on the selection points),
    the ``finetuned`` state dict (alpha = 1) and the fine-tuning ``history``."""

    alpha: float
    model: nn.Module
    module: str
    mrc: dict[str, float]
    curve: list[dict[str, float]]
    finetuned: dict[str, torch.Tensor]
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def gain(self) -> dict[str, float]:
        """Clean and robust accuracy of the chosen alpha minus those of alpha = 0."""
        base = self.curve[0]
        chosen = next(c for c in self.curve if c["alpha"] == self.alpha)
        return {"clean": chosen["clean_accuracy"] - base["clean_accuracy"],
                "robust": chosen["robust_accuracy"] - base["robust_accuracy"]}


def _holdout(train_set: Dataset, seed: int) -> tuple[Dataset, Dataset]:
    n = len(train_set)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    k = max(1, n // 5)
    return train_set.subset(order[k:].sort().values), train_set.subset(order[:k].sort().values)


def rift(
    model: nn.Module,
    train_set: Dataset,
    *,
    val_set: Dataset | None = None,
    norm: str = "linf",
    eps: float | str = 8 / 255,
    module: str | None = None,
    eps_mrc: float = MRC_EPS,
    mrc_epochs: int = MRC_EPOCHS,
    mrc_points: int = 1024,
    epochs: int = 10,
    lr: float = 1e-3,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    batch_size: int = 128,
    alphas: Sequence[float] = ALPHAS,
    tolerance: float = 0.0,
    attack_steps: int = 10,
    select_points: int | None = 1000,
    seed: int = 0,
    device: str = "cpu",
    threads: int | None = None,
) -> RiftResult:
    """Robust critical fine-tuning of the adversarially trained ``model`` (not changed).

    Parameters (defaults from the official code unless said; see the module docstring)
    ----------
    train_set, val_set: fine-tuning data (clean) and selection data (epoch and alpha).
    norm, eps: the threat model of the MRC examples and of the robust accuracy that alpha
        must keep (official: L-inf 8/255; give your model's training threat).
    module: fine-tune this module instead of the one with the lowest MRC (the MRC is then
        not computed; ``mrc`` is empty).
    eps_mrc, mrc_epochs, mrc_points: MRC radius (0.1), ascent passes (10) and number of
        training points attacked for it (1024; official: the whole test split).
    epochs, lr, momentum, weight_decay, batch_size: fine-tuning (10, 1e-3, 0.9, 5e-4, 128).
    alphas, tolerance: the interpolation grid (0, 0.1, ..., 1) and the robust-accuracy drop
        allowed (0).
    attack_steps, select_points: PGD steps (10, step eps/4) and number of selection points
        (1000; None: all) for the robust accuracies of the alpha curve.
    """
    threat = ThreatModel(norm, check_eps(eps))
    tolerance = check_float(tolerance, "tolerance", low=0.0)
    grid = sorted({check_alpha(a, "alphas") for a in alphas} | {0.0})
    mrc_points = check_int(mrc_points, "mrc_points", minimum=1)
    fit_set, sel_set = (train_set, val_set) if val_set is not None else _holdout(train_set, seed)
    at_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    dev = torch.device(device)

    mrc: dict[str, float] = {}
    if module is None:
        idx = torch.randperm(len(fit_set), generator=torch.Generator().manual_seed(seed))[:mrc_points]
        x, y = fit_set.x[idx].to(dev), fit_set.y[idx].to(dev)
        work = copy.deepcopy(model).to(dev).eval()
        pgd = create_attack("pgd", steps=attack_steps, rel_step_size=0.25, random_start=True, loss="ce")
        x_adv = pgd.generate(work, x, y, threat, generator=torch.Generator(device=dev).manual_seed(seed), bn_mode="eval")
        mrc = module_robust_criticality(work, x_adv.detach(), y, eps=eps_mrc, epochs=mrc_epochs, seed=seed)
        module = min(mrc, key=lambda k: (mrc[k], k))
    names = dict(model.named_modules())
    if module not in names or not list(names[module].parameters()):
        raise ConfigError(f"RiFT: the model has no module {module!r} with parameters; choose from {critical_modules(model)}.")

    tuned = copy.deepcopy(model)
    prefix = module + "."
    for name, p in tuned.named_parameters():
        p.requires_grad_(name.startswith(prefix))
    trainer = Trainer(tuned, ERM("ce"), epochs=epochs, batch_size=batch_size, optimizer="sgd", lr=lr,
                      momentum=momentum, weight_decay=weight_decay, schedule="multistep", milestones=(0.5,),
                      gamma=0.1, seed=seed, device=device, threads=threads, progress=False,
                      select="clean" if val_set is not None else None)
    history = trainer.fit(fit_set, val_set)
    for p in tuned.parameters():
        p.requires_grad_(True)
    ft_state = {k: v.detach().to("cpu").clone() for k, v in tuned.state_dict().items()}
    at_cpu = {k: v.to("cpu") for k, v in at_state.items()}

    xs, ys = sel_set.x, sel_set.y
    if select_points is not None and select_points < len(xs):
        pick = torch.randperm(len(xs), generator=torch.Generator().manual_seed(seed + 1))[:select_points].sort().values
        xs, ys = xs[pick], ys[pick]
    probe = copy.deepcopy(model).to("cpu").eval()
    curve = []
    for a in grid:
        probe.load_state_dict(interpolate(at_cpu, ft_state, a))
        probe.to(dev).eval()
        clean = clean_accuracy(probe, xs.to(dev), ys.to(dev))
        rob = robust_accuracy(probe, xs.to(dev), ys.to(dev), threat, "pgd", steps=attack_steps, rel_step_size=0.25,
                              seed=seed, threads=threads).accuracy
        curve.append({"alpha": a, "clean_accuracy": clean, "robust_accuracy": float(rob)})
        probe.to("cpu")
    floor = curve[0]["robust_accuracy"] - tolerance
    ok = [c for c in curve if c["robust_accuracy"] >= floor - 1e-12]
    best = max(ok, key=lambda c: (c["clean_accuracy"], c["robust_accuracy"], -c["alpha"]))
    final = copy.deepcopy(model).to("cpu")
    final.load_state_dict(interpolate(at_cpu, ft_state, best["alpha"]))
    return RiftResult(alpha=best["alpha"], model=final.to(dev).eval(), module=module, mrc=mrc, curve=curve,
                      finetuned=ft_state, history=history)


__all__ = [
    "ALPHAS",
    "RiftResult",
    "critical_modules",
    "interpolate",
    "module_robust_criticality",
    "project_weight_change",
    "rift",
]
