"""Corruption augmentation: exactly the documented replacement, p=0 is training without
it, resumable draws, and bad settings refused before training."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustlab.corruptions import corrupt
from robustlab.data.base import Dataset
from robustlab.errors import ConfigError, ShapeMismatchError, UnknownNameError
from robustlab.experiments.config import ExperimentConfig
from robustlab.train import Trainer
from robustlab.train.augment import CorruptionAugmentation, build_augmentation
from tests.train.helpers import Net, blobs


def _images(n: int = 64, seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g) * 0.8 + 0.1
    y = (x.mean((1, 2, 3)) > 0.5).long()
    return Dataset(x=x, y=y, num_classes=2, name="img")


def test_p_one_deterministic_corruption_is_exactly_that_corruption() -> None:
    x = _images().x
    aug = CorruptionAugmentation(["contrast"], [5], p=1.0)
    assert torch.equal(aug(x, torch.Generator().manual_seed(0)), corrupt(x, "contrast", 5))


def test_a_fraction_p_is_replaced_and_the_rest_is_untouched() -> None:
    x = _images(n=2000).x
    out = CorruptionAugmentation(["gaussian_noise", "contrast"], [1, 5], p=0.3)(x, torch.Generator().manual_seed(1))
    changed = (out != x).flatten(1).any(1)
    assert 0.26 < float(changed.float().mean()) < 0.34
    assert torch.equal(out[~changed], x[~changed])
    assert torch.equal(out, CorruptionAugmentation(["gaussian_noise", "contrast"], [1, 5], p=0.3)(
        x, torch.Generator().manual_seed(1)))  # same generator state, same batch


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    net.input_shape, net.num_classes = (1, 8, 8), 2  # type: ignore[assignment]
    return net


def test_p_zero_trains_exactly_like_no_augmentation() -> None:
    ds = _images()
    a, b = _net(), _net()
    Trainer(a, epochs=2, batch_size=16, progress=False).fit(ds)
    Trainer(b, epochs=2, batch_size=16, progress=False, augment={"corruptions": "common", "p": 0.0}).fit(ds)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    c = _net()
    Trainer(c, epochs=2, batch_size=16, progress=False, augment={"corruptions": ["shot_noise"], "p": 1.0}).fit(ds)
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_bad_augmentation_is_refused_before_training() -> None:
    with pytest.raises(ConfigError, match="augment takes"):
        build_augmentation({"corruption": "fog"})
    with pytest.raises(UnknownNameError, match="gaussian_noise"):
        build_augmentation({"corruptions": ["gausian_noise"]})
    with pytest.raises(ConfigError, match="1 to 5"):
        Trainer(_net(), augment={"severities": [0]})
    with pytest.raises(ConfigError, match="augment.p"):
        Trainer(_net(), augment={"p": 1.5})
    with pytest.raises(ShapeMismatchError, match="vector data"):
        Trainer(Net(), epochs=1, progress=False, augment={"p": 0.5}).fit(blobs())


def test_configs_without_augmentation_keep_their_hash_and_with_it_round_trip() -> None:
    plain = ExperimentConfig()
    assert "augment" not in plain.to_dict()["train"]
    cfg = ExperimentConfig.model_validate({"train": {"augment": {"corruptions": "common", "p": 0.5}}})
    assert cfg.to_dict()["train"]["augment"] == {"corruptions": "common", "p": 0.5}
    assert cfg.hash() != plain.hash()
    assert cfg.train.trainer_kwargs()["augment"] == {"corruptions": "common", "p": 0.5}
