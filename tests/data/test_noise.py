"""Label-noise models realise the matrix and rate they promise (binomial tolerance), exactly
when asked, from the clean labels, deterministically, and refuse what makes no sense."""

import math

import numpy as np
import pytest
import torch

from robustlab.data import noise
from robustlab.errors import ConfigError, LabelError, UnknownNameError

K = 10
N = 20000


@pytest.fixture(scope="module")
def labels():
    g = np.random.default_rng(123)
    return torch.from_numpy(g.integers(0, K, size=N))


def within_binomial(observed: float, p: float, n: int, z: float = 5.0) -> bool:
    return abs(observed - p) <= z * math.sqrt(max(p * (1 - p), 1e-12) / n) + 1e-12


def test_symmetric_flips_rate_to_other_classes_uniformly(labels):
    r = 0.4
    res = noise.corrupt_labels(labels, "symmetric", r, K, seed=0)
    assert within_binomial(res.flip_rate, r, N)
    T = res.transition
    assert np.allclose(T.sum(1), 1)
    counts = np.bincount(labels.numpy(), minlength=K)
    for i in range(K):
        assert within_binomial(T[i, i], 1 - r, counts[i])
        for j in range(K):
            if j != i:
                assert within_binomial(T[i, j], r / (K - 1), counts[i])
    expected = (1 - r) * np.eye(K) + r / (K - 1) * (1 - np.eye(K))
    assert np.allclose(res.nominal_transition, expected)
    assert torch.equal(res.clean_labels, labels)
    assert res.num_flipped == int((res.noisy_labels != labels).sum())


def test_symmetric_including_true_class_has_flip_rate_r_times_k_minus_1_over_k(labels):
    r = 0.6
    res = noise.corrupt_labels(labels, "symmetric", r, K, seed=1, include_true_class=True)
    assert within_binomial(res.flip_rate, r * (K - 1) / K, N)
    assert np.allclose(np.diag(res.nominal_transition), 1 - r + r / K)


def test_exact_symmetric_flips_exactly_round_rn(labels):
    for r in (0.2, 0.45, 0.8):
        res = noise.corrupt_labels(labels, "symmetric", r, K, seed=3, exact=True)
        assert res.num_flipped == round(r * N)
    inc = noise.corrupt_labels(labels, "symmetric", 0.5, K, seed=3, exact=True, include_true_class=True)
    # round(rN) samples are redrawn over all K classes: about 1/K of them keep their label
    assert within_binomial(inc.num_flipped / round(0.5 * N), (K - 1) / K, round(0.5 * N))


def test_pairflip_goes_to_next_class(labels):
    r = 0.45
    res = noise.corrupt_labels(labels, "pairflip", r, K, seed=0)
    y, z = labels.numpy(), res.noisy_labels.numpy()
    changed = z != y
    assert np.all(z[changed] == (y[changed] + 1) % K)
    assert within_binomial(res.flip_rate, r, N)
    ex = noise.corrupt_labels(labels, "pairflip", r, K, seed=0, exact=True)
    for c in range(K):
        m = y == c
        assert int((ex.noisy_labels.numpy()[m] != c).sum()) == round(r * m.sum())


def test_asymmetric_cifar10_map_flips_rate_of_each_source_class_from_clean_labels(labels):
    r = 0.4
    res = noise.corrupt_labels(labels, "asymmetric", r, K, seed=0, class_map="cifar10", exact=True)
    y, z = labels.numpy(), res.noisy_labels.numpy()
    mapping = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}
    for c in range(K):
        m = y == c
        flipped = z[m] != c
        if c in mapping:
            # exactly round(r n_c) cats become dogs AND round(r n_c) dogs become cats
            assert int(flipped.sum()) == round(r * m.sum())
            assert np.all(z[m][flipped] == mapping[c])
        else:
            assert not flipped.any()
    # binomial version: the same per-class rates within tolerance, cats and dogs alike
    res2 = noise.corrupt_labels(labels, "asymmetric", r, K, seed=5, class_map="cifar10")
    n3 = int((y == 3).sum())
    assert within_binomial(res2.transition[3, 5], r, n3)
    assert within_binomial(res2.transition[5, 3], r, int((y == 5).sum()))
    assert res2.transition[0, 0] == 1.0


