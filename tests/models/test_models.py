"""Model zoo: shapes, normalisation inside the model, exact parameter counts, errors."""

from __future__ import annotations

import copy
import importlib.abc
import json
import sys
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from robustlab import models
from robustlab.errors import ConfigError, ShapeMismatchError, UnknownNameError
from robustlab.models import Normalize, count_parameters

ADAPTERS = {"timm", "torchvision"}
PRESETS = {"wrn-28-10", "wrn-34-10"}
# built from other zoo models' configs, covered in their own test files (tests/models/test_mixed.py)
COMPOSITES = {"mixed", "ensemble"}
# small widths keep every forward pass cheap
SMALL = {
    "mlp": {"hidden": [16, 8]},
    "mnist_net": {},
    "small_cnn": {},
    "preact_resnet18": {"width": 4},
    "resnet18": {"width": 4},
    "wide_resnet": {"depth": 10, "widen_factor": 1},
}
SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]


def _build(name: str, shape: tuple[int, ...], num_classes: int = 7, **kw) -> nn.Module:
    c, *hw = shape
    return models.create(
        name,
        num_classes=num_classes,
        in_channels=c,
        input_size=tuple(hw) if hw else None,
        **{**SMALL.get(name, {}), **kw},
    )


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial weights (SmallCNN starts with a zero last layer) and BN statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


def test_every_registered_model_is_covered_by_these_tests():
    assert set(models.available()) == set(SMALL) | PRESETS | ADAPTERS | COMPOSITES
    assert models.list_models is models.available
    assert models.available("*resnet*") == ["preact_resnet18", "resnet18", "wide_resnet"]


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_gives_logits_of_the_right_shape(name, shape):
    if name == "small_cnn" and shape[1] < 14:
        # TRADES' SmallCNN has unpadded convs: 8x8 -> 6 -> 4 -> pool 2 -> conv fails
        with pytest.raises(ConfigError, match="too small"):
            _build(name, shape)
        return
    torch.manual_seed(0)
    model = _build(name, shape).eval()
    x = torch.rand(2, *shape)
    out = model(x)
    assert out.shape == (2, 7)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert model.num_classes == 7
    assert model.input_shape == shape
    assert model.input_bounds == (0.0, 1.0)
    # gradients reach the input (attacks need them); SmallCNN starts with a zero last layer
    _randomize(model)
    x.requires_grad_(True)
    model(x).logsumexp(1).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_mlp_takes_vector_data():
    model = models.create("mlp", num_classes=3, in_channels=5, input_size=None, hidden=[4])
    assert model.input_shape == (5,)
    assert model(torch.rand(2, 5)).shape == (2, 3)
    linear = models.create("mlp", num_classes=3, in_channels=5, hidden=[])
    assert [type(m) for m in linear.layers] == [nn.Linear]
    assert count_parameters(linear) == 5 * 3 + 3


@pytest.mark.parametrize("name", ["mnist_net", "small_cnn", "resnet18", "wide_resnet"])
def test_conv_models_refuse_vector_data(name):
    with pytest.raises(ConfigError, match="image inputs"):
        models.create(name, num_classes=3, in_channels=5, input_size=None)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_normalize_is_the_first_layer_and_does_exactly_x_minus_mean_over_std(name):
    shape = (3, 32, 32)
    mean, std = [0.4914, 0.4822, 0.4465], [0.2471, 0.2435, 0.2616]
    model = _randomize(_build(name, shape, mean=mean, std=std)).eval()
    first = next(iter(model.children()))
    assert isinstance(first, Normalize)
    assert next(iter(model.named_children()))[0] == "normalize"
    assert torch.equal(first.mean, torch.tensor(mean))
    assert torch.equal(first.std, torch.tensor(std))

    bare = copy.deepcopy(model)
    bare.normalize = nn.Identity()
    x = torch.rand(2, *shape, generator=torch.Generator().manual_seed(1))
    m, s = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    with torch.no_grad():
        out, ref = model(x), bare((x - m) / s)
    assert torch.equal(out, ref)
    assert not torch.allclose(out, bare(x))  # the normalisation matters


