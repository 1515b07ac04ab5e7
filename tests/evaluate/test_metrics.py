import pytest
import torch
from torch import nn

from robustlab.attacks import ThreatModel
from robustlab.evaluate import (
    clean_accuracy,
    expected_calibration_error,
    per_class_accuracy,
    robust_accuracy,
)


def test_ece_on_constructed_case():
    # two bins used: conf 0.9 with accuracy 0.5 (gap 0.4), conf 0.6 with accuracy 1 (gap 0.4)
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    y = torch.tensor([0, 1, 1, 1])
    assert expected_calibration_error(probs, y) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
    perfect = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(perfect, torch.tensor([0, 1])) == pytest.approx(0.0)


def test_per_class_accuracy():
    pred = torch.tensor([0, 0, 1, 2, 2])
    y = torch.tensor([0, 1, 1, 2, 0])
    assert per_class_accuracy(pred, y, 4) == [0.5, 0.5, 1.0, None]


def test_clean_and_robust_accuracy_of_a_threshold_model():
    # f(x) = [x0 - 0.5, 0.5 - x0]: class 0 iff x0 > 0.5; robust at eps iff |x0 - 0.5| > eps
    lin = nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
        lin.bias.copy_(torch.tensor([-0.5, 0.5]))
    x0 = torch.linspace(0.01, 0.99, 99)
    x = torch.stack([x0, torch.zeros(99)], 1)
    y = (x0 < 0.5).long()  # x0 = 0.5 is a tie, which argmax resolves to class 0
    assert clean_accuracy(lin, x, y) == 1.0
    res = robust_accuracy(lin, x, y, ThreatModel("linf", 0.105), "pgd", steps=5, batch_size=16)
    assert torch.equal(res.robust, (x0 - 0.5).abs() > 0.105)
    assert res.to_dict()["accuracy"] == pytest.approx(res.robust.float().mean().item())
