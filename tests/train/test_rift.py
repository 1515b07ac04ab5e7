"""RiFT (Zhu et al. 2023): the MRC projection, fine-tuning of one module only, and the
weight interpolation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustlab import models
from robustlab.data.base import Dataset
from robustlab.errors import ConfigError
from robustlab.train.rift import (
    critical_modules,
    interpolate,
    module_robust_criticality,
    project_weight_change,
    rift,
)


def test_projection_rescales_to_eps_times_weight_norm() -> None:
    out = project_weight_change(torch.tensor([[1.0, 0.0]]), torch.tensor([[3.0, 4.0]]), 0.1)
    torch.testing.assert_close(out, torch.tensor([[0.5, 0.0]]))
    inside = torch.tensor([[0.3, 0.0]])  # already within 0.1 * 5: unchanged
    torch.testing.assert_close(project_weight_change(inside, torch.tensor([[3.0, 4.0]]), 0.1), inside)


def test_interpolation_is_linear_in_alpha_and_keeps_integer_buffers() -> None:
    at = {"w": torch.tensor([1.0]), "n": torch.tensor(3)}
    ft = {"w": torch.tensor([2.0]), "n": torch.tensor(9)}
    out = interpolate(at, ft, 0.3)
    torch.testing.assert_close(out["w"], torch.tensor([1.3]))
    assert int(out["n"]) == 3
    for bad in (-0.1, 1.01):
        with pytest.raises(ConfigError, match="alpha"):
            interpolate(at, ft, bad)


def _data(n: int = 96, seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = (0.15 * torch.randn(n, 1, 8, 8, generator=g) + 0.3 * (y.view(-1, 1, 1, 1) + 1) / 3).clamp(0, 1)
    return Dataset(x, y, 3)


def test_mrc_is_nonnegative_for_every_module_and_leaves_model_unchanged() -> None:
    torch.manual_seed(0)
    net = models.create("mlp", num_classes=3, in_channels=1, input_size=8, hidden=[16])
    ds = _data()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    mrc = module_robust_criticality(net, ds.x, ds.y, epochs=2)
    assert set(mrc) == set(critical_modules(net)) == {"layers.0", "layers.2"}
    assert all(v >= 0 for v in mrc.values())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_rift_fine_tunes_only_the_chosen_module_and_never_loses_robustness_on_selection() -> None:
    torch.manual_seed(0)
    net = models.create("mlp", num_classes=3, in_channels=1, input_size=8, hidden=[16])
    train_set, val_set = _data(96, 0), _data(60, 1)
    res = rift(net, train_set, val_set=val_set, eps=0.05, epochs=2, lr=0.05, mrc_epochs=2, mrc_points=64,
               attack_steps=3, batch_size=32)
    assert res.module in {"layers.0", "layers.2"} and res.module == min(res.mrc, key=lambda k: res.mrc[k])
    at = net.state_dict()
    changed = {k for k in at if not torch.equal(at[k], res.finetuned[k])}
    assert changed and all(k.startswith(res.module + ".") for k in changed)
    assert [c["alpha"] for c in res.curve] == [round(0.1 * i, 1) for i in range(11)]
    assert res.gain["robust"] >= 0 and res.gain["clean"] >= 0
    chosen = res.model.state_dict()
    for k in at:
        torch.testing.assert_close(chosen[k], res.alpha * res.finetuned[k] + (1 - res.alpha) * at[k])


def test_unknown_module_is_refused_with_the_choices() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    with pytest.raises(ConfigError, match="choose from"):
        module_robust_criticality(net, torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long), modules=["nope"])
