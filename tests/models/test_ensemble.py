"""The ensemble model: combination rules, one model to attacks and certificates, save/load."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from robustlab import models
from robustlab.attacks import ThreatModel
from robustlab.certify import compute_bounds
from robustlab.errors import ConfigError, ShapeMismatchError
from robustlab.evaluate import robust_accuracy
from robustlab.models import Ensemble


def _mlp(seed: int, k: int = 3, d: int = 4, hidden: tuple[int, ...] = (8,)) -> torch.nn.Module:
    torch.manual_seed(seed)
    return models.create("mlp", num_classes=k, in_channels=d, hidden=list(hidden))


def test_identical_members_give_the_member_logits() -> None:
    net = _mlp(0)
    x = torch.rand(16, 4)
    for combine in ("logits", "probs"):
        ens = Ensemble([net, copy.deepcopy(net), copy.deepcopy(net)], combine=combine)
        out = ens(x)
        ref = net(x) if combine == "logits" else net(x).log_softmax(1)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)


def test_combination_rules_are_the_documented_formulas() -> None:
    a, b, c = _mlp(0), _mlp(1), _mlp(2)
    x = torch.rand(32, 4)
    za, zb, zc = a(x), b(x), c(x)
    logits = Ensemble([a, b, c], "logits")(x)
    torch.testing.assert_close(logits, (za + zb + zc) / 3)
    probs = Ensemble([a, b, c], "probs")(x)
    avg = (za.softmax(1) + zb.softmax(1) + zc.softmax(1)) / 3
    torch.testing.assert_close(probs, avg.log())
    votes = Ensemble([a, b, c], "votes")(x)
    counts = torch.stack([torch.nn.functional.one_hot(z.argmax(1), 3) for z in (za, zb, zc)]).sum(0).float()
    # the vote count is the integer part; the tie-break is below one vote
    torch.testing.assert_close(votes.detach().floor(), counts)
    majority = counts.max(1).values
    assert bool((counts.gather(1, votes.argmax(1, keepdim=True)).squeeze(1) == majority).all())


def test_votes_gradient_is_the_averaged_logits_gradient() -> None:
    a, b, c = _mlp(0), _mlp(1), _mlp(2)
    x = torch.rand(5, 4, requires_grad=True)
    w = torch.randn(5, 3)
    (g_votes,) = torch.autograd.grad((Ensemble([a, b, c], "votes")(x) * w).sum(), x)
    (g_avg,) = torch.autograd.grad((Ensemble([a, b, c], "logits")(x) * w).sum(), x)
    torch.testing.assert_close(g_votes, g_avg)
    assert not Ensemble([a], "votes").differentiable and Ensemble([a]).differentiable


def test_registry_builds_distinct_members_with_the_zoo_attributes() -> None:
    ens: Any = models.create("ensemble", num_classes=10, in_channels=1, input_size=8, member="mnist_net", size=3)
    assert isinstance(ens, Ensemble) and len(ens.members) == 3
    assert ens.input_shape == (1, 8, 8) and ens.num_classes == 10 and ens.input_bounds == (0.0, 1.0)
    members: list[Any] = list(ens.members)
    w = [m.layers[0].weight for m in members]
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])
    config: Any = ens.robustlab_config
    assert config["params"]["member"] == "mnist_net"


def test_attacks_see_one_model() -> None:
    """PGD through the evaluation path on the ensemble equals PGD on a single model that
    computes the same function (the averaged network)."""
    a, b = _mlp(0, hidden=()), _mlp(1, hidden=())
    ens = Ensemble([a, b]).eval()
    # the mean of two linear models is one linear model
    avg = _mlp(5, hidden=())
    with torch.no_grad():
        for pa, pb, p in zip(a.parameters(), b.parameters(), avg.parameters()):
            p.copy_((pa + pb) / 2)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 4, generator=g)
    y = ens(x).argmax(1)
    threat = ThreatModel("linf", 0.05)
    r_ens = robust_accuracy(ens, x, y, threat, "pgd", steps=20)
    r_one = robust_accuracy(avg, x, y, threat, "pgd", steps=20)
    assert r_ens.accuracy == r_one.accuracy
    assert torch.equal(r_ens.robust, r_one.robust)
    assert 0.0 < r_ens.accuracy < 1.0  # the attack breaks some points, not all


def test_certificates_bound_the_ensemble() -> None:
    ens = models.create("ensemble", num_classes=3, in_channels=4, member="mlp", size=2, member_params={"hidden": [6]}).eval()
    x = torch.rand(8, 4)
    lo, hi = compute_bounds(ens, x, 0.02, method="ibp")
    for _ in range(20):
        z = ens((x + (torch.rand_like(x) * 2 - 1) * 0.02).clamp(0, 1))
        assert bool((z >= lo - 1e-5).all() and (z <= hi + 1e-5).all())


def test_save_load_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ens = models.create("ensemble", num_classes=10, in_channels=1, input_size=8, member="mnist_net", size=2, combine="probs")
    path = models.save_model(ens, tmp_path / "ens.safetensors")
    back = models.load_model(path)
    assert isinstance(back, Ensemble) and back.combine == "probs" and back.size == 2
    x = torch.rand(4, 1, 8, 8)
    torch.testing.assert_close(back(x), ens.eval()(x), rtol=0, atol=0)
    assert models.weights_sha256(back) == models.weights_sha256(ens)
    # an ensemble of different zoo models also round-trips
    mixed = Ensemble([_mlp(0), _mlp(1, hidden=(5, 5))], combine="votes")
    back2 = models.load_model(models.save_model(mixed, tmp_path / "mixed.safetensors"))
    x2 = torch.rand(6, 4)
    torch.testing.assert_close(back2(x2), mixed(x2), rtol=0, atol=0)


def test_errors() -> None:
    with pytest.raises(ConfigError, match="non-empty list"):
        Ensemble([])
    with pytest.raises(ConfigError, match="num_classes"):
        Ensemble([_mlp(0, k=3), _mlp(1, k=4)])
    with pytest.raises(ShapeMismatchError, match="input_shape"):
        Ensemble([_mlp(0, d=4), _mlp(1, d=5)])
    with pytest.raises(ConfigError, match="combine"):
        Ensemble([_mlp(0)], combine="median")
    with pytest.raises(ConfigError, match="either member"):
        models.create("ensemble", num_classes=3, in_channels=4)
    with pytest.raises(ConfigError, match="size"):
        models.create("ensemble", num_classes=3, in_channels=4, member="mlp", size=0)
