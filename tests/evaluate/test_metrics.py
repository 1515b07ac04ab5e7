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


def test_reliability_bins_by_hand_and_ece_matches_the_loop_definition() -> None:
    from robustlab.evaluate.metrics import ece_of, reliability

    # confidences 0.95, 0.95 (one right), 0.55 (right), 0.2 exactly at a bin edge (wrong)
    probs = torch.tensor([[0.95, 0.05], [0.05, 0.95], [0.55, 0.45], [0.2, 0.8]])
    probs[3] = torch.tensor([0.8, 0.2])  # max 0.8 sits on the edge of (0.6, 0.8] with bins=5
    y = torch.tensor([0, 0, 0, 1])
    d = reliability(probs, y, bins=5)
    assert d["count"] == [0, 0, 1, 1, 2]
    assert d["accuracy"][4] == pytest.approx(0.5) and d["confidence"][4] == pytest.approx(0.95)
    assert d["accuracy"][3] == 0.0 and d["confidence"][3] == pytest.approx(0.8)
    assert d["accuracy"][0] is None
    want = 2 / 4 * abs(0.5 - 0.95) + 1 / 4 * abs(0 - 0.8) + 1 / 4 * abs(1 - 0.55)
    assert ece_of(d) == pytest.approx(want)
    gen = torch.Generator().manual_seed(0)
    p = torch.rand(500, 4, generator=gen).softmax(1)
    yy = torch.randint(0, 4, (500,), generator=gen)
    loop = 0.0
    conf, pred = p.max(1)
    for b in range(15):
        m = (conf > b / 15) & (conf <= (b + 1) / 15)
        if m.any():
            loop += float(m.float().mean()) * abs(float((pred[m] == yy[m]).float().mean()) - float(conf[m].mean()))
    assert expected_calibration_error(p, yy) == pytest.approx(loop, abs=1e-6)


def test_disparity_on_hand_made_per_class_accuracies() -> None:
    from robustlab.evaluate.metrics import disparity

    d = disparity([0.9, None, 0.5, 0.7])
    assert d["worst"] == 0.5 and d["worst_class"] == 2 and d["best"] == 0.9
    assert d["gap"] == pytest.approx(0.4)
    assert d["std"] == pytest.approx(((0.2**2 + 0.2**2 + 0) / 3) ** 0.5)
    assert disparity([None, None])["gap"] is None
    assert disparity([0.6, 0.6])["gap"] == 0 and disparity([0.6, 0.6])["worst_class"] == 0
