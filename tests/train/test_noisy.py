"""Stateful noisy-label objectives: ELR, PS-KD, Co-teaching (and ALDR-KL through ERM)."""

import math

import numpy as np
import pytest
import torch
from torch import nn

import robustlab.train.noisy  # noqa: F401  (registers the objectives)
from robustlab.data.base import Dataset
from robustlab.errors import ConfigError, InvalidInputError
from robustlab.losses import Loss
from robustlab.train import ERM, Trainer, create
from robustlab.train.noisy import ELR, ELR_PRESETS, PSKD, CoTeaching


def blobs(n=120, d=6, k=3, seed=0, noise=0.25):
    g = torch.Generator().manual_seed(seed)
    centers = torch.rand(k, d, generator=g)
    y = torch.arange(n) % k
    x = (centers[y] + 0.08 * torch.randn(n, d, generator=g)).clamp(0, 1)
    flip = torch.rand(n, generator=g) < noise
    noisy = torch.where(flip, (y + 1) % k, y)
    return Dataset(x=x, y=noisy, num_classes=k, name="blobs", clean_y=y)


class Net(nn.Module):
    def __init__(self, d=6, k=3):
        super().__init__()
        self.input_shape = (d,)
        self.num_classes = k
        self.body = nn.Sequential(nn.Linear(d, 16), nn.ReLU(), nn.Linear(16, k))

    def forward(self, x):
        return self.body(x)


def fresh(seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Net()


def weights(m):
    return torch.cat([p.detach().flatten() for p in m.state_dict().values()])


def gen():
    return torch.Generator().manual_seed(0)


def softmax_np(z):
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


# -- ELR ------------------------------------------------------------------------------------
def test_elr_target_ema_and_loss_match_a_hand_computation_over_two_steps():
    beta, lam = 0.7, 3.0
    obj = ELR(beta=beta, lam=lam)
    obj.setup(4, 3)
    ident = nn.Identity()  # the "model" returns the logits it is given
    z1 = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    z2 = torch.tensor([[-1.0, 1.0, 0.0], [12.0, 0.0, 0.0]])  # p of the 2nd row gets clamped
    y1, y2 = torch.tensor([0, 1]), torch.tensor([2, 0])
    idx1, idx2 = torch.tensor([0, 2]), torch.tensor([2, 3])

    def clamp_norm(z):
        p = np.clip(softmax_np(z), 1e-4, 1 - 1e-4)
        return p, p / p.sum(1, keepdims=True)

    t = np.zeros((4, 3))
    for z, y, idx in ((z1, y1, idx1), (z2, y2, idx2)):
        loss, _ = obj.loss(ident, z, y, idx)
        p, pn = clamp_norm(z.numpy())
        t[idx.numpy()] = beta * t[idx.numpy()] + (1 - beta) * pn
        ce = -np.log(softmax_np(z.numpy())[np.arange(2), y.numpy()])
        want = ce + lam * np.log(1 - (t[idx.numpy()] * p).sum(1))
        np.testing.assert_allclose(loss.detach().numpy(), want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(obj.target.numpy(), t, rtol=1e-6, atol=1e-7)
    # sample 2 was updated twice: 0.7 * (0.3 * a) + 0.3 * b; sample 1 never (zeros)
    assert np.all(obj.target[1].numpy() == 0)
    assert not obj.target.requires_grad


def test_elr_regulariser_gradient_flows_through_p_only():
    obj = ELR(beta=0.0, lam=1.0)  # beta 0: target = current (clamped, normalised) p
    obj.setup(1, 3)
    z = torch.tensor([[1.0, 0.0, -1.0]], requires_grad=True)
    loss, _ = obj.loss(nn.Identity(), z, torch.tensor([0]), torch.tensor([0]))
    loss.sum().backward()
    # closed form: d/dz [CE + log(1 - <p, t>)] with t = p fixed
    p = torch.softmax(z.detach(), 1)
    s = (p * p).sum()
    dreg_dp = -p / (1 - s)
    jac = torch.diag(p[0]) - p[0][:, None] * p[0][None, :]
    want = (p[0] - torch.tensor([1.0, 0, 0])) + jac @ dreg_dp[0]
    assert torch.allclose(z.grad[0], want, atol=1e-6)


def test_elr_presets_are_the_official_configs():
    assert ELR_PRESETS["cifar10"] == {"beta": 0.7, "lam": 3.0}
    assert ELR_PRESETS["cifar100"] == {"beta": 0.9, "lam": 7.0}
    o = create("elr", preset="cifar100")
    assert (o.beta, o.lam) == (0.9, 7.0)
    o = create("elr", preset="cifar100", lam=5)
    assert (o.beta, o.lam) == (0.9, 5.0)
    assert (ELR().beta, ELR().lam) == (0.7, 3.0)


def test_elr_composes_with_a_base_loss():
    obj = ELR("label_smoothing", smoothing=0.2, beta=0.5, lam=0.0)
    obj.setup(2, 3)
    z = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 5.0]])
    y = torch.tensor([0, 2])
    loss, _ = obj.loss(nn.Identity(), z, y, torch.tensor([0, 1]))
    want = nn.functional.cross_entropy(z, y, reduction="none", label_smoothing=0.2)
    assert torch.allclose(loss, want)  # lam = 0: the base loss alone
    assert obj.get_params()["loss"] == "label_smoothing"