def test_asymmetric_mnist_preset_and_names():
    y = torch.arange(10).repeat(200)
    res = noise.corrupt_labels(y, "asymmetric", 0.3, 10, seed=0, class_map="mnist", exact=True)
    T = res.transition
    assert T[7, 1] == pytest.approx(0.3) and T[2, 7] == pytest.approx(0.3) and T[3, 8] == pytest.approx(0.3)
    assert T[5, 6] == pytest.approx(0.3) and T[6, 5] == pytest.approx(0.3)
    assert res.to_dict()["options"]["class_map"] == {"7": 1, "2": 7, "5": 6, "6": 5, "3": 8}
    named = noise.corrupt_labels(torch.tensor([0, 1, 2] * 50), "asymmetric", 0.2, 3, seed=0,
                                 class_map={"cat": "dog"}, class_names=["cat", "dog", "fox"], exact=True)
    assert named.transition[0, 1] == pytest.approx(0.2)


def test_matrix_noise_realises_given_matrix(labels):
    g = np.random.default_rng(0)
    T = g.dirichlet(np.ones(K) * 0.5, size=K) * 0.5 + 0.5 * np.eye(K)
    res = noise.corrupt_labels(labels, "matrix", None, K, seed=2, T=T)
    counts = np.bincount(labels.numpy(), minlength=K)
    for i in range(K):
        for j in range(K):
            assert within_binomial(res.transition[i, j], T[i, j], counts[i])


def test_instance_noise_mean_rate_and_dependence_on_features():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6000, 20, generator=g)
    y = torch.randint(0, 5, (6000,), generator=g)
    res = noise.corrupt_labels(y, "instance", 0.3, 5, seed=0, features=x)
    # E[q] of N(0.3, 0.1^2) truncated to [0, 1] is 0.3 (symmetric truncation far away)
    assert abs(res.flip_rate - 0.3) < 0.03
    assert np.allclose(res.nominal_transition.sum(1), 1)
    again = noise.corrupt_labels(y, "instance", 0.3, 5, seed=0, features=x)
    assert torch.equal(res.noisy_labels, again.noisy_labels)
    # instance-dependent: the noisy label of a flipped sample is a function of its features,
    # so flips within a class are far from uniform over the other classes
    off = res.transition[0].copy()
    off[0] = 0
    assert off.max() > 1.5 * off.sum() / 4


def test_zero_rate_changes_nothing_and_seed_determinism(labels):
    for kind, opts in [("symmetric", {}), ("pairflip", {}), ("asymmetric", {"class_map": "mnist"})]:
        assert noise.corrupt_labels(labels, kind, 0.0, K, seed=0, **opts).num_flipped == 0
    a = noise.corrupt_labels(labels, "symmetric", 0.3, K, seed=9)
    b = noise.corrupt_labels(labels, "symmetric", 0.3, K, seed=9)
    c = noise.corrupt_labels(labels, "symmetric", 0.3, K, seed=10)
    assert torch.equal(a.noisy_labels, b.noisy_labels) and not torch.equal(a.noisy_labels, c.noisy_labels)
    state = torch.random.get_rng_state()
    noise.corrupt_labels(labels, "symmetric", 0.3, K, seed=9)
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched


