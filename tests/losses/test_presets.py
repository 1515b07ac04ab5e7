"""Published presets: values from the official configs, usable with losses.create."""

import pytest
import torch

from robustlab import losses
from robustlab.errors import UnknownNameError


def test_sce_presets_are_the_official_values():
    assert losses.preset("sce", "mnist") == {"alpha": 0.01, "beta": 1.0}
    assert losses.preset("sce", "cifar10") == {"alpha": 0.1, "beta": 1.0}
    assert losses.preset("sce", "cifar100") == {"alpha": 6.0, "beta": 0.1}


def test_apl_and_elr_presets():
    assert losses.preset("nce+rce", "cifar100") == {"alpha": 10.0, "beta": 0.1}
    assert losses.preset("nce+mae", "mnist") == {"alpha": 1.0, "beta": 10.0}
    assert losses.preset("ngce+mae", "cifar10") == {"alpha": 1.0, "beta": 1.0, "q": 0.1}
    assert losses.preset("gce", "cifar10") == {"q": 0.7}
    assert losses.preset("elr", "cifar10") == {"beta": 0.7, "lam": 3.0}
    assert losses.preset("elr", "cifar100") == {"beta": 0.9, "lam": 7.0}
    assert losses.preset("ELR", "CIFAR_10-asym".replace("_", "")) == {"beta": 0.9, "lam": 1.0}


def test_every_preset_of_a_registered_loss_builds_it_with_those_parameters():
    z = torch.randn(8, 10, dtype=torch.float64)
    y = torch.randint(0, 10, (8,))
    seen_losses = set()
    for p in losses.presets():
        assert p.source and p.dataset and p.params
        if p.loss not in losses.losses:
            assert p.loss == "elr"  # the only non-loss method with presets
            continue
        seen_losses.add(p.loss)
        loss = losses.create(p.loss, reduction="none", **p.params)
        got = loss.get_params()
        assert {k: got[k] for k in p.params} == dict(p.params)
        out = loss(z, y, torch.arange(8)) if loss.needs_indices else loss(z, y)
        assert out.shape == (8,) and torch.isfinite(out).all()
    for name in ["sce", "gce", "nce+rce", "nce+mae", "nfl+rce", "nfl+mae", "ngce+rce", "ngce+mae"]:
        assert name in seen_losses


def test_presets_listing_and_filter():
    sce = losses.presets("sce")
    assert {p.dataset for p in sce} == {"mnist", "cifar10", "cifar100", "webvision-mini"}
    assert all(p.loss == "sce" for p in sce)
    assert all("Active-Passive-Losses" in p.source for p in sce)
    assert len(losses.presets()) > len(sce)


def test_preset_returns_a_fresh_dict():
    d = losses.preset("sce", "cifar10")
    d["alpha"] = 99.0
    assert losses.preset("sce", "cifar10")["alpha"] == 0.1


def test_unknown_presets_list_close_matches():
    with pytest.raises(UnknownNameError, match="'sce'"):
        losses.preset("sc", "cifar10")
    with pytest.raises(UnknownNameError, match="'cifar10'"):
        losses.preset("sce", "cifar-10")
    with pytest.raises(UnknownNameError, match="cifar100"):
        losses.preset("nce+rce", "imagenet")
    with pytest.raises(UnknownNameError, match="'gce'"):
        losses.presets("gcee")
