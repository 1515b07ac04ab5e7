"""Conformal prediction: split conformal's guarantee and order statistic, APS/HPS by hand,
RSCP+'s bounds, its coverage under an attack that breaks plain split conformal, PTT's
smaller sets, and every bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from robustlab.certify.conformal import (
    ConformalEvaluation,
    RSCPPlus,
    SplitConformal,
    _bernstein_from_sums,
    aps_scores,
    bernstein_bound,
    conformal_attack,
    conformal_threshold,
    coverage,
    evaluate_conformal,
    hoeffding_bound,
    hps_scores,
    mean_set_size,
    min_calibration_size,
    quantile_index,
)
from robustlab.errors import ConfigError, InvalidInputError, LabelError

torch.set_num_threads(1)

K, D = 3, 20


def _means(sep: float) -> torch.Tensor:
    """Class means ``0.5 +- sep`` in each of D coordinates (random signs, fixed seed)."""
    g = torch.Generator().manual_seed(123)
    return 0.5 + sep * (2 * torch.randint(0, 2, (K, D), generator=g) - 1).float()


def _blobs(n: int, sep: float, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """i.i.d. Gaussian blobs (std 0.05) around :func:`_means`, clipped to [0, 1]."""
    mus = _means(sep)
    y = torch.randint(0, K, (n,), generator=g)
    return (mus[y] + 0.05 * torch.randn(n, D, generator=g)).clamp(0, 1), y


class Linear(nn.Module):
    """The nearest-mean linear classifier of the blobs, logits scaled by ``scale``."""

    def __init__(self, sep: float, scale: float) -> None:
        super().__init__()
        mus = _means(sep)
        self.lin = nn.Linear(D, K)
        with torch.no_grad():
            self.lin.weight.copy_(scale * mus)
            self.lin.bias.copy_(-0.5 * scale * (mus * mus).sum(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


class Fixed(nn.Module):
    """Logits ``log p`` for every input (the softmax is ``p`` whatever the input)."""

    def __init__(self, p: list[float]) -> None:
        super().__init__()
        self.register_buffer("logp", torch.tensor(p, dtype=torch.float64).log())
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logp: torch.Tensor = self.logp  # type: ignore[assignment]
        return logp.expand(len(x), -1) + 0 * x.sum(1, keepdim=True).double()


P = [0.5, 0.3, 0.15, 0.05]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- split conformal ---------------------------------------------------------------------


def test_split_conformal_coverage_over_200_independent_repetitions() -> None:
    """Exchangeable data: coverage has mean exactly k/(n+1), k = ceil((1-alpha)(n+1)), in
    [1-alpha, 1-alpha+1/(n+1)). Each repetition draws fresh i.i.d. calibration and test
    points (so repetitions are independent); a repetition's coverage C given the
    calibration is Binomial(m, T)/m with T ~ Beta(k, n+1-k) (continuous randomised APS
    scores, no ties), so Var(C) = Var(T) + E[T(1-T)]/m exactly; the slack is 4 standard
    deviations of the mean of 200."""
    alpha, n, m, reps = 0.1, 100, 1000, 200
    model = Linear(0.08, 10.0)  # an imperfect classifier: sets of 1-2 labels
    g = gen(0)
    covs = []
    for _ in range(reps):
        xc, yc = _blobs(n, 0.08, g)
        xt, yt = _blobs(m, 0.08, g)
        cp = SplitConformal("aps", alpha).calibrate(model, xc, yc, generator=g)
        covs.append(coverage(cp.predict_sets(xt, generator=g), yt))
    mean = sum(covs) / reps
    k = math.ceil((1 - alpha) * (n + 1) - 1e-9)
    a, b = k, n + 1 - k
    e_t = a / (a + b)
    var_t = a * b / ((a + b) ** 2 * (a + b + 1))
    var_c = var_t + (e_t - (var_t + e_t**2)) / m
    slack = 4 * math.sqrt(var_c / reps)
    assert k == 91 and abs(e_t - 91 / 101) < 1e-15
    assert 1 - alpha - slack <= mean <= 1 - alpha + 1 / (n + 1) + slack, (mean, slack)
    assert abs(mean - e_t) <= slack, f"mean coverage {mean:.4f}, expected {e_t:.4f} +- {slack:.4f}"


def test_quantile_is_the_exact_order_statistic() -> None:
    scores = torch.tensor([0.7, 0.1, 0.9, 0.3, 0.5, 0.2, 1.0, 0.4, 0.8, 0.6])  # 0.1..1.0 shuffled
    # n = 10, alpha = 0.2: ceil(0.8 * 11) = ceil(8.8) = 9 -> the 9th smallest, 0.9
    assert quantile_index(10, 0.2) == 9
    assert conformal_threshold(scores, 0.2) == pytest.approx(0.9, abs=1e-7)
    # n = 19, alpha = 0.1: (1 - 0.1) * 20 = 18 exactly (in floats 18.000000000000004) -> 18th
    assert quantile_index(19, 0.1) == 18
    s19 = torch.arange(1, 20, dtype=torch.float64).flip(0)
    assert conformal_threshold(s19, 0.1) == 18.0
    # n = 9, alpha = 0.1: ceil(0.9 * 10) = 9 = n (the largest); n = 8 is too small
    assert quantile_index(9, 0.1) == 9 and min_calibration_size(0.1) == 9
    assert min_calibration_size(0.05) == 19 and min_calibration_size(0.2) == 4


def test_aps_and_hps_scores_by_hand() -> None:
    p = torch.tensor([P], dtype=torch.float64)
    # rho(y) + u * p_y with u = 1/2: 0 + .25, .5 + .15, .8 + .075, .95 + .025
    assert torch.allclose(aps_scores(p, torch.tensor([0.5])), torch.tensor([[0.25, 0.65, 0.875, 0.975]], dtype=torch.float64))
    # non-randomised: the cumulative mass including the label
    assert torch.allclose(aps_scores(p, None), torch.tensor([[0.5, 0.8, 0.95, 1.0]], dtype=torch.float64))
    # the order does not depend on where the classes sit
    q = torch.tensor([[0.15, 0.05, 0.5, 0.3]], dtype=torch.float64)
    assert torch.allclose(aps_scores(q, torch.tensor([0.5])), torch.tensor([[0.875, 0.975, 0.25, 0.65]], dtype=torch.float64))
    assert torch.equal(hps_scores(p), 1 - p)


def test_aps_and_hps_sets_by_hand() -> None:
    model, x = Fixed(P), torch.full((1, 2), 0.5)
    # calibration scores 0.1 .. 0.9 at the true labels: n = 9, alpha = 0.2 -> 8th -> 0.8
    table = torch.zeros(9, 4, dtype=torch.float64)
    table[:, 0] = torch.arange(1, 10, dtype=torch.float64) / 10
    y0 = torch.zeros(9, dtype=torch.long)
    aps = SplitConformal("aps", 0.2, randomized=False).calibrate(table, None, y0)
    assert aps.threshold_ == pytest.approx(0.8)
    aps.model_ = model  # predict with the fixed-output model: APS scores .5, .8, .95, 1
    aps.threshold_ = 0.85
    assert aps.predict_sets(x).tolist() == [[True, True, False, False]]
    hps = SplitConformal("hps", 0.2).calibrate(table, None, y0)
    hps.model_ = model  # HPS scores .5, .7, .85, .95 <= 0.8
    assert hps.predict_sets(x).tolist() == [[True, True, False, False]]
    # through the model path: HPS score of the true label is exactly 1 - p_y
    cal_x = torch.full((9, 2), 0.5)
    hp = SplitConformal("hps", 0.2).calibrate(model, cal_x, torch.full((9,), 2, dtype=torch.long))
    assert hp.threshold_ == pytest.approx(0.85)


def test_model_modes_and_flags_restored() -> None:
    model = Fixed(P)
    model.train()
    lin = Linear(0.08, 10.0)
    lin.train()
    cp = RSCPPlus("hps", n_s=8, batch_size=5)
    cp.calibrate(model, torch.rand(30, 2, generator=gen(0)), torch.zeros(30, dtype=torch.long), generator=gen(1))
    cp.predict_sets(torch.rand(4, 2, generator=gen(2)), generator=gen(3))
    assert model.training and model.drop.training
    x, y = _blobs(6, 0.08, gen(4))
    conformal_attack(cp, lin, x, y, steps=2, eot_samples=2, generator=gen(5))
    assert lin.training and all(p.requires_grad for p in lin.parameters())


def test_smoothed_score_of_an_input_independent_model_is_the_base_score() -> None:
    """Noise cannot move a constant model, so S^ = S exactly, for any batching."""
    model, x = Fixed(P), torch.full((7, 2), 0.5)
    for bs in (1, 5, 64):
        t = RSCPPlus("hps", n_s=10, batch_size=bs, bound="bernstein").score_table(model, x, generator=gen(0))
        assert torch.allclose(t.scores, 1 - torch.tensor(P, dtype=torch.float64).expand(7, 4))
        # zero variance: Bernstein's bound is its constant term 7 ln(2/beta) / (3 (n_s - 1))
        assert t.bound is not None
        assert torch.allclose(t.bound, torch.full((7, 4), 7 * math.log(2000) / 27, dtype=torch.float64))


def test_hoeffding_and_bernstein_bounds_exact() -> None:
    assert hoeffding_bound(256, 0.001) == pytest.approx(0.11615381840155745, abs=1e-15)
    assert RSCPPlus().hoeffding == pytest.approx(math.sqrt(math.log(1 / 0.001) / (2 * 256)), abs=1e-15)
    s = torch.rand(50, 3, generator=gen(0), dtype=torch.float64)
    t = math.log(2 / 0.01)
    want = torch.sqrt(2 * s.var(0) * t / 50) + 7 * t / (3 * 49)
    assert torch.allclose(bernstein_bound(s, 0.01), want)
    assert torch.allclose(_bernstein_from_sums(s.sum(0), (s * s).sum(0), 50, 0.01), want)


# -- RSCP+ under attack ------------------------------------------------------------------


def test_rscp_plus_keeps_coverage_under_the_attack_that_breaks_split_conformal() -> None:
    """L2 attack of radius delta = 0.125 on the true label's score: plain split conformal's
    coverage falls below 1 - alpha; RSCP+'s (HPS, Hoeffding, n_s = 256) stays above, with
    informative sets. Linear classifier on 3 Gaussian blobs in [0, 1]^20."""
    alpha, delta = 0.1, 0.125
    model = Linear(0.12, 10.0)
    x, y = _blobs(400, 0.12, gen(0))
    plain = SplitConformal("hps", alpha)
    robust = RSCPPlus("hps", alpha, delta=delta)
    x_plain = conformal_attack(plain, model, x, y, delta=delta, generator=gen(1))
    x_robust = conformal_attack(robust, model, x, y, eot_samples=16, generator=gen(2))
    assert float((x_plain - x).norm(dim=1).max()) <= delta + 1e-6
    assert float((x_robust - x).norm(dim=1).max()) <= delta + 1e-6
    ev_p = evaluate_conformal(plain, model, x, y, n_cal=200, n_splits=20, x_attacked=x_plain)
    ev_r = evaluate_conformal(robust, model, x, y, n_cal=200, n_splits=20, x_attacked=x_robust)
    msg = (
        f"attacked coverage: split conformal {ev_p.attacked_coverage_mean:.3f} "
        f"(clean {ev_p.coverage_mean:.3f}), RSCP+ {ev_r.attacked_coverage_mean:.3f} "
        f"(clean {ev_r.coverage_mean:.3f}, size {ev_r.attacked_size_mean:.2f})"
    )
    assert ev_p.coverage_mean >= 1 - alpha - 0.03, msg  # clean: the guarantee holds
    assert ev_p.attacked_coverage_mean is not None and ev_r.attacked_coverage_mean is not None
    assert ev_p.attacked_coverage_mean < 1 - alpha, msg
    assert ev_r.attacked_coverage_mean >= 1 - alpha, msg
    assert ev_r.attacked_size_mean is not None and ev_r.attacked_size_mean < K, msg  # not trivial


def test_ptt_shrinks_sets_at_the_same_guarantee() -> None:
    """Same alpha, delta, sigma, n_s, beta and the same 500 extra points (PTT's ranking
    reference with PTT; extra calibration points without): PTT's sets are smaller and
    still cover >= 1 - alpha on clean data."""
    model = Linear(0.08, 10.0)
    x, y = _blobs(1500, 0.08, gen(0))
    holdout = (x[1000:], y[1000:])
    res: dict[tuple[str, bool], ConformalEvaluation] = {}
    for score in ("hps", "aps"):
        for ptt in (False, True):
            cp = RSCPPlus(score, ptt=ptt)
            res[score, ptt] = evaluate_conformal(cp, model, x[:1000], y[:1000], n_cal=500, n_splits=10,
                                                 holdout=holdout, seed=1)
    for score in ("hps", "aps"):
        base, with_ptt = res[score, False], res[score, True]
        msg = (f"{score}: size {base.size_mean:.2f} -> {with_ptt.size_mean:.2f} with PTT, "
               f"coverage {with_ptt.coverage_mean:.3f}")
        assert with_ptt.size_mean < base.size_mean, msg
        assert with_ptt.coverage_mean >= 0.9, msg
    assert res["hps", True].size_mean < 0.75 * res["hps", False].size_mean


def test_helpers_coverage_and_set_size() -> None:
    sets = torch.tensor([[True, False, True], [False, False, True], [True, True, True]])
    assert coverage(sets, torch.tensor([0, 1, 2])) == pytest.approx(2 / 3)
    assert mean_set_size(sets) == pytest.approx(6 / 3)


# -- bad inputs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"alpha": 0.0}, {"alpha": 1.0}, {"alpha": 1.5}, {"alpha": -0.1}, {"alpha": True},
        {"beta": 0.05}, {"beta": 0.2}, {"alpha": 0.01, "beta": 0.005}, {"beta": 0.0},
        {"sigma": 0.0}, {"sigma": -0.25}, {"n_s": 0}, {"n_s": 2.5},
        {"score": "softmax"}, {"bound": "chernoff"}, {"n_s": 1, "bound": "bernstein"},
        {"delta": -0.1}, {"ptt": 1},
    ],
)
def test_bad_parameters_raise_config_error(kwargs: dict) -> None:
    with pytest.raises(ConfigError) as info:
        RSCPPlus(**kwargs)
    assert "\n" not in str(info.value)


def test_bad_split_parameters() -> None:
    for kw in ({"alpha": 0.0}, {"alpha": 1.0}, {"score": "raps"}, {"randomized": "yes"}, {"batch_size": 0}):
        with pytest.raises(ConfigError):
            SplitConformal(**kw)  # type: ignore[arg-type]


def test_bad_calibration_inputs() -> None:
    model = Fixed(P)
    x = torch.full((8, 2), 0.5)
    with pytest.raises(ConfigError, match="at least 9 calibration points"):
        SplitConformal("hps", 0.1).calibrate(model, x, torch.zeros(8, dtype=torch.long))
    # RSCP+ calibrates at alpha - 2 beta = 0.098: ceil(0.902 * 10) = 10 > 9
    with pytest.raises(ConfigError, match="at least 10 calibration points"):
        RSCPPlus("hps", 0.1, n_s=4).calibrate(model, torch.full((9, 2), 0.5), torch.zeros(9, dtype=torch.long))
    with pytest.raises(LabelError):
        SplitConformal("hps").calibrate(model, torch.full((20, 2), 0.5), torch.full((20,), 4, dtype=torch.long))
    with pytest.raises(LabelError):
        coverage(torch.ones(2, 3, dtype=torch.bool), torch.tensor([0, 3]))
    with pytest.raises(InvalidInputError):
        SplitConformal("hps").calibrate(model, torch.full((20, 2), 1.5), torch.zeros(20, dtype=torch.long))
    with pytest.raises(InvalidInputError):
        SplitConformal("hps").calibrate(model, torch.full((20, 2), float("nan")), torch.zeros(20, dtype=torch.long))
    with pytest.raises(ConfigError, match="not calibrated"):
        SplitConformal().predict_sets(x)
    with pytest.raises(ConfigError, match="holdout"):
        RSCPPlus("hps", ptt=True, n_s=2).calibrate(model, torch.full((20, 2), 0.5), torch.zeros(20, dtype=torch.long))
    with pytest.raises(InvalidInputError, match=r"\[0, 1\]"):
        RSCPPlus("hps").calibrate(torch.full((20, 4), 2.0, dtype=torch.float64), None, torch.zeros(20, dtype=torch.long))
    with pytest.raises(InvalidInputError):
        mean_set_size(torch.ones(2, 3))
    with pytest.raises(ConfigError, match="n_cal"):
        evaluate_conformal(SplitConformal(), model, x, torch.zeros(8, dtype=torch.long), n_cal=8)
