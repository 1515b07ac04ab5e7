"""Nested dropout on the feature layer (Chen et al. 2022) and its co-teaching fine-tune."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlab.errors import ConfigError
from robustlab.train import Trainer, create
from robustlab.train.nested_dropout import (
    NestedCoTeaching,
    NestedDropout,
    choose_k,
    compress,
    feature_layer,
    k_distribution,
    masked_features,
    prefix_masks,
    sample_k,
)
from tests.train.helpers import Net, blobs


def fresh(seed: int = 0) -> Net:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Net(dropout=0.0)


def started(obj: NestedDropout, seed: int = 0) -> NestedDropout:
    obj.start_epoch(0, torch.Generator().manual_seed(seed))
    return obj


def test_k_equal_d_is_the_plain_model_exactly():
    model, ds = fresh(), blobs()
    d = feature_layer(model).in_features
    with masked_features(feature_layer(model), lambda f: prefix_masks(torch.full((len(f),), d), d, f.dtype)):
        masked = model(ds.x)
    assert torch.equal(masked, model(ds.x))
    # and the objective, when every draw is k = d (all mass on d), is plain cross-entropy
    obj = started(NestedDropout(std=1.0, mu=float(d)))
    obj._probs[d] = torch.zeros(d, dtype=torch.float64)
    obj._probs[d][-1] = 1.0
    per, metrics = obj.loss(model, ds.x, ds.y, None)
    assert torch.equal(per, F.cross_entropy(model(ds.x), ds.y, reduction="none"))
    assert torch.equal(metrics["nested_k"], torch.full((len(ds.y),), float(d)))


def test_masks_are_prefixes():
    k = torch.tensor([1, 3, 5, 2])
    m = prefix_masks(k, 5)
    assert m.tolist() == [[1, 0, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    # what the classifier sees inside the objective: the first k_i coordinates of f_i, zeros after
    model, ds = fresh(), blobs(n=12)
    seen: list[torch.Tensor] = []
    raw: list[torch.Tensor] = []
    lay = feature_layer(model)
    h_raw = lay.register_forward_pre_hook(lambda _m, a: raw.append(a[0].detach()))  # runs before the mask
    h_seen = lay.register_forward_hook(lambda _m, a, _o: seen.append(a[0].detach()))  # gets the masked input
    obj = started(NestedDropout(std=8.0))
    obj.loss(model, ds.x, ds.y, None)
    h_raw.remove()
    h_seen.remove()
    started(obj)  # the same generator state again: the same draws
    _, metrics = obj.loss(model, ds.x, ds.y, None)
    ks = metrics["nested_k"].long()
    f_raw, f_masked = raw[0], seen[0]
    assert len(set(ks.tolist())) > 1
    for i in range(len(f_raw)):
        assert torch.equal(f_masked[i], f_raw[i] * prefix_masks(ks[i : i + 1], f_raw.shape[1])[0])


def test_k_is_drawn_per_sample_reproducibly_from_the_generator():
    probs = k_distribution(32, std=10.0)
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-12)
    # the official GaussianDist: p(k) ∝ exp(-(k/std)^2)
    assert (probs[1] / probs[0]).item() == pytest.approx(math.exp(-(4 - 1) / 100.0), rel=1e-12)
    a = sample_k(1000, probs, torch.Generator().manual_seed(3))
    b = sample_k(1000, probs, torch.Generator().manual_seed(3))
    c = sample_k(1000, probs, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert int(a.min()) >= 1 and int(a.max()) <= 32 and len(set(a.tolist())) > 10  # one k per sample
    obj = started(NestedDropout(std=10.0), seed=7)
    k1 = obj.draw(64, 32)
    obj2 = started(NestedDropout(std=10.0), seed=7)
    assert torch.equal(k1, obj2.draw(64, 32)) and len(set(k1.tolist())) > 1
    per_batch = started(NestedDropout(std=10.0, per="batch"), seed=7).draw(64, 32)
    assert len(set(per_batch.tolist())) == 1  # the official code's one k per minibatch
    with pytest.raises(ConfigError, match="generator"):
        NestedDropout().draw(4, 32)


class Linear2(nn.Module):
    """Features = the input itself; classifier = a fixed linear layer (a constructed case)."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.fc = nn.Linear(w.shape[1], w.shape[0], bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def test_choice_of_k_on_validation_picks_the_best_on_a_constructed_case():
    # 2 classes, 4 features: feature 0 carries the label, feature 1 is noise that flips the
    # prediction, features 2-3 restore it weakly. Accuracies by prefix: k=1: 1.0, k=2: 0.0,
    # k=3: 0.0, k=4: 1.0 -> the best is k=1 (the smallest among ties with k=4).
    n = 40
    y = torch.arange(n) % 2
    s = 2.0 * y.float() - 1.0  # +-1
    x = torch.stack([s, -3 * s, torch.zeros(n), 5 * s], dim=1)
    w = torch.tensor([[-1.0, -1.0, -1.0, -1.0], [1.0, 1.0, 1.0, 1.0]])
    model = Linear2(w)
    choice = choose_k(model, x, y)
    assert choice.accuracies == {1: 1.0, 2: 0.0, 3: 0.0, 4: 1.0}
    assert choice.k == 1 and choice.accuracy == 1.0
    assert choose_k(model, x, y, ks=[2, 3, 4]).k == 4
    # the fast path (cumulative contributions) agrees with masking the features one k at a time
    for k, acc in choice.accuracies.items():
        with masked_features(model.fc, lambda f, k=k: prefix_masks(torch.full((len(f),), k), 4, f.dtype)):
            assert (model(x).argmax(1) == y).float().mean().item() == acc
    # compress(k) is the masked model without a hook
    masked = copy.deepcopy(model)
    compress(masked, 2)
    with masked_features(model.fc, lambda f: prefix_masks(torch.full((len(f),), 2), 4, f.dtype)):
        assert torch.equal(masked(x), model(x))
    with pytest.raises(ConfigError, match="1..4"):
        choose_k(model, x, y, ks=[0, 5])


