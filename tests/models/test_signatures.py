"""Robust weight signatures (Cai et al. 2023): extraction is a difference of shallow layers,
patching adds alpha times it there only, and other architectures are refused by layer name."""

from __future__ import annotations

import pytest
import torch

from robustlab import models
from robustlab.errors import ConfigError
from robustlab.models.signatures import (
    SignatureMismatchError,
    apply_signature,
    extract_signature,
    shallow_modules,
)


def _net(seed: int, **kw: object) -> torch.nn.Module:
    torch.manual_seed(seed)
    params = {"num_classes": 10, "in_channels": 1, "input_size": 8, **kw}
    return models.create("mnist_net", **params)  # type: ignore[arg-type]


def test_default_layers_are_the_shallow_half() -> None:
    assert shallow_modules(_net(0)) == ["layers.0", "layers.2"]
    assert shallow_modules(_net(0), 1) == ["layers.0"]


def test_signature_is_the_shallow_difference_and_patching_adds_alpha_times_it() -> None:
    base, robust, other = _net(0), _net(1), _net(2)
    sig = extract_signature(robust, base, layers=1)
    assert set(sig.deltas) == {"layers.0.weight", "layers.0.bias"} and sig.architecture == "mnist_net"
    torch.testing.assert_close(sig.deltas["layers.0.weight"], robust.get_parameter("layers.0.weight") - base.get_parameter("layers.0.weight"))
    patched = apply_signature(other, sig, alpha=0.5)
    torch.testing.assert_close(patched.get_parameter("layers.0.weight"), other.get_parameter("layers.0.weight") + 0.5 * sig.deltas["layers.0.weight"])
    for name in ("layers.2.weight", "layers.5.weight", "layers.7.bias"):
        assert torch.equal(patched.state_dict()[name], other.state_dict()[name])
    # alpha = 1 on the base model itself gives the robust model's shallow layers back
    back = apply_signature(base, sig, alpha=1.0)
    torch.testing.assert_close(back.get_parameter("layers.0.weight"), robust.get_parameter("layers.0.weight"))
    assert not torch.equal(other.get_parameter("layers.0.weight"), patched.get_parameter("layers.0.weight"))  # a copy by default


def test_other_architecture_is_refused_naming_the_layer() -> None:
    sig = extract_signature(_net(1), _net(0), layers=2)
    wider = models.create("mnist_net", num_classes=10, in_channels=3, input_size=8)
    with pytest.raises(SignatureMismatchError, match=r"layers\.0\.weight"):
        apply_signature(wider, sig)
    mlp = models.create("mlp", num_classes=10, in_channels=1, input_size=8, hidden=[16])
    with pytest.raises(SignatureMismatchError, match=r"layers\.0\.weight.*shape|does not have"):
        apply_signature(mlp, sig)
    with pytest.raises(SignatureMismatchError, match=r"differ at layer .layers\.0\.weight"):
        extract_signature(mlp, _net(0), layers=2)


@pytest.mark.parametrize("alpha", [-0.5, 1.5])
def test_alpha_outside_unit_interval_is_refused(alpha: float) -> None:
    sig = extract_signature(_net(1), _net(0))
    with pytest.raises(ConfigError, match="alpha"):
        apply_signature(_net(2), sig, alpha=alpha)
