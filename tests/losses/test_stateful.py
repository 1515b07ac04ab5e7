"""The stateful-loss protocol: truncated Lq's weights and ALDR-KL's per-sample lambda."""

import io
import math

import pytest
import torch
import torch.nn.functional as F

from robustlab import losses
from robustlab.errors import ConfigError, InvalidInputError

STATEFUL = ["truncated-lq", "aldr-kl"]
N_TRAIN, K = 40, 5


def logits_for(step, idx, k=K, scale=2.0):
    """Deterministic 'model outputs' for a batch: depend on the step and the indices."""
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(len(idx), k, generator=g, dtype=torch.float64) * scale


def labels():
    return torch.randint(0, K, (N_TRAIN,), generator=torch.Generator().manual_seed(7))


def schedule(epochs=6, batch=8):
    """(epoch, batch indices) in training order, with a fixed per-epoch permutation."""
    out = []
    for e in range(epochs):
        order = torch.randperm(N_TRAIN, generator=torch.Generator().manual_seed(e))
        out += [(e, order[i : i + batch]) for i in range(0, N_TRAIN, batch)]
    return out


def make(name, **params):
    if name == "truncated-lq":
        params = {"prune_start": 2, "prune_every": 2, **params}  # refreshes at epochs 1, 3, 5
    return losses.create(name, reduction="none", **params)


def drive(loss, steps, y, start=0, last_epoch=None):
    """Feed ``steps`` to ``loss`` like ERM does; returns the per-step outputs."""
    outs = []
    for s, (e, idx) in enumerate(steps, start=start):
        if e != last_epoch:
            loss.start_epoch(e)
            last_epoch = e
        outs.append(loss(logits_for(s, idx), y[idx], idx))
    return outs, last_epoch


def test_needs_indices_is_true_exactly_for_the_stateful_losses():
    assert losses.Loss.needs_indices is False
    flagged = [n for n in losses.available() if losses.create(n).needs_indices]
    assert flagged == sorted(STATEFUL)


@pytest.mark.parametrize("name", STATEFUL)
def test_index_none_is_refused(name):
    z = torch.randn(4, K, dtype=torch.float64)
    y = torch.zeros(4, dtype=torch.long)
    with pytest.raises(ConfigError, match="index"):
        make(name)(z, y)


def test_stateless_losses_accept_and_ignore_an_index():
    z = torch.randn(4, K, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3])
    for name in losses.available():
        loss = losses.create(name, reduction="none")
        if loss.needs_indices:
            continue
        assert torch.equal(loss(z, y, torch.arange(4)), loss(z, y))
        loss.setup(10, K)  # no-ops
        loss.start_epoch(3)
        assert torch.equal(loss(z, y), losses.create(name, reduction="none")(z, y))


@pytest.mark.parametrize("name", STATEFUL)
def test_state_dict_round_trip_is_bit_identical_and_continues_identically(name):
    y = labels()
    steps = schedule()
    half = len(steps) // 2 + 2  # mid-way through epoch 3, a refresh epoch of truncated Lq
    assert steps[half][0] == steps[half - 1][0] == 3
    a, b = make(name), make(name)
    a.setup(N_TRAIN, K)
    b.setup(N_TRAIN, K)
    out_a, last = drive(a, steps[:half], y)
    out_b, _ = drive(b, steps[:half], y)
    assert all(torch.equal(u, v) for u, v in zip(out_a, out_b, strict=True))

    # save A mid-epoch through a real checkpoint round trip, restore into a fresh loss C
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    c = make(name)  # no setup: buffers are resized on load
    c.load_state_dict(torch.load(buf, weights_only=True))
    for key, val in a.state_dict().items():
        assert torch.equal(c.state_dict()[key], val) and c.state_dict()[key].dtype == val.dtype

    rest_a, _ = drive(a, steps[half:], y, start=half, last_epoch=last)
    # C resumes like a Trainer would: start_epoch is called again for the current epoch
    rest_c, _ = drive(c, steps[half:], y, start=half, last_epoch=None)
    rest_b, _ = drive(b, steps[half:], y, start=half, last_epoch=last)
    assert all(torch.equal(u, v) for u, v in zip(rest_a, rest_c, strict=True))
    assert all(torch.equal(u, v) for u, v in zip(rest_a, rest_b, strict=True))
    for key, val in a.state_dict().items():
        assert torch.equal(c.state_dict()[key], val)
    # the state actually changed during training (the test is not vacuous)
    fresh = make(name)
    fresh.setup(N_TRAIN, K)
    changed = [k for k, v in a.state_dict().items() if not torch.equal(v, fresh.state_dict()[k])]
    assert changed


