"""Randomized smoothing (Cohen et al. 2019): exact statistics, exact smoothed radii of
linear classifiers, independence and reproducibility of the noise, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats as sps
from torch import nn

from robustlab import evaluate
from robustlab.certify import ABSTAIN, CertificationResult, Smooth, certify_dataset, stats
from robustlab.certify.smoothing import image_seeds
from robustlab.errors import ConfigError, InvalidInputError

torch.set_num_threads(1)


# -- statistics ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("n_a", "n", "expected"),
    [(100000, 100000, 3.8115), (99000, 100000, 2.2900), (60000, 100000, 0.2409), (990, 1000, 1.9780),
     (100, 100, 1.5005)],
)
def test_clopper_pearson_radius_table(n_a: int, n: int, expected: float) -> None:
    r = float(stats.radius(stats.lower_confidence_bound(n_a, n, 0.001), 1.0))
    assert round(r, 4) == expected


def test_lower_bound_is_zero_without_successes_and_the_reference_interval_otherwise() -> None:
    assert float(stats.lower_confidence_bound(0, 50, 0.01)) == 0.0
    # the reference's proportion_confint(k, n, alpha=2*alpha, method="beta")[0] is the
    # lower end of the two-sided interval at 2*alpha, i.e. Beta.ppf(alpha, k, n-k+1)
    k, n, a = 37, 50, 0.01
    assert float(stats.lower_confidence_bound(k, n, a)) == pytest.approx(sps.beta.ppf(a, k, n - k + 1), abs=0)
    # coverage of the one-sided bound is exact: P(bound > p) = P(K >= k*) <= alpha
    p = 0.7
    ks = np.arange(n + 1)
    bad = stats.lower_confidence_bound(ks, n, a) > p
    assert sps.binom.pmf(ks[bad], n, p).sum() <= a


def test_sample_budget_and_ceiling() -> None:
    assert stats.min_samples(0.001) == 10  # 0.001 ** (1/10) = 0.501 >= 1/2, 0.001 ** (1/9) < 1/2
    assert stats.max_radius(10, 0.001, 1.0) == pytest.approx(sps.norm.ppf(0.001 ** 0.1))
    with pytest.raises(ConfigError, match="n >= 10"):
        stats.check_budget(9, 0.001)
    with pytest.raises(ConfigError, match="beyond the largest radius"):
        stats.check_radii([1.0], 100, 0.001, 0.25)  # ceiling 0.25 * 1.5005


def test_accuracy_lower_bound_is_below_the_estimate_and_exact_without_wrong_certificates() -> None:
    lo = stats.accuracy_lower_bound(800, 1000, alpha=0.001, gamma=0.001)
    q = sps.binom.ppf(1 - 0.0005, 1000, 0.001)
    assert lo == pytest.approx(sps.beta.ppf(0.0005, 800 - q, 1000 - (800 - q) + 1))
    assert lo < 0.8


# -- a constant and a linear base classifier ---------------------------------------------
class Constant(nn.Module):
    def __init__(self, k: int = 3, c: int = 1) -> None:
        super().__init__()
        self.k, self.c = k, c
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(len(x), self.k)
        out[:, self.c] = 1.0
        return out + 0 * self.dummy


def linear(w: torch.Tensor, b: float) -> nn.Linear:
    """A 2-class linear model predicting class 1 iff ``w . x + b > 0``."""
    m = nn.Linear(len(w), 2)
    with torch.no_grad():
        m.weight.copy_(torch.stack([torch.zeros_like(w), w]))
        m.bias.copy_(torch.tensor([0.0, b]))
    return m


def test_predict_with_ten_samples_always_abstains_and_with_more_returns_the_class() -> None:
    x = torch.rand(4, 5)
    smooth = Smooth(Constant(), 3, 0.5)
    assert smooth.predict(x, n=10, alpha=0.001, seed=0).tolist() == [ABSTAIN] * 4  # p = 2 / 2**10 > 0.001
    assert smooth.predict(x, n=11, alpha=0.001, seed=0).tolist() == [1] * 4  # p = 2 / 2**11 < 0.001


def test_constant_classifier_reaches_the_ceiling() -> None:
    cert = Smooth(Constant(), 3, 0.5).certify(torch.rand(3, 5), n0=10, n=1000, alpha=0.001, seed=0)
    assert cert.predict.tolist() == [1, 1, 1]
    assert torch.allclose(cert.radius, torch.full((3,), stats.max_radius(1000, 0.001, 0.5), dtype=torch.float64))


def test_linear_classifier_radii_never_exceed_the_true_radius_and_approach_it() -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.tensor([1.0, -2.0, 0.5])
    b = 0.2
    x = torch.rand(60, 3, generator=gen)
    sigma = 0.5
    model = linear(w, b)
    true = ((x @ w + b).abs() / w.norm()).double()
    true_class = (x @ w + b > 0).long()
    smooth = Smooth(model, 2, sigma)
    gaps = {}
    for n in (1000, 100_000):
        cert = smooth.certify(x, n0=100, n=n, alpha=0.001, seed=1, batch_size=4096)
        ok = cert.predict != ABSTAIN
        # soundness: a certificate is wrong with probability <= alpha = 0.001 per point;
        # over 60 points none should be (P(any) <= 6%, and the seed is fixed)
        assert bool((cert.predict[ok] == true_class[ok]).all())
        assert bool((cert.radius[ok] <= true[ok]).all()), (cert.radius - true)[ok].max()
        gaps[n] = float((true - cert.radius)[ok & (true < 2 * sigma)].mean())
    assert gaps[100_000] < gaps[1000] / 3, gaps
    assert gaps[100_000] < 0.05 * sigma, gaps


# -- noise: independence, reproducibility, the global RNG ------------------------------
def test_counts_do_not_depend_on_batch_companions_or_batch_size() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4))
    x = torch.rand(5, 1, 4, 4)
    smooth = Smooth(model, 4, 0.3)
    seeds = image_seeds(5, seed=7)
    full = smooth.certify(x, n0=50, n=3000, seeds=seeds, batch_size=512)
    alone = smooth.certify(x[[3]], n0=50, n=3000, seeds=[seeds[3]], batch_size=97)
    pair = smooth.certify(x[[4, 3]], n0=50, n=3000, seeds=[seeds[4], seeds[3]], batch_size=1000)
    assert int(alone.count[0]) == int(full.count[3]) == int(pair.count[1])
    assert float(alone.radius[0]) == float(full.radius[3])


def test_same_generator_same_certificates_and_global_rng_untouched() -> None:
    torch.manual_seed(4)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4))
    x = torch.rand(4, 1, 4, 4)
    smooth = Smooth(model, 4, 0.3)
    state = torch.get_rng_state()
    a = smooth.certify(x, n0=20, n=500, generator=torch.Generator().manual_seed(9))
    b = smooth.certify(x, n0=20, n=500, generator=torch.Generator().manual_seed(9))
    c = smooth.certify(x, n0=20, n=500, generator=torch.Generator().manual_seed(10))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.count, b.count) and torch.equal(a.radius, b.radius)
    assert not torch.equal(a.count, c.count)


def test_noise_is_gaussian_at_sigma_in_input_space() -> None:
    """The base model sees ``x + N(0, sigma^2 I)`` with no clipping: a model thresholding one
    coordinate at t is labelled 1 with probability Phi((x - t) / sigma)."""

    class Threshold(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            z = (x[:, 0] > 1.1).float() + 0 * self.w
            return torch.stack([1 - z, z], 1)

    x = torch.tensor([[0.9, 0.0], [1.0, 0.0]])
    counts = Smooth(Threshold(), 2, 0.2).counts(x, 200_000, seed=0, batch_size=8192)
    p = counts[:, 1].double() / 200_000
    expected = torch.tensor([sps.norm.cdf(-1.0), sps.norm.cdf(-0.5)], dtype=torch.float64)
    assert torch.allclose(p, expected, atol=4 * math.sqrt(0.25 / 200_000))


def test_model_modes_are_restored_and_batchnorm_statistics_untouched() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    model.train()
    model[3].eval()
    before = model[2].running_mean.clone()
    Smooth(model, 3, 0.25).certify(torch.rand(3, 1, 4, 4), n0=20, n=200, seed=0)
    assert [m.training for m in model] == [True, True, True, False]
    assert torch.equal(model[2].running_mean, before)


# -- bad input ---------------------------------------------------------------------------
def test_bad_settings_raise_clear_errors() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    x = torch.rand(2, 4)
    with pytest.raises(ConfigError, match="sigma"):
        Smooth(model, 2, 0.0)
    smooth = Smooth(model, 2, 0.25)
    with pytest.raises(ConfigError, match="alpha"):
        smooth.certify(x, alpha=1.0)
    with pytest.raises(ConfigError, match="n0"):
        smooth.certify(x, n0=0)
    with pytest.raises(ConfigError, match="use n >= 10"):
        smooth.certify(x, n=5, alpha=0.001)
    with pytest.raises(InvalidInputError):
        smooth.certify(torch.full((2, 4), 2.0), n=100)
    with pytest.raises(ConfigError, match="generator or a seed"):
        smooth.certify(x, n=100, seed=1, generator=torch.Generator())


def test_random_base_model_is_refused() -> None:
    class Noisy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x) + torch.randn(len(x), 2)

    with pytest.raises(ConfigError, match="deterministic base model"):
        Smooth(Noisy(), 2, 0.25).certify(torch.rand(2, 4), n=100, seed=0)


# -- a dataset, its TSV and the evaluation path -------------------------------------------
def test_certify_dataset_tsv_round_trip_and_certified_accuracy(tmp_path) -> None:  # type: ignore[no-untyped-def]
    gen = torch.Generator().manual_seed(1)
    w = torch.tensor([1.0, -1.0])
    x = torch.rand(40, 2, generator=gen)
    y = (x @ w + 0.05 > 0).long()
    y[:5] = 1 - y[:5]  # five wrong labels
    model = linear(w, 0.05)
    res = certify_dataset(model, x, y, 0.25, num_classes=2, n=2000, seed=3, progress=False)
    for r in (0.0, 0.1, 0.3):
        expected = sum(1 for i in range(40) if res.predict[i] == int(y[i]) and res.radius[i] >= r) / 40
        assert res.certified_accuracy(r) == expected
    assert not bool(res.correct[res.predict == ABSTAIN].any())
    assert bool((res.radius[res.predict == ABSTAIN] == 0).all())
    path = res.write_tsv(tmp_path / "c.tsv")
    assert path.read_text().splitlines()[0] == "idx\tlabel\tpredict\tradius\tcorrect\ttime"
    back = CertificationResult.read_tsv(path, sigma=0.25, n0=100, n=2000, alpha=0.001)
    assert np.array_equal(back.predict, res.predict) and np.allclose(back.radius, res.radius, atol=1e-6)
    assert back.certified_accuracy(0.1) == res.certified_accuracy(0.1)
    # the reference's time column is a timedelta
    (tmp_path / "ref.tsv").write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t3\t3\t0.5\t1\t0:00:01.500000\n")
    ref = CertificationResult.read_tsv(tmp_path / "ref.tsv", sigma=0.25, n0=100, n=100000, alpha=0.001)
    assert ref.seconds.tolist() == [1.5] and ref.certified_accuracy(0.5) == 1.0


def test_a_point_keeps_its_certificate_in_every_subset() -> None:
    torch.manual_seed(5)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x, y = torch.rand(12, 1, 4, 4), torch.randint(0, 3, (12,))
    full = certify_dataset(model, x, y, 0.3, num_classes=3, n=500, seed=2, progress=False)
    idx = torch.tensor([2, 7, 11])
    sub = certify_dataset(model, x[idx], y[idx], 0.3, num_classes=3, n=500, seed=2, indices=idx, progress=False)
    assert np.array_equal(sub.radius, full.radius[idx.numpy()])


def test_evaluation_path_certify_rows_match_certify_dataset() -> None:
    torch.manual_seed(6)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x, y = torch.rand(30, 1, 4, 4), torch.randint(0, 3, (30,))
    radii = [0.0, 0.05, 0.2]
    ms = [evaluate.Measurement("smoothing", "l2", radii, {"sigma": s, "n": 1000}, subset=12, kind="certify")
          for s in (0.25, 0.5)]
    ev = evaluate.evaluate(model, x, y, ms, seed=4, progress=False)
    assert [(r.kind, r.params["sigma"], r.eps) for r in ev.rows] == [
        ("certify", s, r) for s in (0.25, 0.5) for r in radii]
    idx = evaluate.subset_indices(30, 12, 4)
    for m, cert in zip(ms, ev.certifications, strict=True):
        from robustlab.seeding import derive_seed

        ref = certify_dataset(model, x[idx], y[idx], m.params["sigma"], num_classes=3, n=1000,
                              seed=derive_seed("certify", 4, "smoothing"), indices=idx, progress=False)
        rows = [r for r in ev.rows if r.params["sigma"] == m.params["sigma"]]
        assert [r.accuracy for r in rows] == [ref.certified_accuracy(r) for r in radii]
        assert np.array_equal(cert.radius.numpy(), ref.radius)
        assert all(r.extra["lower"] <= r.accuracy for r in rows)
        assert all(not r.flags for r in rows)  # rows of two sigmas are not compared as budgets
    rec = ev.records["certify/smoothing/l2/sigma=0.25/radius"]
    assert np.isnan(rec[np.setdiff1d(np.arange(30), idx.numpy())]).all()


def test_certify_measurement_bad_input() -> None:
    with pytest.raises(ConfigError, match="l2"):
        evaluate.Measurement("smoothing", "linf", [0.1], {"sigma": 0.25}, kind="certify").build()
    with pytest.raises(ConfigError, match="beyond the largest radius"):
        evaluate.Measurement("smoothing", "l2", [2.0], {"sigma": 0.25, "n": 1000}, kind="certify").build()
    with pytest.raises(ConfigError, match="kind"):
        evaluate.Measurement("smoothing", "l2", [0.1], kind="estimate").build()
