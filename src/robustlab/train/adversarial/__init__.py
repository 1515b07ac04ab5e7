"""Adversarial training objectives for the one training loop.

>>> from robustlab import train
>>> obj = train.create("trades", eps="8/255", beta=6.0)
>>> train.Trainer(model, obj, epochs=10, val_attack="pgd", select="robust").fit(train_set, val_set)

Every objective here minimises an outer loss over adversarial inputs that an attack from
the attack registry produces (``robustlab.attacks.create``): no objective contains its own
attack loop. All of them go through one adapter, :func:`perturb`, which calls the attack
engine's training entry point :meth:`robustlab.attacks.Attack.generate` (every point
attacked, no early stop, final iterate, no re-check, selectable batch-norm mode, no
parameter ``.grad`` accumulated).

Registered objectives (``robustlab.train.objectives``):

=================  ===========================================================  ==========
name               method                                                       bn_mode
=================  ===========================================================  ==========
``pgd-at``         Madry et al. 2018, PGD adversarial training                  ``train``
``trades``         Zhang et al. 2019, TRADES                                    ``eval``
``mart``           Wang et al. 2020, MART                                       ``eval``
``fgsm-rs``        Wong, Rice & Kolter 2020, FGSM with random start + CO check  ``train``
``gradalign``      Andriushchenko & Flammarion 2020, FGSM + GradAlign           ``train``
``aaer``           Lin, Yu & Liu 2023, AAER                                     ``train``
``awp``            Wu, Xia & Wang 2020, AWP around ``pgd-at`` or ``trades``     (base's)
``done``           Sow et al. 2024, DONE: DRO weights over the training set     ``train``
``done-minibatch`` the same weights normalised within each minibatch            ``train``
``adv-comp-sum``   Mao, Mohri & Zhong 2023, smooth adversarial comp-sum loss    ``eval``
=================  ===========================================================  ==========

``bn_mode`` is the module mode while adversarial inputs are generated (batch norm and
dropout): ``"eval"`` (running statistics, TRADES' and MART's official code), ``"train"``
(batch statistics and running-stat updates, the official PGD-AT code of Rice et al. 2020
and the fast-AT codes) or ``"keep"``. The default of each objective follows its official
code (table above); every objective takes ``bn_mode=`` to change it.

Shared parameters (every objective): ``norm`` and ``eps`` (the threat model; fractions
such as ``"8/255"`` accepted), ``eps_warmup`` (epochs of linear eps ramp from 0, updated
every optimiser step; a ramp longer than training is refused before training starts),
``bn_mode``, and ``loss``/``loss_params`` (any loss of :mod:`robustlab.losses` for the
supervised part of the outer objective; loss parameters go in ``loss_params`` because
names such as ``beta`` mean different things to losses and objectives).

One family per file: :mod:`~robustlab.train.adversarial.base` (the base class and the
adapter to the attack engine), ``multistep`` (``pgd-at``), ``regularised`` (``trades``,
``mart``), ``single_step`` (``fgsm-rs``, ``gradalign``, ``aaer``), ``reweighted``
(``done``, ``done-minibatch``), ``comp_sum`` (``adv-comp-sum``) and ``weight_perturbation`` (``awp``). Every
public name is re-exported here (``robustlab.train.adversarial.PGDAT``).

Per-batch metrics are averaged per epoch into the Trainer's history (``train_<name>``);
metrics named ``*_count`` are summed (e.g. ``train_aaer_count``, the number of abnormal
adversarial examples in the epoch).
"""

from __future__ import annotations

from robustlab.train.adversarial.base import (
    BN_MODES,
    AdversarialObjective,
    make_attack,
    perturb,
)
from robustlab.train.adversarial.comp_sum import AdvCompSum
from robustlab.train.adversarial.multistep import PGDAT
from robustlab.train.adversarial.regularised import MART, TRADES, mart_terms
from robustlab.train.adversarial.reweighted import DONE, DONEMinibatch, done_weights
from robustlab.train.adversarial.single_step import AAER, FGSMRS, GradAlign, gradient_alignment
from robustlab.train.adversarial.weight_perturbation import AWP, AWP_BASES

__all__ = [
    "AAER",
    "AWP",
    "AWP_BASES",
    "AdvCompSum",
    "AdversarialObjective",
    "BN_MODES",
    "DONE",
    "DONEMinibatch",
    "FGSMRS",
    "GradAlign",
    "MART",
    "PGDAT",
    "TRADES",
    "done_weights",
    "gradient_alignment",
    "make_attack",
    "mart_terms",
    "perturb",
]