def test_normalize_identity_and_broadcasting():
    x = torch.rand(4, 3, 5, 5)
    assert torch.equal(Normalize()(x), x)
    assert torch.equal(Normalize([0, 0, 0], [1, 1, 1])(x), x)
    assert Normalize().is_identity and not Normalize(0.5, 0.25).is_identity
    torch.testing.assert_close(Normalize(0.5, 0.25)(x), (x - 0.5) / 0.25, rtol=0, atol=0)
    v = torch.rand(4, 6)
    mean = torch.arange(6.0) / 10
    assert torch.equal(Normalize(mean, 2.0)(v), (v - mean) / 2.0)
    with pytest.raises(ShapeMismatchError, match="3 channels"):
        Normalize([0.1, 0.2, 0.3], [1, 1, 1])(torch.rand(2, 1, 5, 5))
    with pytest.raises(ConfigError, match="positive"):
        Normalize(0.0, [1.0, 0.0])
    with pytest.raises(ConfigError, match="NaN"):
        Normalize(float("nan"), 1.0)


def test_wrong_channel_count_at_call_time_is_a_clean_error():
    model = _build("mnist_net", (1, 28, 28))
    with pytest.raises(ShapeMismatchError, match="in_channels"):
        model(torch.rand(2, 3, 28, 28))


def test_mean_std_validation_in_create():
    with pytest.raises(ConfigError, match="3 input channels"):
        _build("mnist_net", (3, 32, 32), mean=[0.5, 0.5])
    with pytest.raises(ConfigError, match="positive"):
        _build("mnist_net", (1, 28, 28), std=0.0)
    model = _build("mnist_net", (3, 32, 32), mean=0.5, std=0.25)  # one value for all channels
    assert model.robustlab_config["params"]["mean"] == [0.5, 0.5, 0.5]
    assert torch.equal(model.normalize.std, torch.full((3,), 0.25))


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"num_classes": 0}, "num_classes"),
        ({"in_channels": 0}, "in_channels"),
        ({"input_size": (28,)}, "input_size"),
        ({"input_size": -1}, "input_size"),
    ],
)
def test_bad_common_params(bad, match):
    params = {"num_classes": 10, "in_channels": 1, "input_size": 28, **bad}
    with pytest.raises(ConfigError, match=match):
        models.create("mnist_net", **params)


def test_robustlab_config_records_every_parameter_and_rebuilds_the_model():
    model = models.create("mlp", num_classes=4, in_channels=3, input_size=(6, 5))
    cfg = model.robustlab_config
    assert cfg == {
        "name": "mlp",
        "params": {
            "num_classes": 4,
            "in_channels": 3,
            "input_size": [6, 5],
            "mean": [0.0, 0.0, 0.0],
            "std": [1.0, 1.0, 1.0],
            "hidden": [256, 256],  # default recorded too
        },
    }
    assert json.loads(json.dumps(cfg)) == cfg
    assert model.input_shape == (3, 6, 5)
    again = models.create(cfg["name"], **cfg["params"])
    assert again.robustlab_config == cfg
    assert {k: v.shape for k, v in again.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    # aliases and spelling variants resolve to the canonical name
    wrn = models.create(
        "Wide-ResNet", num_classes=2, in_channels=1, input_size=8, depth=10, widen_factor=1
    )
    assert wrn.robustlab_config["name"] == "wide_resnet"
    assert wrn.robustlab_config["params"]["dropout"] == 0.0


def test_unknown_name_lists_close_matches():
    with pytest.raises(UnknownNameError) as info:
        models.create("resnet", num_classes=10, in_channels=3, input_size=32)
    msg = str(info.value)
    assert "'resnet18'" in msg and "'preact_resnet18'" in msg and "Did you mean" in msg


def test_unknown_kwarg_suggests_the_right_one():
    with pytest.raises(ConfigError, match="Did you mean 'hidden'"):
        models.create("mlp", num_classes=10, in_channels=3, input_size=8, hiden=[10])
    with pytest.raises(ConfigError, match="widen_factor"):
        models.create("wrn-28-10", num_classes=10, in_channels=3, input_size=32, widen_factor=2)


# -- architectures: exact parameter counts -------------------------------------------


def test_mnist_net_matches_the_paper_architecture_on_28x28():
    model = models.create("mnist_net", num_classes=10, in_channels=1, input_size=28)
    by_hand = (
        (1 * 16 * 4 * 4 + 16)  # conv 16 4x4
        + (16 * 32 * 4 * 4 + 32)  # conv 32 4x4
        + (32 * 7 * 7 * 100 + 100)  # fc 100
        + (100 * 10 + 10)  # fc 10
    )
    assert count_parameters(model) == by_hand == 166406
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.kernel_size, c.stride, c.padding) for c in convs] == [((4, 4), (2, 2), (1, 1))] * 2
    assert [type(m).__name__ for m in model.layers] == [
        "Conv2d",
        "ReLU",
        "Conv2d",
        "ReLU",
        "Flatten",
        "Linear",
        "ReLU",
        "Linear",
    ]
    # 8x8 digits: 8 -> 4 -> 2, so fc1 takes 32*2*2 features
    assert _build("mnist_net", (1, 8, 8)).layers[5].in_features == 32 * 2 * 2