def test_trainer_run_is_reproducible_and_learns():
    ds = blobs()
    histories, weights = [], []
    for _ in range(2):
        model = fresh()
        h = Trainer(model, create("nested-dropout", std=8.0), epochs=3, batch_size=32, lr=0.1, progress=False,
                    seed=5).fit(ds)
        histories.append([r["train_loss"] for r in h])
        weights.append(model.body[-1].weight.detach().clone())
    assert histories[0] == histories[1] and torch.equal(weights[0], weights[1])
    assert 0 < histories[0][-1] < histories[0][0]
    assert 1.0 <= h[-1]["train_nested_k"] <= 32.0


def test_nested_co_teaching_keeps_the_truncation_and_starts_from_the_given_peer():
    ds = blobs()
    model, peer = fresh(0), fresh(1)
    obj = NestedCoTeaching(forget_rate=0.2, k=5, peer_k=7, peer=peer)
    Trainer(model, obj, epochs=2, batch_size=32, lr=0.1, progress=False).fit(ds)
    assert bool((model.body[-1].weight[:, 5:] == 0).all()) and bool((model.body[-1].weight[:, :5] != 0).any())
    assert obj.peer is not None and bool((obj.peer.body[-1].weight[:, 7:] == 0).all())
    # the peer started from the given network (its first layer moved away from it only by training)
    obj2 = NestedCoTeaching(forget_rate=0.2, peer=peer)
    obj2.bind(fresh(0), seed=0)
    assert obj2.peer is not None and torch.equal(obj2.peer.body[0].weight, peer.body[0].weight)
    with pytest.raises(ConfigError, match="forget_rate"):
        NestedCoTeaching()
