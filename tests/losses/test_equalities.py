"""Closed-form equalities between the robust losses (float64, tight tolerances)."""

import math

import pytest
import torch
import torch.nn.functional as F

from robustlab import losses

LN_1E4 = math.log(1e-4)


def batch(n=32, k=6, seed=0, scale=1.5):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, generator=g, dtype=torch.float64) * scale
    y = torch.randint(0, k, (n,), generator=g)
    # keep every probability well inside the clamps of GCE/NGCE/RCE ([1e-7, 1])
    assert float(z.softmax(1).min()) > 1e-5
    return z, y


def make(name, **params):
    return losses.create(name, reduction="none", **params)


def ce(z, y):
    return F.cross_entropy(z, y, reduction="none")


def p_y(z, y):
    return z.softmax(1)[torch.arange(len(y)), y]


def close(a, b, rtol=1e-12, atol=1e-12):
    return torch.allclose(a, b, rtol=rtol, atol=atol)


# -- comp-sum ------------------------------------------------------------------------------
def test_comp_sum_tau1_is_cross_entropy():
    z, y = batch()
    assert close(make("comp-sum", tau=1.0)(z, y), ce(z, y))


@pytest.mark.parametrize("q", [0.05, 0.3, 0.7, 1.0])
def test_comp_sum_tau_1_plus_q_is_gce(q):
    z, y = batch(seed=1)
    assert close(make("comp-sum", tau=1.0 + q)(z, y), make("gce", q=q)(z, y))
    want = (1 - p_y(z, y) ** q) / q
    assert close(make("gce", q=q)(z, y), want)


def test_comp_sum_tau2_is_mae():
    z, y = batch(seed=2)
    assert close(make("comp-sum", tau=2.0)(z, y), make("mae")(z, y))
    assert close(make("comp-sum", tau=2.0)(z, y), 1 - p_y(z, y))


def test_comp_sum_tau0_is_sum_exponential_loss():
    z, y = batch(seed=3)
    diff = z - z[torch.arange(len(y)), y].unsqueeze(1)
    u = diff.exp().masked_fill(F.one_hot(y, z.shape[1]).bool(), 0.0).sum(1)
    assert close(make("comp-sum", tau=0.0)(z, y), u)


def test_comp_sum_is_continuous_in_tau_at_1():
    z, y = batch(seed=4)
    near = make("comp-sum", tau=1.0 + 1e-7)(z, y)
    assert torch.allclose(near, ce(z, y), rtol=1e-5)


# -- GCE / MAE / RCE / NCE / NGCE / NFL / focal --------------------------------------------
def test_gce_tends_to_ce_as_q_tends_to_0():
    z, y = batch(seed=5)
    assert torch.allclose(make("gce", q=1e-4)(z, y), ce(z, y), rtol=1e-3)


def test_gce_q1_is_mae():
    z, y = batch(seed=6)
    assert close(make("gce", q=1.0)(z, y), make("mae")(z, y))


def test_gce_clamps_p_at_1e_7_like_the_official_code():
    z = torch.tensor([[0.0, 30.0, 0.0]], dtype=torch.float64, requires_grad=True)  # p_0 ~ 1e-13
    y = torch.tensor([0])
    out = make("gce", q=0.7)(z, y)
    assert torch.allclose(
        out, torch.tensor([(1 - 1e-7**0.7) / 0.7], dtype=torch.float64), rtol=1e-12
    )
    out.sum().backward()
    assert torch.equal(z.grad, torch.zeros_like(z))


def test_mae_is_one_minus_p_y_and_scale_two_is_l1_distance():
    z, y = batch(seed=7)
    assert close(make("mae")(z, y), 1 - p_y(z, y))
    l1 = (F.one_hot(y, z.shape[1]).double() - z.softmax(1)).abs().sum(1)
    assert close(make("mae", scale=2.0)(z, y), l1)


def test_rce_is_minus_A_times_one_minus_p_y():
    z, y = batch(seed=8)
    assert close(make("rce")(z, y), -LN_1E4 * (1 - p_y(z, y)), rtol=1e-10)
    assert close(make("rce", A=-4.0)(z, y), 4.0 * (1 - p_y(z, y)), rtol=1e-10)


def test_rce_clamps_small_probabilities_at_1e_7():
    z = torch.tensor([[10.0, -10.0, 0.0, -12.0]], dtype=torch.float64)  # p_1, p_3 < 1e-7
    y = torch.tensor([0])
    p = z.softmax(1)[0]
    assert float(p[1]) < 1e-7 and float(p[3]) < 1e-7
    want = -LN_1E4 * (1e-7 + float(p[2]) + 1e-7)
    assert math.isclose(float(make("rce")(z, y)), want, rel_tol=1e-12)