def test_small_cnn_matches_trades():
    model = models.create("small_cnn", num_classes=10, in_channels=1, input_size=28)
    by_hand = (
        (1 * 32 * 9 + 32)
        + (32 * 32 * 9 + 32)
        + (32 * 64 * 9 + 64)
        + (64 * 64 * 9 + 64)
        + (64 * 4 * 4 * 200 + 200)
        + (200 * 200 + 200)
        + (200 * 10 + 10)
    )
    assert count_parameters(model) == by_hand == 312202
    # dropout right after fc1 + ReLU only, as in TRADES
    assert [name for name, _ in model.classifier.named_children()] == [
        "fc1",
        "relu1",
        "drop",
        "fc2",
        "relu2",
        "fc3",
    ]
    assert model.classifier.drop.p == 0.5
    # TRADES initialises the last layer to zero: a fresh model outputs zero logits
    assert torch.equal(model(torch.rand(2, 1, 28, 28)), torch.zeros(2, 10))


@pytest.mark.parametrize(
    "name, expected",
    [
        ("preact_resnet18", 11_172_170),  # incl. the final BN of Rice et al. (2 * 512)
        ("resnet18", 11_173_962),
        ("wrn-28-10", 36_479_194),
        ("wrn-34-10", 46_160_474),
    ],
)
def test_big_models_have_the_published_parameter_counts(name, expected):
    model = models.create(name, num_classes=10, in_channels=3, input_size=32)
    assert count_parameters(model) == expected
    assert isinstance(next(iter(model.children())), Normalize)


def test_wide_resnet_preset_equals_generic_and_layout_is_trades():
    preset = models.create("wrn-28-10", num_classes=10, in_channels=3, input_size=32)
    assert preset.robustlab_config["params"] == {
        "num_classes": 10,
        "in_channels": 3,
        "input_size": [32, 32],
        "mean": [0.0] * 3,
        "std": [1.0] * 3,
        "dropout": 0.0,
    }
    n = (28 - 4) // 6
    assert [len(b.layer) for b in (preset.block1, preset.block2, preset.block3)] == [n] * 3
    assert [
        preset.block1.layer[0].conv1.out_channels,
        preset.block2.layer[0].conv1.out_channels,
        preset.block3.layer[0].conv1.out_channels,
    ] == [160, 320, 640]
    assert not hasattr(preset, "sub_block1")  # unused in TRADES' forward, left out
    with pytest.raises(ConfigError, match="6n \\+ 4"):
        models.create("wide_resnet", num_classes=10, in_channels=3, input_size=32, depth=20)


@pytest.mark.parametrize(
    "name, layer, side",
    [("wide_resnet", "bn1", 8), ("resnet18", "layer4", 4), ("preact_resnet18", "bn", 4)],
)
def test_cifar_downsampling(name, layer, side):
    """WRN: strides 1, 2, 2 (32 -> 8); ResNets: CIFAR stem, strides 1, 2, 2, 2 (32 -> 4)."""
    model = _build(name, (3, 32, 32)).eval()
    seen = {}

    def hook(module, inputs, output):
        seen["shape"] = output.shape

    getattr(model, layer).register_forward_hook(hook)
    model(torch.rand(1, 3, 32, 32))
    assert seen["shape"][-2:] == (side, side)


def test_wide_resnet_dropout_is_active_only_in_training():
    model = _randomize(_build("wide_resnet", (1, 8, 8), dropout=0.5))
    x = torch.rand(2, 1, 8, 8)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    assert not torch.equal(a, model(x))


# -- for_dataset -----------------------------------------------------------------------