@pytest.mark.parametrize("name", STATEFUL)
def test_setup_fixes_the_size_and_lazy_state_grows(name):
    z = torch.randn(3, K, dtype=torch.float64)
    y = torch.tensor([0, 1, 2])
    loss = make(name)
    loss.setup(10, K)
    with pytest.raises(InvalidInputError, match="num_samples=10"):
        loss(z, y, torch.tensor([0, 5, 10]))
    with pytest.raises(InvalidInputError, match="negative"):
        loss(z, y, torch.tensor([0, -1, 2]))
    lazy = make(name)
    assert lazy.num_samples == 0
    lazy(z, y, torch.tensor([0, 5, 17]))
    assert lazy.num_samples == 18
    with pytest.raises(InvalidInputError):
        lazy(z, y, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ConfigError, match="num_samples"):
        make(name).setup(0, K)


@pytest.mark.parametrize("name", STATEFUL)
def test_loading_a_smaller_lazy_state_after_setup_pads_it(name):
    z = torch.randn(3, K, dtype=torch.float64) * 3
    y = torch.tensor([0, 1, 2])
    lazy = make(name)
    lazy.start_epoch(1)
    lazy(z, y, torch.tensor([0, 5, 17]))
    full = make(name)
    full.setup(N_TRAIN, K)
    full.load_state_dict(lazy.state_dict())
    fresh = make(name)
    fresh.setup(N_TRAIN, K)
    for key, val in full.state_dict().items():
        if val.dim() == 1:
            assert val.shape == (N_TRAIN,)
            assert torch.equal(val[:18], lazy.state_dict()[key])
            assert torch.equal(val[18:], fresh.state_dict()[key][18:])
    full(z, y, torch.tensor([1, 20, N_TRAIN - 1]))  # the whole training set stays addressable


# -- truncated Lq -----------------------------------------------------------------------------
def lq(p, q):
    return (1 - p**q) / q


def test_truncated_lq_refresh_epochs_follow_the_reference_schedule():
    loss = losses.create("truncated-lq")
    assert [e for e in range(100) if loss.is_refresh_epoch(e)] == [39, 49, 59, 69, 79, 89, 99]
    loss = losses.create("truncated-lq", prune_start=80)
    assert [e for e in range(150) if loss.is_refresh_epoch(e)] == [
        79,
        89,
        99,
        109,
        119,
        129,
        139,
        149,
    ]


def test_truncated_lq_before_any_refresh_is_lq_minus_lq_k():
    z = torch.randn(8, K, dtype=torch.float64)
    y = torch.randint(0, K, (8,))
    loss = losses.create("truncated-lq", q=0.7, k=0.5, reduction="none")
    for e in range(39):
        loss.start_epoch(e)
    py = z.softmax(1)[torch.arange(8), y]
    assert torch.allclose(loss(z, y, torch.arange(8)), lq(py, 0.7) - lq(0.5, 0.7), rtol=1e-12)
    assert torch.equal(loss.weight, torch.ones(8))


def test_truncated_lq_online_refresh_at_first_visit_of_a_refresh_epoch():
    q, k = 0.7, 0.5
    loss = losses.create("truncated-lq", q=q, k=k, reduction="none")
    loss.setup(6, 3)
    idx = torch.arange(6)
    y = torch.zeros(6, dtype=torch.long)
    # p_y = 0.9, 0.2, 0.6, 0.4, 0.55, 0.1 via log-probabilities as logits
    py = torch.tensor([0.9, 0.2, 0.6, 0.4, 0.55, 0.1], dtype=torch.float64)
    z = torch.stack([py.log(), ((1 - py) / 2).log(), ((1 - py) / 2).log()], 1)
    loss.start_epoch(39)
    out = loss(z, y, idx)
    keep = (py > k).float()
    assert torch.equal(loss.weight, keep)
    assert torch.allclose(out, keep.double() * (lq(py, q) - lq(k, q)), rtol=1e-12)
    # later visits in the same epoch do not refresh, even with very different predictions
    out2 = loss(torch.zeros(6, 3, dtype=torch.float64), y, idx)
    assert torch.equal(loss.weight, keep)
    assert torch.allclose(out2, keep.double() * (lq(1 / 3, q) - lq(k, q)))
    loss.start_epoch(39)  # called again for the same epoch (resume): no second round
    loss(torch.zeros(6, 3, dtype=torch.float64), y, idx)
    assert torch.equal(loss.weight, keep)
    loss.start_epoch(40)  # not a refresh epoch
    loss(torch.zeros(6, 3, dtype=torch.float64), y, idx)
    assert torch.equal(loss.weight, keep)
    loss.start_epoch(49)  # the next refresh: uniform predictions p_y = 1/3 < k prune everything
    loss(torch.zeros(6, 3, dtype=torch.float64), y, idx)
    assert torch.equal(loss.weight, torch.zeros(6))