def test_nce_is_ce_over_sum_of_ce_over_all_labels():
    z, y = batch(seed=9)
    denom = -(z.log_softmax(1)).sum(1)
    assert close(make("nce")(z, y), ce(z, y) / denom)


def test_ngce_is_gce_normalised_over_labels():
    z, y = batch(seed=10)
    q = 0.4
    k = z.shape[1]
    per_label = torch.stack([make("gce", q=q)(z, torch.full_like(y, j)) for j in range(k)], 1)
    assert close(make("ngce", q=q)(z, y), make("gce", q=q)(z, y) / per_label.sum(1))
    # closed form of the reference code: (1 - p_y^q) / (K - sum_k p_k^q)
    p = z.softmax(1)
    assert close(make("ngce", q=q)(z, y), (1 - p_y(z, y) ** q) / (k - (p**q).sum(1)))


@pytest.mark.parametrize("detach", [True, False])
def test_nfl_is_focal_normalised_over_labels(detach):
    z, y = batch(seed=11)
    g = 0.5
    k = z.shape[1]
    fl = torch.stack([make("focal", gamma=g)(z, torch.full_like(y, j)) for j in range(k)], 1)
    assert close(
        make("nfl", gamma=g, detach=detach)(z, y), make("focal", gamma=g)(z, y) / fl.sum(1)
    )


@pytest.mark.parametrize("detach", [True, False])
def test_focal_gamma0_is_ce(detach):
    z, y = batch(seed=12)
    assert close(make("focal", gamma=0.0, detach=detach)(z, y), ce(z, y))


def test_focal_formula():
    z, y = batch(seed=13)
    want = -((1 - p_y(z, y)) ** 2) * torch.log(p_y(z, y))
    assert close(make("focal")(z, y), want, rtol=1e-10)