# -- PS-KD ----------------------------------------------------------------------------------
def test_pskd_targets_mix_previous_epoch_predictions_with_alpha_t():
    torch.manual_seed(0)
    ds = blobs(n=12)
    model = fresh(3)
    obj = PSKD(alpha=0.8)
    obj.check_training(4)
    obj.setup(len(ds), 3)
    idx = torch.arange(12)
    # epoch 0: the targets are the one-hot labels: the loss is plain CE
    obj.start_epoch(0, gen())
    loss0, _ = obj.loss(model, ds.x, ds.y, idx)
    assert torch.allclose(loss0, nn.functional.cross_entropy(model(ds.x), ds.y, reduction="none"))
    p0 = torch.softmax(model(ds.x), 1).detach()
    assert torch.allclose(obj.predictions, p0)
    stored0 = obj.predictions.clone()
    with torch.no_grad():  # the model changes between epochs
        for p in model.parameters():
            p.add_(0.3)
    for epoch in (1, 3):
        obj.start_epoch(epoch, gen())
        a = 0.8 * (epoch + 1) / 4
        assert obj.alpha_at(epoch) == pytest.approx(a)
        sub = torch.tensor([5, 0, 7])
        prev = obj.predictions[sub].clone()
        loss, _ = obj.loss(model, ds.x[sub], ds.y[sub], sub)
        q = (1 - a) * nn.functional.one_hot(ds.y[sub], 3).float() + a * prev
        want = -(q * torch.log_softmax(model(ds.x[sub]), 1)).sum(1)
        assert torch.allclose(loss, want, atol=1e-6)
        # the stored predictions become this epoch's, for these samples only
        assert torch.allclose(obj.predictions[sub], torch.softmax(model(ds.x[sub]), 1).detach())
        others = torch.tensor([i for i in range(12) if i not in (0, 5, 7)])
        assert torch.equal(obj.predictions[others], stored0[others])
    assert PSKD(alpha=0.8).alpha == 0.8


