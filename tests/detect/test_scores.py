from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import logsumexp, softmax

from robustlab import detect, models

torch.set_num_threads(1)


def _lin(model: torch.nn.Module) -> torch.nn.Linear:
    lin = model.get_submodule("layers.0")
    assert isinstance(lin, torch.nn.Linear)
    return lin


def _linear_model() -> tuple[torch.nn.Module, np.ndarray, np.ndarray]:
    model = models.create("mlp", num_classes=4, in_channels=3, hidden=()).eval()
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(4, 3, generator=g) * 3, torch.randn(4, generator=g)
    lin = _lin(model)
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(b)
    return model, w.double().numpy(), b.double().numpy()


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_msp_and_energy_closed_forms_on_a_linear_model(temperature: float) -> None:
    model, w, b = _linear_model()
    x = torch.rand(50, 3, generator=torch.Generator().manual_seed(1))
    z = x.double().numpy() @ w.T + b
    msp = detect.create("msp", temperature=temperature).fit(model, x, torch.zeros(50, dtype=torch.long))
    energy = detect.create("energy", temperature=temperature)
    np.testing.assert_allclose(msp.score(model, x).numpy(), softmax(z / temperature, 1).max(1), rtol=1e-5)
    np.testing.assert_allclose(
        energy.score(model, x).numpy(), temperature * logsumexp(z / temperature, 1), rtol=1e-5
    )


def test_logit_detectors_are_invariant_to_relabelling() -> None:
    model, _, _ = _linear_model()
    x = torch.rand(20, 3, generator=torch.Generator().manual_seed(2))
    permuted = models.create("mlp", num_classes=4, in_channels=3, hidden=()).eval()
    perm = torch.tensor([3, 1, 0, 2])
    with torch.no_grad():
        _lin(permuted).weight.copy_(_lin(model).weight[perm])
        _lin(permuted).bias.copy_(_lin(model).bias[perm])
    for name in ("msp", "energy"):
        det = detect.create(name)
        torch.testing.assert_close(det.score(model, x), det.score(permuted, x))


def test_scoring_leaves_model_modes_and_grads_alone() -> None:
    model, _, _ = _linear_model()
    model.train()
    x = torch.rand(8, 3, generator=torch.Generator().manual_seed(3))
    det = detect.create("mahalanobis", magnitude=0.01, layers=["layers.0:input"], shrinkage=0.01)
    det.fit(model, x, torch.tensor([0, 1, 2, 3] * 2)).score(model, x)
    assert model.training
    assert all(p.grad is None for p in model.parameters())