def test_record_is_json_able(labels):
    import json

    d = noise.corrupt_labels(labels, "symmetric", 0.2, K, seed=0).to_dict()
    json.dumps(d)
    assert d["kind"] == "symmetric" and d["num_samples"] == N and len(d["transition"]) == K


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"kind": "symetric", "rate": 0.2}, UnknownNameError, "symmetric"),
        ({"kind": "symmetric", "rate": 1.0}, ConfigError, r"\[0, 1\)"),
        ({"kind": "symmetric", "rate": -0.1}, ConfigError, r"\[0, 1\)"),
        ({"kind": "symmetric", "rate": 0.9}, ConfigError, "no information"),
        ({"kind": "pairflip", "rate": 0.5}, ConfigError, "below 0.5"),
        ({"kind": "asymmetric", "rate": 0.2, "class_map": {3: 12}}, ConfigError, "only 10 classes"),
        ({"kind": "asymmetric", "rate": 0.2, "class_map": "cifar100"}, ConfigError, "cifar10"),
        ({"kind": "matrix", "rate": None, "T": np.full((10, 10), 0.2)}, ConfigError, "row-stochastic"),
        ({"kind": "matrix", "rate": None, "T": np.eye(3)}, ConfigError, "shape"),
        ({"kind": "instance", "rate": 0.2}, ConfigError, "features"),
        ({"kind": "symmetric", "rate": 0.2, "include_true": True}, ConfigError, "include_true_class"),
    ],
)
def test_bad_noise_requests_are_refused(labels, kwargs, error, match):
    kwargs = dict(kwargs)
    kind, rate = kwargs.pop("kind"), kwargs.pop("rate")
    with pytest.raises(error, match=match):
        noise.corrupt_labels(labels, kind, rate, K, seed=0, **kwargs)


def test_labels_out_of_range_refused():
    with pytest.raises(LabelError):
        noise.corrupt_labels(torch.tensor([0, 1, 10]), "symmetric", 0.2, 10, seed=0)


# -- every noise model's numbers go through robustlab.validation -----------------------------

_SMALL = torch.arange(40) % 4
# options each kind needs to run at all
_NEEDS = {
    "matrix": {"T": np.full((4, 4), 0.25)},
    "instance": {"features": np.random.default_rng(0).random((40, 3))},
    "asymmetric": {"class_map": {0: 1}},
}
_NOT_A_RATE = [True, False, float("nan"), float("inf"), "0.2", [0.2], 1.0, -0.1]
_NOT_AN_INT = [True, 2.5, "3", None, float("nan")]
_NOT_A_FLAG = [1, 0, "yes", None]


@pytest.mark.parametrize("kind", noise.available())
def test_every_noise_model_refuses_parameters_of_the_wrong_kind(kind):
    base = {"rate": 0.2 if kind != "matrix" else None, **_NEEDS.get(kind, {})}

    def run(**changes):
        args = {**base, **changes}
        return noise.corrupt_labels(_SMALL, kind, args.pop("rate"), args.pop("num_classes", 4),
                                    seed=args.pop("seed", 0), exact=args.pop("exact", False), **args)

    run()  # the base call is valid
    for value in _NOT_A_RATE:
        with pytest.raises(ConfigError, match=rf"^{kind} noise rate must be a"):
            run(rate=value)
    for param in ("seed", "num_classes"):
        for value in _NOT_AN_INT:
            with pytest.raises(ConfigError, match=rf"^{param} must be an integer"):
                run(**{param: value})
    for value in _NOT_A_FLAG:
        with pytest.raises(ConfigError, match=r"^exact must be True or False"):
            run(exact=value)


def test_per_kind_options_are_validated_too():
    feats = np.random.default_rng(0).random((40, 3))
    for value in (True, float("nan"), 0.0, -0.1, "0.1"):
        with pytest.raises(ConfigError, match="^instance noise std must be a"):
            noise.corrupt_labels(_SMALL, "instance", 0.2, 4, features=feats, std=value)
    for value in (1, "yes", None):
        with pytest.raises(ConfigError, match="^symmetric noise include_true_class must be True or False"):
            noise.corrupt_labels(_SMALL, "symmetric", 0.2, 4, include_true_class=value)
    # integral floats from YAML are accepted as the integers they are
    a = noise.corrupt_labels(_SMALL, "symmetric", 0.2, 4.0, seed=3.0)
    b = noise.corrupt_labels(_SMALL, "symmetric", 0.2, 4, seed=np.int64(3))
    assert torch.equal(a.noisy_labels, b.noisy_labels) and a.seed == 3