def test_focal_is_finite_when_p_y_rounds_to_one():
    z = torch.tensor([[60.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0])
    for name, params in [("focal", {"gamma": 0.5}), ("nfl", {"gamma": 0.5, "detach": False})]:
        out = make(name, **params)(z, y).sum()
        (g,) = torch.autograd.grad(out, z)
        assert torch.isfinite(out) and torch.isfinite(g).all()


# -- SCE and the active-passive pairs -------------------------------------------------------
def test_sce_beta0_is_alpha_ce_and_general_combination():
    z, y = batch(seed=14)
    assert close(make("sce", alpha=0.37, beta=0.0)(z, y), 0.37 * ce(z, y))
    want = 0.1 * ce(z, y) + 1.0 * make("rce")(z, y)
    assert close(make("sce")(z, y), want)


def test_nce_plus_rce_is_nce_plus_rce_closed_form():
    z, y = batch(seed=15)
    want = make("nce")(z, y) + (-LN_1E4) * (1 - p_y(z, y))
    assert close(make("nce+rce", alpha=1.0, beta=1.0)(z, y), want, rtol=1e-10)


@pytest.mark.parametrize(
    "pair,active,passive,extra",
    [
        ("nce+rce", "nce", "rce", {}),
        ("nce+mae", "nce", "mae", {}),
        ("nfl+rce", "nfl", "rce", {"gamma": 0.7}),
        ("nfl+mae", "nfl", "mae", {"gamma": 0.7}),
        ("ngce+rce", "ngce", "rce", {"q": 0.3}),
        ("ngce+mae", "ngce", "mae", {"q": 0.3}),
    ],
)
def test_active_passive_is_alpha_active_plus_beta_passive(pair, active, passive, extra):
    z, y = batch(seed=16)
    got = make(pair, alpha=0.3, beta=2.5, **extra)(z, y)
    want = 0.3 * make(active, **extra)(z, y) + 2.5 * make(passive)(z, y)
    assert close(got, want)


# -- bootstrapping --------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["bootstrap-soft", "bootstrap-hard"])
def test_bootstrap_beta1_is_ce(name):
    z, y = batch(seed=17)
    assert close(make(name, beta=1.0)(z, y), ce(z, y))


def test_bootstrap_formulas():
    z, y = batch(seed=18)
    logp, p = z.log_softmax(1), z.softmax(1)
    soft = -(0.95 * logp[torch.arange(len(y)), y] + 0.05 * (p * logp).sum(1))
    assert close(make("bootstrap-soft")(z, y), soft)
    pred = z.argmax(1)
    hard = -(0.8 * logp[torch.arange(len(y)), y] + 0.2 * logp[torch.arange(len(y)), pred])
    assert close(make("bootstrap-hard")(z, y), hard)
    agree = pred == y  # the hard target equals the label where the model agrees with it
    assert close(make("bootstrap-hard", beta=0.3)(z, y)[agree], ce(z, y)[agree])


# -- LDR-KL --------------------------------------------------------------------------------
def test_ldr_kl_lam1_no_margin_raw_logits_is_ce_minus_log_k():
    z, y = batch(seed=19)
    got = make("ldr-kl", lam=1.0, margin=0.0, normalize=False, softplus=False)(z, y)
    assert close(got, ce(z, y) - math.log(z.shape[1]))


def test_ldr_kl_limits_in_lambda():
    z, y = batch(seed=20)
    m = 0.3
    d = z - z[torch.arange(len(y)), y].unsqueeze(1) + m * (1 - F.one_hot(y, z.shape[1]).double())
    raw = {"normalize": False, "softplus": False, "margin": m}
    # lam -> 0: max_k d_k (Crammer-Singer with margin), within lam * log K
    small = make("ldr-kl", lam=1e-3, **raw)(z, y)
    assert torch.allclose(small, d.max(1).values, atol=1e-3 * math.log(z.shape[1]) + 1e-12)
    # lam -> inf: the mean margin
    big = make("ldr-kl", lam=1e5, **raw)(z, y)
    assert torch.allclose(big, d.mean(1), atol=1e-3)


def test_ldr_kl_default_transform_is_softplus_then_mean_normalisation():
    z, y = batch(seed=21)
    sp = F.softplus(z)
    zt = sp / sp.mean(1, keepdim=True)  # official LDRLoss_V1
    want = make("ldr-kl", lam=2.0, margin=0.1, normalize=False, softplus=False)(zt, y)
    assert close(make("ldr-kl", lam=2.0, margin=0.1)(z, y), want)


def test_ldr_kl_normalised_logits_make_the_loss_scale_invariant():
    z, y = batch(seed=22)
    loss = make("ldr-kl", lam=0.7, margin=0.2, normalize=True, softplus=False)
    assert close(loss(z, y), loss(7.3 * z, y), rtol=1e-10)
    raw = make("ldr-kl", lam=0.7, margin=0.2, normalize=False, softplus=False)
    assert not torch.allclose(raw(z, y), raw(7.3 * z, y))


def test_aldr_kl_with_huge_alpha_is_ldr_kl_at_lam0():
    z, y = batch(seed=23)
    aldr = make("aldr-kl", lam0=2.0, alpha=1e12, margin=0.1)
    ldr = make("ldr-kl", lam=2.0, margin=0.1, softplus=False)
    assert torch.allclose(aldr(z, y, torch.arange(len(y))), ldr(z, y), rtol=1e-9)


# -- robustness property (Ghosh et al. 2017) -------------------------------------------------
@pytest.mark.parametrize(
    "name,params,const",
    [
        ("mae", {}, lambda k: k - 1),
        ("mae", {"scale": 2.0}, lambda k: 2 * (k - 1)),
        ("rce", {}, lambda k: -LN_1E4 * (k - 1)),
        ("nce", {}, lambda k: 1.0),
        ("nfl", {"gamma": 0.5}, lambda k: 1.0),
        ("nfl", {"gamma": 2.0, "scale": 3.0}, lambda k: 3.0),
        ("ngce", {"q": 0.7}, lambda k: 1.0),
        ("comp-sum", {"tau": 2.0}, lambda k: k - 1),
    ],
)
def test_symmetric_losses_sum_to_a_constant_over_labels(name, params, const):
    for seed, k in [(30, 3), (31, 6), (32, 10)]:
        z, _ = batch(n=50, k=k, seed=seed, scale=1.0)
        loss = make(name, **params)
        total = sum(loss(z, torch.full((len(z),), j)) for j in range(k))
        assert torch.allclose(total, torch.full_like(total, float(const(k))), rtol=1e-10)


@pytest.mark.parametrize("name", ["ce", "gce", "focal", "comp-sum"])
def test_non_symmetric_losses_do_not_sum_to_a_constant(name):
    z, _ = batch(n=50, k=6, seed=33, scale=1.0)
    loss = make(name)
    total = sum(loss(z, torch.full((len(z),), j)) for j in range(6))
    assert float(total.max() - total.min()) > 0.1
