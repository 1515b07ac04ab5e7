"""Gradients: torch.autograd.gradcheck (float64) for every registered loss, and closed-form
gradients for the variants that stop gradients on purpose (APL's detached focal factors,
the pseudo-label bootstrap, ALDR-KL's lambda)."""

import pytest
import torch

from robustlab import losses

N, K = 6, 4


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(N, K, generator=g, dtype=torch.float64) * 1.5
    y = torch.randint(0, K, (N,), generator=g)
    p = z.softmax(1)
    assert float(p.min()) > 1e-4  # far from the 1e-7 clamps
    top2 = p.topk(2, dim=1).values
    assert float((top2[:, 0] - top2[:, 1]).min()) > 1e-3  # no argmax ties (hard bootstrap)
    return z.requires_grad_(True), y


def exact_function(name, y):
    """The function whose gradient autograd must reproduce, for a registered loss.

    Losses with a ``detach`` switch are checked with ``detach=False`` here (their detached
    gradients are checked against closed forms below); ALDR-KL is checked at a fixed
    lambda; stateful losses get dataset indices.
    """
    params = {}
    probe = losses.create(name, reduction="none")
    if "detach" in probe.get_params():
        params["detach"] = False
    loss = losses.create(name, reduction="none", **params)
    if name == "aldr-kl":
        lam = torch.linspace(2.0, 6.0, N, dtype=torch.float64)
        return lambda t: loss.loss_at_lambda(t, y, lam)
    idx = torch.arange(N)
    if loss.needs_indices:
        return lambda t: loss(t, y, idx)
    return lambda t: loss(t, y)


@pytest.mark.parametrize("name", losses.available())
def test_gradcheck_every_loss(name):
    for seed in (0, 1):
        z, y = batch(seed)
        assert torch.autograd.gradcheck(
            exact_function(name, y), (z,), eps=1e-6, atol=1e-7, rtol=1e-5
        )


def test_gradcheck_truncated_lq_after_a_refresh_prunes_some_samples():
    z, y = batch(2)
    loss = losses.create("truncated-lq", reduction="none", k=0.3)
    idx = torch.arange(N)
    loss.start_epoch(39)  # a refresh epoch with the default schedule
    loss(z.detach(), y, idx)  # the first visit refreshes the weights
    w = loss.weight.clone()
    assert 0 < float(w.sum()) < N  # some samples pruned, some kept
    assert torch.autograd.gradcheck(lambda t: loss(t, y, idx), (z,))
    assert torch.equal(loss.weight, w)  # no second refresh in the same round
    (g,) = torch.autograd.grad(loss(z, y, idx).sum(), z)
    assert torch.equal(g[w == 0], torch.zeros_like(g[w == 0]))  # pruned samples get no gradient


def _grad(fn, z):
    (g,) = torch.autograd.grad(fn(z).sum(), z)
    return g


def test_focal_detached_gradient_closed_form():
    z, y = batch(3)
    gamma = 0.5
    loss = losses.create("focal", gamma=gamma, detach=True, reduction="none")
    p = z.detach().softmax(1)
    e = torch.nn.functional.one_hot(y, K).double()
    py = p[torch.arange(N), y]
    want = ((1 - py) ** gamma).unsqueeze(1) * (p - e)  # w * grad(CE), w constant
    assert torch.allclose(_grad(lambda t: loss(t, y), z), want, rtol=1e-10, atol=1e-12)


def _nfl_detached_grad(z, y, gamma):
    """d/dz of w_y (-log p_y) / sum_k w_k (-log p_k) with w_k = (1 - p_k)^gamma held constant."""
    p = z.detach().softmax(1)
    logp = p.log()
    e = torch.nn.functional.one_hot(y, K).double()
    w = (1 - p) ** gamma
    s = (w * -logp).sum(1, keepdim=True)
    wy = w[torch.arange(N), y].unsqueeze(1)
    num = wy * (-logp[torch.arange(N), y]).unsqueeze(1)
    # d(-log p_k)/dz = p - e_k
    d_num = wy * (p - e)
    d_s = w.sum(1, keepdim=True) * p - w
    return (d_num * s - num * d_s) / s**2


def test_nfl_detached_gradient_closed_form():
    z, y = batch(4)
    loss = losses.create("nfl", gamma=0.5, reduction="none")  # detach=True by default
    assert loss.detach is True
    assert torch.allclose(
        _grad(lambda t: loss(t, y), z), _nfl_detached_grad(z, y, 0.5), rtol=1e-9, atol=1e-12
    )


@pytest.mark.parametrize("name,passive", [("nfl+rce", "rce"), ("nfl+mae", "mae")])
def test_nfl_pairs_detached_gradient(name, passive):
    z, y = batch(5)
    loss = losses.create(name, alpha=0.7, beta=1.9, gamma=0.5, reduction="none")
    passive_loss = losses.create(passive, reduction="none")
    want = 0.7 * _nfl_detached_grad(z, y, 0.5) + 1.9 * _grad(lambda t: passive_loss(t, y), z)
    assert torch.allclose(_grad(lambda t: loss(t, y), z), want, rtol=1e-9, atol=1e-12)


def test_bootstrap_soft_pseudo_label_gradient_closed_form():
    z, y = batch(6)
    beta = 0.9
    loss = losses.create("bootstrap-soft", beta=beta, detach_target=True, reduction="none")
    p = z.detach().softmax(1)
    e = torch.nn.functional.one_hot(y, K).double()
    # -sum_k t_k log p_k with constant t = beta e + (1 - beta) p has gradient p - t
    want = p - (beta * e + (1 - beta) * p)
    assert torch.allclose(_grad(lambda t: loss(t, y), z), want, rtol=1e-10, atol=1e-12)


def test_aldr_kl_gradient_is_the_gradient_at_the_stored_lambda():
    z, y = batch(7)
    loss = losses.create("aldr-kl", lam0=3.0, alpha=2.0, reduction="none")
    idx = torch.arange(N)
    loss(z.detach(), y, idx)  # move lambda away from lam0 first
    before = loss.lam.clone()
    g = _grad(lambda t: loss(t, y, idx), z)
    lam_now = loss.lam.clone()
    assert not torch.equal(before, lam_now)  # the forward updated lambda
    ref = losses.create("aldr-kl", lam0=3.0, alpha=2.0, reduction="none")
    want = _grad(lambda t: ref.loss_at_lambda(t, y, lam_now), z)
    assert torch.allclose(g, want, rtol=1e-12, atol=1e-14)
    assert torch.autograd.gradcheck(lambda t: ref.loss_at_lambda(t, y, lam_now.double()), (z,))