def test_for_dataset_fills_shapes_and_statistics_from_the_data():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(50, 3, 6, 6, generator=g) * torch.tensor([1.0, 0.5, 0.2]).view(3, 1, 1)
    ds = SimpleNamespace(x=x, num_classes=4, input_shape=(3, 6, 6))
    model = models.for_dataset("mnist_net", ds)
    p = model.robustlab_config["params"]
    assert (p["num_classes"], p["in_channels"], p["input_size"]) == (4, 3, [6, 6])
    want_mean = x.double().mean(dim=(0, 2, 3))
    want_std = x.double().std(dim=(0, 2, 3), correction=0)
    torch.testing.assert_close(torch.tensor(p["mean"], dtype=torch.float64), want_mean)
    torch.testing.assert_close(torch.tensor(p["std"], dtype=torch.float64), want_std)
    z = model.normalize(x).double()
    torch.testing.assert_close(
        z.mean(dim=(0, 2, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        z.std(dim=(0, 2, 3), correction=0), torch.ones(3, dtype=torch.float64), atol=1e-5, rtol=0
    )

    given = models.for_dataset("mnist_net", ds, mean=[0.5] * 3, std=[0.5] * 3)
    assert given.robustlab_config["params"]["mean"] == [0.5] * 3


def test_for_dataset_vector_data_and_constant_features():
    x = torch.rand(40, 4)
    x[:, 2] = 0.0  # a constant feature (like the black border pixels of digits)
    ds = SimpleNamespace(x=x, num_classes=3, input_shape=(4,))
    model = models.for_dataset("mlp", ds, hidden=[8])
    assert model.input_shape == (4,)
    p = model.robustlab_config["params"]
    assert p["input_size"] is None and p["in_channels"] == 4
    assert p["std"][2] == 1.0 and p["mean"][2] == 0.0
    assert torch.isfinite(model(x)).all()
    with pytest.raises(ConfigError, match="input_shape"):
        models.for_dataset("mlp", SimpleNamespace(x=x, num_classes=3, input_shape=(2, 2)))


def test_channel_stats_chunking_is_exact():
    x = torch.rand(37, 2, 3, 3)
    m1, s1 = models.channel_stats(x, chunk=5)
    m2, s2 = models.channel_stats(x, chunk=1000)
    torch.testing.assert_close(torch.tensor(m1), torch.tensor(m2), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.tensor(s1), torch.tensor(s2), rtol=1e-12, atol=1e-12)


# -- optional adapters -------------------------------------------------------------------


class _BrokenImport(importlib.abc.MetaPathFinder):
    """Makes importing ``name`` raise RuntimeError, like a torchvision built for another torch."""

    def __init__(self, name: str) -> None:
        self.name = name

    def find_spec(self, fullname, path=None, target=None):
        if fullname == self.name or fullname.startswith(self.name + "."):
            raise RuntimeError(f"operator {self.name}::nms does not exist")
        return None


def _importable(name: str) -> bool:
    try:
        __import__(name)
    except Exception:
        return False
    return True


@pytest.mark.parametrize("package", ["timm", "torchvision"])
def test_missing_or_broken_optional_package_is_a_config_error(package, monkeypatch):
    for mod in list(sys.modules):
        if mod == package or mod.startswith(package + "."):
            monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setattr(sys, "meta_path", [_BrokenImport(package), *sys.meta_path])
    with pytest.raises(ConfigError, match=f"optional package '{package}'.*pip install {package}"):
        models.create(package, arch="resnet18", num_classes=10, in_channels=3, input_size=32)

    monkeypatch.setitem(sys.modules, package, None)  # plain ImportError
    with pytest.raises(ConfigError, match="optional package"):
        models.create(package, arch="resnet18", num_classes=10, in_channels=3, input_size=32)


@pytest.mark.parametrize("package", ["timm", "torchvision"])
def test_adapter_when_package_is_importable(package):
    if not _importable(package):
        with pytest.raises(ConfigError, match="optional package"):
            models.create(package, arch="resnet18", num_classes=10, in_channels=3, input_size=32)
        pytest.skip(f"{package} is not importable here")
    model = models.create(package, arch="resnet18", num_classes=10, in_channels=3, input_size=32)
    assert isinstance(next(iter(model.children())), Normalize)
    assert model.eval()(torch.rand(1, 3, 32, 32)).shape == (1, 10)