# -- Co-teaching ----------------------------------------------------------------------------
def test_coteaching_forget_schedule_and_kept_count():
    obj = CoTeaching(forget_rate=0.5, num_gradual=4)
    # tau_t = 0.5 * min(t / 4, 1); kept = floor((1 - tau_t) * 10)
    assert [obj.num_remember(10, t) for t in range(7)] == [10, 8, 7, 6, 5, 5, 5]
    obj2 = CoTeaching(forget_rate=0.2)  # official T_k = 10
    for t in range(15):
        tau_t = 0.2 * min(t / 10, 1.0)
        assert obj2.forget_rate_at(t) == pytest.approx(tau_t)
        for b in (1, 7, 64, 100, 125, 128):
            # the official count: num_remember = int(remember_rate * len(loss_sorted))
            assert obj2.num_remember(b, t) == math.floor((1 - tau_t) * b)
    # evaluated in floating point like the official code: (1 - 0.08) * 125 = 114.999...
    assert obj2.num_remember(125, 4) == 114
    sq = CoTeaching(forget_rate=0.4, num_gradual=10, exponent=2.0)
    assert sq.forget_rate_at(5) == pytest.approx(0.4 * 0.25)
    assert CoTeaching(forget_rate=0.3, num_gradual=0).forget_rate_at(0) == pytest.approx(0.3)


def test_coteaching_selection_keeps_exactly_floor_of_batch_across_epochs():
    ds = blobs(n=128, noise=0.3)
    obj = CoTeaching(forget_rate=0.35, num_gradual=5)
    model = fresh(0)
    obj.bind(model, seed=0)
    for t in range(8):
        obj.start_epoch(t, gen())
        for b in (128, 100, 33, 5, 1):
            _, m = obj.loss(model, ds.x[:b], ds.y[:b], torch.arange(b))
            tau_t = 0.35 * min(t / 5, 1.0)
            assert int(m["selected"].sum()) == int((1 - tau_t) * b)


def test_coteaching_each_network_learns_only_from_its_peers_small_loss_samples():
    ds = blobs(n=40, noise=0.3, seed=2)
    model = fresh(1)
    obj = CoTeaching(forget_rate=0.5, num_gradual=0)
    obj.bind(model, seed=7)
    peer = obj.peer
    assert not torch.equal(weights(peer), weights(model))  # re-initialised, not a clone
    x, y = ds.x, ds.y
    ce = nn.functional.cross_entropy
    with torch.no_grad():
        small_f = set(torch.argsort(ce(model(x), y, reduction="none"))[:20].tolist())
        small_g = set(torch.argsort(ce(peer(x), y, reduction="none"))[:20].tolist())
    assert small_f != small_g  # the batch discriminates "own" from "peer's" selection
    per_sample, _ = obj.loss(model, x, y, torch.arange(40))
    per_sample.mean().backward()
    got_f = [p.grad.clone() for p in model.parameters()]
    got_g = [p.grad.clone() for p in peer.parameters()]
    for net, chosen, got in ((model, small_g, got_f), (peer, small_f, got_g)):
        net.zero_grad()
        sel = torch.tensor(sorted(chosen))
        ce(net(x[sel]), y[sel]).backward()  # mean over the 20 samples the peer kept
        for a, b in zip(got, [p.grad for p in net.parameters()], strict=True):
            assert torch.allclose(a, b, atol=1e-6)


