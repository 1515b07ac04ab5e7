"""GREAT Score (Li, Chen & Ho 2024): hand-computed values, zero for a constant classifier,
the generator path, and temperature calibration."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from robustlab.errors import ConfigError, InvalidInputError
from robustlab.evaluate.great import (
    calibrate_temperature,
    great_score,
    local_scores,
    rank_correlation,
    sample_latents,
)


class Fixed(nn.Module):
    """Returns fixed logits for inputs that carry their row index in pixel 0."""

    table: torch.Tensor

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", logits)
        self.num_classes = logits.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[(x[:, 0] * 10).round().long()]


def test_matches_hand_computed_value_on_fixed_logits() -> None:
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    y = torch.tensor([0, 2, 2])  # the second point is misclassified and scores 0
    e2, e3 = math.exp(2), math.exp(3)
    g0 = math.sqrt(math.pi / 2) * (e2 / (e2 + 2) - 1 / (e2 + 2))
    g2 = math.sqrt(math.pi / 2) * (e3 / (e3 + 2) - 1 / (e3 + 2))
    torch.testing.assert_close(local_scores(logits, y), torch.tensor([g0, 0.0, g2], dtype=torch.float64))
    x = torch.arange(3, dtype=torch.float32).view(3, 1) / 10
    res = great_score(Fixed(logits), x, y)
    assert res.score == pytest.approx((g0 + g2) / 3, abs=1e-12)
    assert res.accuracy == pytest.approx(2 / 3) and res.num_points == 3
    # temperature 2 halves the logits
    t2 = great_score(Fixed(logits), x, y, temperature=2.0).score
    assert t2 == pytest.approx(float(local_scores(logits / 2, y).mean()), abs=1e-12)


def test_constant_classifier_scores_zero() -> None:
    x = torch.rand(50, 4)
    y = torch.randint(0, 5, (50,))
    const = nn.Linear(4, 5)
    nn.init.zeros_(const.weight)
    nn.init.constant_(const.bias, 1.5)
    assert great_score(const, x, y).score == 0.0


def test_generator_path_scores_generated_images_against_the_conditioning_labels() -> None:
    z, y = sample_latents(40, latent_dim=3, num_classes=3, seed=1)
    z2, y2 = sample_latents(40, latent_dim=3, num_classes=3, seed=1)
    assert torch.equal(z, z2) and torch.equal(y, y2)

    def generator(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # images whose feature y is 1
        return nn.functional.one_hot(y, 3).float()

    model = nn.Linear(3, 3)
    with torch.no_grad():
        model.weight.copy_(4 * torch.eye(3))
        model.bias.zero_()
    res = great_score(model, z, y, generator=generator)
    p = torch.softmax(torch.tensor([4.0, 0.0, 0.0]), 0)
    assert res.generated and res.accuracy == 1.0
    assert res.score == pytest.approx(math.sqrt(math.pi / 2) * float(p[0] - p[1]), abs=1e-6)


def test_rank_correlation_and_calibration() -> None:
    assert rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert rank_correlation([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486832980505138)
    y = torch.zeros(4, dtype=torch.long)
    # model A: large margins but wrong half the time; model B: small margins, always right
    a = torch.tensor([[9.0, 0.0], [9.0, 0.0], [0.0, 9.0], [0.0, 9.0]])
    b = torch.tensor([[0.5, 0.0]] * 4)
    cal = calibrate_temperature([a, b], y, reference=[0.5, 1.0], temperatures=[0.01, 1.0, 100.0])
    # at T = 0.01 both saturate (A: 0.5 * sqrt(pi/2), B: sqrt(pi/2)) and the ranking is right
    assert cal.temperature == 0.01 and cal.correlation == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="no temperature"):
        calibrate_temperature([a, b], y, reference=[0.5, 1.0], temperatures=[0.01], upper_bounds=[0.1, 0.1])


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(InvalidInputError):
        great_score(nn.Linear(3, 3), torch.rand(0, 3), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ConfigError, match="temperature"):
        local_scores(torch.rand(3, 3), torch.zeros(3, dtype=torch.long), temperature=0.0)
