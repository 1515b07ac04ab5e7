"""DVERGE: feature distillation, the round-robin loss, and training an ensemble."""

from __future__ import annotations

from typing import Any, cast

import pytest
import torch
import torch.nn.functional as F

from robustlab import models, train
from robustlab.data.base import Dataset
from robustlab.errors import ConfigError
from robustlab.train.dverge import DVERGE, feature_layers, features


def _ensemble(size: int, seed: int = 0) -> models.Ensemble:
    torch.manual_seed(seed)
    net = models.create("ensemble", num_classes=4, in_channels=1, input_size=8, member="mnist_net", size=size)
    return cast(models.Ensemble, net)


def _w(member: Any) -> torch.Tensor:
    """The first convolution's weight of a mnist_net member."""
    return cast(torch.Tensor, member.layers[0].weight)


def _batch(n: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g)


def _bound(obj: DVERGE, ens: torch.nn.Module, seed: int = 0) -> DVERGE:
    obj.bind(ens, 0)
    obj.start_epoch(0, torch.Generator().manual_seed(seed))
    return obj


def test_feature_layers_of_mnist_net_are_its_four_weight_layers() -> None:
    net: Any = _ensemble(1).members[0]
    layers = feature_layers(net)
    assert layers == [net.layers[0], net.layers[2], net.layers[5], net.layers[7]]
    x, _ = _batch(3)
    torch.testing.assert_close(features(net, x, 4), net(x))  # the last layer is the logits
    assert features(net, x, 1).shape == (3, 16 * 4 * 4)


@pytest.mark.parametrize("random_start", [False, True])
def test_distilled_images_stay_in_the_ball_and_the_box(random_start: bool) -> None:
    ens = _ensemble(2)
    obj = _bound(DVERGE(eps=0.07, step_size=0.02, steps=10, layer=2, random_start=random_start), ens)
    x, _ = _batch()
    x[:4] = 0.0  # at the box's edges the ball is cut by [0, 1]
    x[4:8] = 1.0
    src = obj.targets(x)
    xd = obj.distill(ens.members[0], x, src)
    assert float((xd - x).abs().max()) <= 0.07 + 1e-6
    assert float(xd.min()) >= 0.0 and float(xd.max()) <= 1.0
    assert float((xd - x).abs().max()) > 0.05  # it moves to the ball's surface somewhere
    # and it does what Eq. (2) asks: the layer-2 features move towards the source's
    f = features(ens.members[0], torch.cat([x, xd, src]), 2).split(len(x))
    before = (f[0] - f[2]).pow(2).sum(1)
    after = (f[1] - f[2]).pow(2).sum(1)
    assert bool((after < before).float().mean() > 0.9)


def test_targets_are_a_derangement_of_the_batch() -> None:
    obj = _bound(DVERGE(), _ensemble(2))
    x = torch.arange(10.0).view(10, 1)
    src = obj.targets(x)
    assert sorted(src.view(-1).tolist()) == list(range(10))
    assert bool((src != x).all())


def test_one_member_is_erm_on_its_distilled_images() -> None:
    ens = _ensemble(1)
    x, y = _batch()
    per, metrics = _bound(DVERGE(layer=3), ens, seed=7).loss(ens, x, y, None)
    ref_obj = _bound(DVERGE(layer=3), ens, seed=7)
    xd = ref_obj.distill(ens.members[0], x, ref_obj.targets(x))
    expected = F.cross_entropy(ens.members[0](xd), y, reduction="none")
    torch.testing.assert_close(per, expected, rtol=0, atol=0)
    assert not torch.equal(xd, x)
    torch.testing.assert_close(metrics["distilled_accuracy"], (ens.members[0](xd).argmax(1) == y).float())


def test_each_member_learns_from_the_others_distilled_images() -> None:
    ens = _ensemble(3)
    x, y = _batch()
    per, _ = _bound(DVERGE(layer=2), ens, seed=3).loss(ens, x, y, None)
    ref = _bound(DVERGE(layer=2), ens, seed=3)
    src = ref.targets(x)
    d = [ref.distill(m, x, src) for m in ens.members]
    m = list(ens.members)
    ce = lambda i, j: F.cross_entropy(m[i](d[j]), y, reduction="none")  # noqa: E731
    expected = ce(0, 1) + ce(0, 2) + ce(1, 0) + ce(1, 2) + ce(2, 0) + ce(2, 1)
    torch.testing.assert_close(per, expected, rtol=1e-6, atol=1e-6)
    # member 0's gradient is that of its own loss alone
    per.mean().backward()
    g_total = cast(torch.Tensor, _w(m[0]).grad).clone()
    ens.zero_grad()
    (ce(0, 1) + ce(0, 2)).mean().backward()
    torch.testing.assert_close(g_total, _w(m[0]).grad, rtol=1e-5, atol=1e-7)


def test_plus_adv_adds_each_members_pgd_loss() -> None:
    ens = _ensemble(2)
    x, y = _batch()
    base, _ = _bound(DVERGE(layer=2), ens, seed=1).loss(ens, x, y, None)
    plus, metrics = _bound(DVERGE(layer=2, plus_adv=True, coeff=0.5, adv_eps=0.1), ens, seed=1).loss(ens, x, y, None)
    assert "adv_accuracy" in metrics
    # the PGD terms are positive, so the loss exceeds half the diversity loss
    assert bool((plus > 0.5 * base).all())


def test_layer_is_redrawn_each_epoch_within_range() -> None:
    ens = _ensemble(2)
    obj = DVERGE()
    obj.bind(ens, 0)
    drawn = set()
    for epoch in range(40):
        obj.start_epoch(epoch, torch.Generator().manual_seed(epoch))
        drawn.add(obj.current_layer)
    assert drawn == {1, 2, 3, 4}


def test_trainer_trains_every_member() -> None:
    g = torch.Generator().manual_seed(0)
    ds = Dataset(x=torch.rand(64, 1, 8, 8, generator=g), y=torch.arange(64) % 4, num_classes=4, name="toy")
    ens = _ensemble(2)
    before = [_w(m).detach().clone() for m in ens.members]
    trainer = train.Trainer(ens, train.create("dverge", steps=3), epochs=1, batch_size=32, progress=False)
    trainer.fit(ds)
    for m, w in zip(ens.members, before):
        assert not torch.equal(_w(m), w)
    assert 1 <= trainer.history[0]["train_layer"] <= 4


def test_errors() -> None:
    net = models.create("mnist_net", num_classes=4, in_channels=1, input_size=8)
    x, y = _batch(4)
    with pytest.raises(ConfigError, match="ensemble"):
        DVERGE().bind(net, 0)
    with pytest.raises(ConfigError, match="layer"):
        DVERGE(layer=9).bind(_ensemble(2), 0)
    with pytest.raises(ConfigError, match="generator"):
        DVERGE(layer=1).loss(_ensemble(2), x, y, None)