def test_coteaching_peer_is_seeded_and_global_rng_untouched():
    model = fresh(0)
    a, b, c = CoTeaching(forget_rate=0.2), CoTeaching(forget_rate=0.2), CoTeaching(forget_rate=0.2)
    state = torch.get_rng_state()
    a.bind(model, seed=3)
    b.bind(model, seed=3)
    c.bind(model, seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(weights(a.peer), weights(b.peer))
    assert not torch.equal(weights(a.peer), weights(c.peer))
    assert a.trainable_modules() == [a.peer]


def test_coteaching_trains_both_networks_and_beats_ce_under_noise():
    ds = blobs(n=240, noise=0.3, seed=1)  # 30% of labels flipped y -> y + 1
    kw = dict(epochs=15, batch_size=32, lr=0.1, progress=False)
    ce_model = fresh(0)
    Trainer(ce_model, ERM(), **kw).fit(ds)
    model = fresh(0)
    obj = CoTeaching(forget_rate=0.3, num_gradual=2)
    obj.bind(model, seed=0)
    peer_before = weights(obj.peer).clone()
    Trainer(model, obj, **kw).fit(ds)
    assert not torch.equal(peer_before, weights(obj.peer))  # the peer was optimised too

    def clean_acc(m):
        return float((m(ds.x).argmax(1) == ds.clean_y).float().mean())

    # measured: co-teaching 0.992, CE 0.954 (accuracy against the clean labels)
    assert clean_acc(model) > 0.97
    assert clean_acc(model) > clean_acc(ce_model)


# -- checkpoint / resume --------------------------------------------------------------------
def _resume_case(tmp_path, make_objective, bind=False, epochs=4, stop=2):
    ds = blobs(n=96, noise=0.3)
    kw = dict(epochs=epochs, batch_size=32, lr=0.1, seed=5, progress=False)

    def run(obj, model, **extra):
        if bind:
            obj.bind(model, seed=kw["seed"])
        return Trainer(model, obj, **kw, **extra)

    full_obj, full_model = make_objective(), fresh(0)
    run(full_obj, full_model).fit(ds)

    class Stop(Exception):
        pass

    def die(trainer, record):
        if record["epoch"] == stop:
            raise Stop

    cut_obj, cut_model = make_objective(), fresh(0)
    with pytest.raises(Stop):
        run(cut_obj, cut_model, checkpoint_dir=tmp_path, callbacks=[die]).fit(ds)
    res_obj, res_model = make_objective(), fresh(123)  # everything must come from the checkpoint
    t = run(res_obj, res_model, checkpoint_dir=tmp_path)
    t.fit(ds)
    assert t.resumed_from_epoch == stop
    assert torch.equal(weights(full_model), weights(res_model))
    return full_obj, res_obj


def _assert_same_state(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same_state(a[k], b[k])
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    else:
        assert a == b


def test_elr_state_survives_checkpoint_and_resume_bit_identically(tmp_path):
    full, res = _resume_case(tmp_path, lambda: ELR(beta=0.7, lam=3.0))
    assert full.target.abs().sum() > 0
    _assert_same_state(full.state_dict(), res.state_dict())


def test_pskd_state_survives_checkpoint_and_resume_bit_identically(tmp_path):
    full, res = _resume_case(tmp_path, lambda: PSKD(alpha=0.8))
    assert full.predictions.sum(1).allclose(torch.ones(96))
    _assert_same_state(full.state_dict(), res.state_dict())


def test_coteaching_peer_survives_checkpoint_and_resume_bit_identically(tmp_path):
    full, res = _resume_case(tmp_path, lambda: CoTeaching(forget_rate=0.3, num_gradual=2), bind=True)
    _assert_same_state(full.state_dict(), res.state_dict())


def test_erm_aldr_kl_state_survives_checkpoint_and_resume_bit_identically(tmp_path):
    full, res = _resume_case(tmp_path, lambda: ERM("aldr-kl"))
    assert full.needs_indices  # a stateful loss: its per-sample lambdas moved and are checkpointed
    state = [v for v in full.state_dict()["criterion"].values() if isinstance(v, torch.Tensor) and v.numel() > 1]
    assert state and any(not torch.all(v == v.flatten()[0]) for v in state)
    _assert_same_state(full.state_dict(), res.state_dict())


# -- refusals -------------------------------------------------------------------------------
@pytest.mark.parametrize("obj", [ELR(), PSKD()])
def test_per_sample_state_needs_indices(obj):
    obj.setup(4, 3)
    with pytest.raises(ConfigError, match="needs dataset indices"):
        obj.loss(fresh(), torch.rand(2, 6), torch.tensor([0, 1]), None)
    with pytest.raises(InvalidInputError, match="outside the training set"):
        obj.loss(fresh(), torch.rand(2, 6), torch.tensor([0, 1]), torch.tensor([0, 4]))
    assert obj.needs_indices


def test_state_before_setup_refused():
    with pytest.raises(ConfigError, match="setup"):
        ELR().loss(fresh(), torch.rand(2, 6), torch.tensor([0, 1]), torch.tensor([0, 1]))


@pytest.mark.parametrize(
    "name, params, match",
    [
        ("elr", {"beta": 1.0}, "beta"),
        ("elr", {"beta": -0.1}, "beta"),
        ("elr", {"lam": -1}, "lam"),
        ("elr", {"lam": float("nan")}, "lam"),
        ("elr", {"preset": "cifar1000"}, "cifar100"),
        ("ps-kd", {"alpha": 1.5}, "alpha"),
        ("ps-kd", {"alpha": "0.5"}, "alpha"),
        ("co-teaching", {}, "forget_rate"),
        ("co-teaching", {"forget_rate": 1.0}, "forget_rate"),
        ("co-teaching", {"forget_rate": -0.1}, "forget_rate"),
        ("co-teaching", {"forget_rate": 0.2, "num_gradual": -1}, "num_gradual"),
        ("co-teaching", {"forget_rate": 0.2, "num_gradual": 2.5}, "num_gradual"),
        ("co-teaching", {"forget_rate": 0.2, "exponent": 0}, "exponent"),
        ("co-teaching", {"forget_rat": 0.2}, "forget_rate"),
    ],
)
def test_bad_parameters_refused_in_the_constructor(name, params, match):
    with pytest.raises(ConfigError, match=match):
        create(name, **params)


def test_unknown_base_loss_refused():
    from robustlab.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="nope"):
        ELR("nope")
    with pytest.raises(UnknownNameError, match="nope"):
        CoTeaching(forget_rate=0.2, loss="nope")


def test_misspelt_parameters_next_to_a_loss_instance_are_named():
    from robustlab.losses import create as create_loss

    ce = create_loss("ce", reduction="none")
    with pytest.raises(ConfigError, match="'betta'.*Did you mean 'beta'"):
        create("elr", loss=ce, betta=0.9)
    with pytest.raises(ConfigError, match="'forget'.*Did you mean 'forget_rate'"):
        CoTeaching(0.2, loss=ce, forget=0.3)


def test_coteaching_refuses_stateful_losses_and_a_missing_peer():
    class Stateful(Loss):
        needs_indices = True

        def per_sample(self, logits, target):
            return nn.functional.cross_entropy(logits, target, reduction="none")

    with pytest.raises(ConfigError, match="stateful"):
        CoTeaching(forget_rate=0.2, loss=Stateful("none"))
    unbound = CoTeaching(forget_rate=0.2)
    with pytest.raises(ConfigError, match="bind"):
        unbound.setup(10, 3)
    with pytest.raises(ConfigError, match="bind"):
        unbound.loss(fresh(), torch.rand(2, 6), torch.tensor([0, 1]), None)
    assert unbound.trainable_modules() == []


def test_trainer_binds_the_peer_when_it_calls_objective_bind():
    ds = blobs(n=64)
    a, b = CoTeaching(forget_rate=0.2), CoTeaching(forget_rate=0.2)
    ma, mb = fresh(0), fresh(0)
    b.bind(mb, seed=9)  # by hand, with the Trainer's seed: the same run
    Trainer(ma, a, epochs=2, batch_size=32, seed=9, progress=False).fit(ds)
    Trainer(mb, b, epochs=2, batch_size=32, seed=9, progress=False).fit(ds)
    assert torch.equal(weights(ma), weights(mb)) and torch.equal(weights(a.peer), weights(b.peer))


def test_registered_names():
    from robustlab.train import available

    assert {"elr", "ps-kd", "co-teaching"} <= set(available())
    assert isinstance(create("pskd"), PSKD) and isinstance(create("coteaching", forget_rate=0.1), CoTeaching)
