"""Mixed classifier (adaptive smoothing, Bai et al.): the ends of alpha are the base models
exactly, the middle is the mixture of probabilities, and only the mixing network learns."""

from __future__ import annotations

import copy

import pytest
import torch

from robustlab import models, train
from robustlab.data.base import Dataset
from robustlab.errors import ConfigError, ShapeMismatchError
from robustlab.models.mixed import MixedClassifier, mix
from robustlab.train.mixing import MixingObjective


def _pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    a = models.create("mnist_net", num_classes=10, in_channels=1, input_size=8)
    b = models.create("mnist_net", num_classes=10, in_channels=1, input_size=8)
    return a.eval(), b.eval()


def test_alpha_ends_are_the_base_models_log_probabilities_exactly() -> None:
    a, b = _pair()
    x = torch.rand(7, 1, 8, 8)
    assert torch.equal(mix(a, b, alpha=0.0)(x), torch.log_softmax(a(x), 1))
    assert torch.equal(mix(a, b, alpha=1.0)(x), torch.log_softmax(b(x), 1))


def test_fixed_alpha_is_the_mixture_of_probabilities() -> None:
    a, b = _pair()
    x = torch.rand(7, 1, 8, 8)
    want = (0.7 * a(x).softmax(1) + 0.3 * b(x).softmax(1)).log()
    got = mix(a, b, alpha=0.3)(x)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert torch.allclose(got.exp().sum(1), torch.ones(7))


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan"), "0.5", True])
def test_alpha_outside_unit_interval_is_refused(alpha: object) -> None:
    a, b = _pair()
    with pytest.raises(ConfigError, match=r"alpha"):
        mix(a, b, alpha=alpha)  # type: ignore[arg-type]


def test_models_of_different_inputs_are_refused() -> None:
    a, _ = _pair()
    c = models.create("mnist_net", num_classes=10, in_channels=1, input_size=12)
    with pytest.raises(ShapeMismatchError, match="inputs"):
        mix(a, c)


def test_mixing_network_is_the_only_trainable_part_and_survives_save_load(tmp_path) -> None:  # type: ignore[no-untyped-def]
    a, b = _pair()
    net = mix(a, b, alpha=None)
    assert [n for n, p in net.named_parameters() if p.requires_grad] == [
        "mixer.0.weight", "mixer.0.bias", "mixer.2.weight", "mixer.2.bias"]
    x = torch.rand(20, 1, 8, 8)
    y = torch.randint(0, 10, (20,))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.train()
    assert not net.standard.training and not net.robust.training  # frozen base models stay in eval mode
    train.Trainer(net, MixingObjective(eps=0.1, steps=2), epochs=1, batch_size=10, optimizer="adam", lr=1e-2,
                  progress=False).fit(Dataset(x, y, 10))
    after = net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("mixer.") for k in changed)
    alpha = net.mixing_weight(x)
    assert alpha.shape == (20,) and bool(((alpha >= 0) & (alpha <= 1)).all())
    path = models.save_model(net, tmp_path / "mixed.safetensors")
    again = models.load_model(path)
    assert isinstance(again, MixedClassifier)
    torch.testing.assert_close(again(x), net.eval()(x))
    twin = copy.deepcopy(net)  # the feature hooks follow the copy
    torch.testing.assert_close(twin(x), net(x))
