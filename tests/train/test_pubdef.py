"""PubDef: weighted clean + transfer loss, cached transfer examples, typed errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from robustlab import models, train
from robustlab.attacks import ThreatModel
from robustlab.attacks import create as create_attack
from robustlab.errors import CheckpointError, ConfigError, ShapeMismatchError
from robustlab.train.pubdef import PubDef


def _source(tmp_path: Path, name: str, seed: int, k: int = 3, d: int = 6) -> str:
    torch.manual_seed(seed)
    net = models.create("mlp", num_classes=k, in_channels=d, hidden=[16])
    return str(models.save_model(net, tmp_path / f"{name}.safetensors"))


def _batch(n: int = 20) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g), torch.arange(n)


def _target() -> torch.nn.Module:
    torch.manual_seed(9)
    return models.create("mlp", num_classes=3, in_channels=6, hidden=[16])


def _ready(obj: PubDef, model: torch.nn.Module, n: int = 20, seed: int = 0) -> PubDef:
    obj.bind(model, 0)
    obj.setup(n, 3)
    obj.start_epoch(0, torch.Generator().manual_seed(seed))
    return obj


def test_source_weight_zero_is_erm(tmp_path: Path) -> None:
    net = _target()
    x, y, idx = _batch()
    obj = _ready(PubDef([_source(tmp_path, "a", 1)], source_weights=[0.0]), net)
    per, metrics = obj.loss(net, x, y, idx)
    torch.testing.assert_close(per, F.cross_entropy(net(x), y, reduction="none"), rtol=0, atol=0)
    assert obj.state_dict() == {}  # no source was attacked


def test_all_sampling_is_the_weighted_mean_of_clean_and_transfer_ce(tmp_path: Path) -> None:
    net = _target()
    x, y, idx = _batch()
    paths = [_source(tmp_path, "a", 1), _source(tmp_path, "b", 2)]
    obj = _ready(PubDef(paths, source_weights=[1.0, 3.0], clean_weight=2.0, eps=0.1, sampling="all"), net)
    per, _ = obj.loss(net, x, y, idx)
    # the transfer examples: PGD-10, step eps/4, on each source, from the epoch's generator
    gen = torch.Generator().manual_seed(0)
    pgd = create_attack("pgd", steps=10, rel_step_size=0.25, random_start=True, loss="ce")
    srcs = [models.load_model(p) for p in paths]
    xs = [pgd.generate(s, x, y, ThreatModel("linf", 0.1), generator=gen) for s in srcs]
    ce = lambda z: F.cross_entropy(net(z), y, reduction="none")  # noqa: E731
    expected = (2.0 * ce(x) + 1.0 * ce(xs[0]) + 3.0 * ce(xs[1])) / 6.0
    torch.testing.assert_close(per, expected, rtol=1e-5, atol=1e-6)
    for s, xa in zip(srcs, xs):
        assert float((xa - x).abs().max()) <= 0.1 + 1e-6
        assert F.cross_entropy(s(xa), y) > F.cross_entropy(s(x), y)  # adversarial for the source


def test_random_sampling_is_unbiased_for_the_all_loss(tmp_path: Path) -> None:
    net = _target()
    x, y, idx = _batch(400)
    paths = [_source(tmp_path, "a", 1), _source(tmp_path, "b", 2)]
    both = _ready(PubDef(paths, source_weights=[0.25, 0.75], eps=0.2, sampling="all"), net, n=400)
    full = both.loss(net, x, y, idx)[0].detach()
    rand = _ready(PubDef(paths, source_weights=[0.25, 0.75], eps=0.2, sampling="random"), net, n=400)
    rand._examples, rand._filled = both._examples, both._filled  # the same transfer examples
    with torch.no_grad():
        draws = torch.stack([rand.loss(net, x, y, idx)[0] for _ in range(30)]).mean(0)
    assert abs(float(draws.mean()) - float(full.mean())) < 0.02


def test_transfer_examples_are_cached_per_sample(tmp_path: Path) -> None:
    net = _target()
    x, y, idx = _batch()
    obj = _ready(PubDef([_source(tmp_path, "a", 1)], eps=0.1, sampling="all"), net)
    first, _ = obj.loss(net, x, y, idx)
    cached = obj.state_dict()["examples"].clone()
    obj.start_epoch(1, torch.Generator().manual_seed(123))  # another epoch, another generator
    again, _ = obj.loss(net, x, y, idx)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert torch.equal(obj.state_dict()["examples"], cached)
    # without the cache, the next epoch's random starts give other examples
    fresh = _ready(PubDef([_source(tmp_path, "a", 1)], eps=0.1, sampling="all", cache=False), net)
    fresh.start_epoch(1, torch.Generator().manual_seed(123))
    assert not torch.equal(fresh.loss(net, x, y, idx)[0], first)


def test_trainer_runs_pubdef_with_indices(tmp_path: Path) -> None:
    from tests.train.helpers import blobs

    ds = blobs(n=90, d=6, k=3)
    net = _target()
    obj = train.create("pubdef", sources=[_source(tmp_path, "a", 1)], eps=0.1)
    trainer = train.Trainer(net, obj, epochs=2, batch_size=30, lr=0.05, progress=False)
    trainer.fit(ds)
    assert bool(obj.state_dict()["filled"].all())  # every training image got its example once
    assert "train_transfer_accuracy" in trainer.history[-1]


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="non-empty list"):
        PubDef([])
    with pytest.raises(CheckpointError, match="not found"):
        PubDef([str(tmp_path / "missing.safetensors")])
    path = _source(tmp_path, "a", 1)
    with pytest.raises(ConfigError, match="one weight per source"):
        PubDef([path], source_weights=[1.0, 1.0])
    with pytest.raises(ConfigError, match="all 0"):
        PubDef([path], source_weights=[0.0], clean_weight=0.0)
    wrong_classes = models.create("mlp", num_classes=4, in_channels=6, hidden=[4])
    with pytest.raises(ConfigError, match="num_classes"):
        PubDef([path]).bind(wrong_classes, 0)
    wrong_shape = models.create("mlp", num_classes=3, in_channels=5, hidden=[4])
    with pytest.raises(ShapeMismatchError, match="input_shape"):
        PubDef([path]).bind(wrong_shape, 0)
