"""Soundness: no point certified at radius R is broken by the standard L2 attack on the
smoothed classifier at a radius below R (the attack ensemble runs on the soft smoothed
classifier with fixed noise, and on its randomised form under EOT; breaks are judged
on the smoothed classifier itself, with fresh noise)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustlab import attacks
from robustlab.attacks import ThreatModel
from robustlab.certify import ABSTAIN, Smooth
from robustlab.certify.soft import SoftSmoothed, standard_noise

torch.set_num_threads(1)
SIGMA = 0.25


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A 3-class MLP on overlapping Gaussian blobs in [0, 1]^10, trained with Gaussian noise
    augmentation at SIGMA (so the smoothed classifier is accurate but not trivially robust)."""
    g = torch.Generator().manual_seed(0)
    centers = torch.rand(3, 10, generator=g) * 0.6 + 0.2
    y = torch.arange(600) % 3
    x = (centers[y] + 0.12 * torch.randn(600, 10, generator=g)).clamp(0, 1)
    model = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 3))
    torch.manual_seed(0)
    for p in model.parameters():
        nn.init.normal_(p, std=0.3)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(150):
        noisy = x[:480] + SIGMA * torch.randn(480, 10, generator=g)
        loss = nn.functional.cross_entropy(model(noisy), y[:480])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model, x[480:540], y[480:540]


def _broken(smooth: Smooth, x_adv: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """Points whose smoothed prediction at x_adv (PREDICT, fresh noise, alpha=0.001) is a
    class other than the certified one (abstaining is not a break)."""
    pred = smooth.predict(x_adv, n=4000, alpha=0.001, seed=123)
    return (pred != ABSTAIN) & (pred != cls)


@pytest.mark.parametrize("randomised", [False, True], ids=["fixed-noise", "eot"])
def test_certified_points_are_not_broken_below_their_radius(trained, randomised: bool) -> None:
    model, x, y = trained
    smooth = Smooth(model, 3, SIGMA)
    cert = smooth.certify(x, n0=100, n=20_000, alpha=0.001, seed=0, batch_size=4096)
    r0 = 0.15
    safe = (cert.predict == y) & (cert.radius > r0)
    assert int(safe.sum()) >= 20, "too few points certified at r0 to test anything"
    gen = torch.Generator().manual_seed(1)
    if randomised:
        target: nn.Module = SoftSmoothed(model, SIGMA, m=8, generator=gen)
        atk = attacks.create("eot", attack="apgd-ce", samples=8, params={"steps": 50})
    else:
        target = SoftSmoothed(model, SIGMA, noise=standard_noise(x[:1], 32, gen))
        atk = attacks.create("standard")
    # attack every correctly classified point at r0: the certified ones must hold, and the
    # attack must break the smoothed classifier on some points certified below 2 * r0 when
    # attacked at 2 * r0 (else the check would be vacuous)
    pts = (cert.predict == y).nonzero().squeeze(1)
    res = atk(target, x[pts], y[pts], [ThreatModel("l2", r0), ThreatModel("l2", 2 * r0)],
              generator=torch.Generator().manual_seed(2))
    broken_r0 = _broken(smooth, res[0].x_adv, y[pts])
    assert not bool(broken_r0[safe[pts]].any()), f"{int(broken_r0[safe[pts]].sum())} certified points broken"
    broken_2r0 = _broken(smooth, res[1].x_adv, y[pts])
    weak = cert.radius[pts] < 2 * r0
    assert int(broken_2r0[weak].sum()) >= 1, "the attack breaks nothing: the soundness check would be vacuous"