def test_truncated_lq_samples_first_seen_in_a_refresh_epoch_are_refreshed():
    loss = losses.create("truncated-lq", reduction="none")
    loss.start_epoch(39)
    z = torch.tensor([[-3.0, 3.0], [3.0, -3.0]], dtype=torch.float64)
    loss(z, torch.tensor([0, 0]), torch.tensor([4, 7]))  # lazily allocated during the round
    assert loss.weight[4] == 0 and loss.weight[7] == 1
    assert torch.equal(loss.weight[[0, 1, 2, 3, 5, 6]], torch.ones(6))  # never visited


def test_truncated_lq_full_pass_update_weights_like_the_reference():
    loss = losses.create("truncated-lq", reduction="none")
    loss.setup(4, 2)
    y = torch.tensor([0, 0, 1, 1])
    idx = torch.arange(4)
    loss.start_epoch(39)
    judge = torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.0, 2.0], [2.0, 0.0]], dtype=torch.float64)
    loss.update_weights(judge, y, idx)  # e.g. the best checkpoint's outputs, full pass
    assert torch.equal(loss.weight, torch.tensor([1.0, 0.0, 1.0, 0.0]))
    # the training visits of this round keep those weights
    loss(torch.zeros(4, 2, dtype=torch.float64), y, idx)
    assert torch.equal(loss.weight, torch.tensor([1.0, 0.0, 1.0, 0.0]))


# -- ALDR-KL ----------------------------------------------------------------------------------
def test_aldr_kl_lambda_update_matches_the_official_step():
    lam0, alpha, k = 10.0, 2.0, 4
    z = torch.tensor([[1.0, -2.0, 0.5, 3.0]], dtype=torch.float64)
    loss = losses.create("aldr-kl", lam0=lam0, alpha=alpha, margin=0.1, reduction="none")
    loss(z, torch.tensor([3]), torch.tensor([0]))
    # official ALDRLoss_V1 step, by hand: z / (||z||_1 / K), p = softmax(z/lam)+1e-5, L1-normalised
    l1 = sum(abs(v) for v in z[0].tolist()) / k
    zt = [v / l1 for v in z[0].tolist()]
    ex = [math.exp(v / lam0) for v in zt]
    p = [e / sum(ex) + 1e-5 for e in ex]
    p = [v / sum(p) for v in p]
    kl = sum(v * math.log(k * v) for v in p)
    want = lam0 - lam0 * kl / (alpha * math.log(k))
    assert math.isclose(float(loss.lam[0]), want, rel_tol=1e-6)  # stored in float32


def test_aldr_kl_lambda_properties_and_loss_value():
    lam0, alpha = 5.0, 3.0
    g = torch.Generator().manual_seed(3)
    z = torch.randn(12, K, generator=g, dtype=torch.float64) * 3
    z[0] = 0.0  # uniform prediction: KL = 0, lambda stays lam0
    z[1] = torch.tensor([40.0, 0, 0, 0, 0], dtype=torch.float64)  # confident
    z[2] = torch.tensor([0.1, 0, 0, 0, 0], dtype=torch.float64)  # almost uniform
    y = torch.randint(0, K, (12,), generator=g)
    loss = losses.create("aldr-kl", lam0=lam0, alpha=alpha, normalize=False, reduction="none")
    out = loss(z, y, torch.arange(12))
    lam = loss.lam.double()
    assert float(lam[0]) == pytest.approx(lam0, rel=1e-6)
    assert float(lam[1]) < float(lam[2]) < lam0
    assert bool((lam > lam0 * (1 - 1 / alpha)).all()) and bool((lam <= lam0).all())
    # value = LDR-KL at the stored per-sample lambda + the quadratic penalty
    for i in range(12):
        ldr = losses.create(
            "ldr-kl", lam=float(lam[i]), margin=0.1, normalize=False, softplus=False
        )
        pen = -alpha * math.log(K) / (2 * lam0) * (float(lam[i]) - lam0) ** 2
        assert float(out[i]) == pytest.approx(
            float(ldr(z[i : i + 1], y[i : i + 1])) + pen, rel=1e-10
        )
    # the next visit starts from the stored lambda (softmax(z / lam_i), not lam0)
    out_again = loss(z, y, torch.arange(12))
    lam2 = loss.lam.double()
    assert not torch.equal(lam, lam2) and float(lam2[0]) == pytest.approx(lam0, rel=1e-6)
    assert out_again.shape == out.shape


def test_aldr_kl_uses_softplus_when_asked():
    z = torch.randn(5, K, dtype=torch.float64)
    y = torch.randint(0, K, (5,))
    a = losses.create("aldr-kl", softplus=True, reduction="none")
    b = losses.create("aldr-kl", softplus=False, reduction="none")
    assert torch.allclose(
        a(z, y, torch.arange(5)), b(F.softplus(z), y, torch.arange(5)), rtol=1e-12
    )
