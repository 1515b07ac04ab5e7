"""Training objectives for randomized smoothing (gaussian, smoothadv, consistency) and the
soft smoothed classifier they attack: equalities with ERM and with hand-computed formulas,
noise drawn only from the objective's generator, the SmoothAdv attack inside the current
L2 ball and in eval mode, the official warm-up schedule, config round trips, and a short
training run where Gaussian augmentation beats ERM under noise."""

import math
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlab import attacks
from robustlab.attacks import ThreatModel
from robustlab.attacks.base import ProbabilityOutputWarning
from robustlab.certify.soft import SoftSmoothed, log_mean_softmax, noisy_copies, standard_noise
from robustlab.errors import ConfigError, InvalidInputError
from robustlab.experiments import make_config
from robustlab.experiments.runner import validate_config
from robustlab.train import (
    ERM,
    ConsistencyRegularization,
    GaussianAugmentation,
    SmoothAdv,
    Trainer,
    create,
)
from robustlab.train.smoothing import consistency_terms

sys.path.insert(0, str(Path(__file__).parent))
from helpers import Net, blobs  # noqa: E402

torch.set_num_threads(1)

NAMES = ("gaussian", "smoothadv", "consistency")
KW = dict(epochs=20, batch_size=32, lr=0.1, progress=False, schedule="constant", seed=0)


def data(n=48, seed=0):
    ds = blobs(n=n, seed=seed)
    return ds.x, ds.y


def net(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return Net(dropout=0.0).to(dtype)


def started(obj, seed=0):
    obj.start_epoch(0, torch.Generator().manual_seed(seed))
    return obj


class Recorder(nn.Module):
    """A linear model that records every input batch and the mode it was called in."""

    def __init__(self, d=6, k=3):
        super().__init__()
        self.input_shape = (d,)
        self.num_classes = k
        self.lin = nn.Linear(d, k)
        self.calls = []

    def forward(self, x):
        self.calls.append((x.detach().clone(), self.training))
        return self.lin(x)


# -- registry and configs ------------------------------------------------------------------
def test_registry_builds_each_by_name_with_the_documented_defaults_and_round_trips():
    g, s, c = (create(n) for n in NAMES)
    assert isinstance(g, GaussianAugmentation) and g.sigma == 0.25 and g.loss_name == "ce"
    assert isinstance(s, SmoothAdv) and (s.sigma, s.threat.norm, s.threat.eps, s.steps, s.m) == (0.25, "l2", 0.25, 10, 1)
    assert s.rel_step == pytest.approx(2 / 10) and s.attack.random_start is False and s.bn_mode == "eval"
    assert s.eps_warmup == 0.0 and s.ramp_epochs() == 0.0
    assert isinstance(c, ConsistencyRegularization) and (c.sigma, c.m, c.lam, c.eta) == (0.25, 2, 20.0, 0.5)
    for name, obj in zip(NAMES, (g, s, c)):
        again = create(name, **obj.get_params())
        assert type(again) is type(obj) and again.get_params() == obj.get_params()
    custom = create("smoothadv", sigma=0.5, eps="64/256", steps=4, m=3, eps_warmup=2)
    assert create("smoothadv", **custom.get_params()).get_params() == custom.get_params()
    assert custom.rel_step == pytest.approx(0.5)  # 2 / steps
    gce = create("gaussian", sigma=0.12, loss="gce", loss_params={"q": 0.7})
    assert create("gaussian", **gce.get_params()).criterion.q == pytest.approx(0.7)


@pytest.mark.parametrize(
    "name, params",
    [("gaussian", "{sigma: 0.5}"), ("smoothadv", "{sigma: 0.25, eps: 64/256, steps: 2, m: 2, eps_warmup: 2}"),
     ("consistency", "{sigma: 0.5, m: 2, lam: 10, eta: 0.5}")],
)
def test_the_config_schema_accepts_each_objective(name, params):
    cfg = make_config({}, ["train.epochs=2", f"train.objective={name}", f"train.objective_params={params}"])
    validate_config(cfg)  # builds the objective and a Trainer from the config
    assert cfg.train.objective == name


def test_a_warmup_longer_than_training_is_refused_by_the_config():
    cfg = make_config({}, ["train.epochs=2", "train.objective=smoothadv", "train.objective_params={eps_warmup: 3}"])
    with pytest.raises(ConfigError, match="warm-up lasts 3 epochs but training has only 2"):
        validate_config(cfg)


@pytest.mark.parametrize(
    "name, kw, match",
    [
        ("gaussian", dict(sigma=-0.1), "sigma"),
        ("smoothadv", dict(sigma=float("nan")), "sigma"),
        ("smoothadv", dict(m=0), "m must be an integer >= 1"),
        ("consistency", dict(m=1), "m >= 2 noisy copies"),
        ("consistency", dict(lam=-1.0), "lam"),
        ("consistency", dict(eta=True), "eta"),
    ],
)
def test_bad_settings_are_refused_naming_the_parameter(name, kw, match):
    with pytest.raises(ConfigError, match=match):
        create(name, **kw)


def test_objectives_without_a_generator_say_what_to_call():
    x, y = data(8)
    for name in NAMES:
        with pytest.raises(ConfigError, match="start_epoch"):
            create(name).loss(net(), x, y, None)


# -- gaussian --------------------------------------------------------------------------------
def test_gaussian_with_sigma_zero_is_erm_exactly():
    x, y = data()
    model = net()
    per, met = started(GaussianAugmentation(sigma=0.0)).loss(model, x, y, None)
    ref, ref_met = ERM("ce").loss(model, x, y, None)
    assert torch.equal(per, ref) and torch.equal(met["accuracy"], ref_met["accuracy"])


def test_gaussian_noise_is_sigma_times_the_generators_normals_and_ignores_the_global_rng():
    x, y = data(32)
    seen = []
    for global_seed in (1, 2):
        model = Recorder()
        torch.manual_seed(global_seed)
        before = torch.get_rng_state()
        obj = started(GaussianAugmentation(sigma=0.5), seed=7)
        obj.loss(model, x, y, None)
        obj.loss(model, x, y, None)  # the next batch, same epoch generator
        assert torch.equal(torch.get_rng_state(), before)  # the global RNG was not consumed
        first, second = (model.calls[0][0] - x, model.calls[1][0] - x)
        seen.append((first, second))
    g = torch.Generator().manual_seed(7)
    expected = 0.5 * torch.randn((1, *x.shape), generator=g)[0]
    torch.testing.assert_close(seen[0][0], expected, rtol=0, atol=1e-6)
    assert torch.equal(seen[0][0], seen[1][0]) and torch.equal(seen[0][1], seen[1][1])  # same generator, same noise
    assert (seen[0][0] - seen[0][1]).abs().min() > 0  # fresh noise for the next batch
    assert (model.calls[0][0] < 0).any()  # the noisy input is not clipped to [0, 1]


# -- the soft smoothed classifier ------------------------------------------------------------
def test_soft_smoothed_is_the_log_of_the_mean_softmax_over_the_noisy_copies():
    x, y = data(10)
    model = net(dtype=torch.float64)
    x = x.double()
    m, sigma = 4, 0.3
    z = torch.randn((m, *x.shape), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    soft = SoftSmoothed(model, sigma, noise=z)
    out = soft(x)
    with torch.no_grad():
        probs = torch.stack([F.softmax(model(x + sigma * z[i]), dim=1) for i in range(m)])
    hand = probs.mean(0).log()
    torch.testing.assert_close(out.detach(), hand, rtol=0, atol=1e-12)
    # cross-entropy on the output is -log of the mean probability of the label
    ce = F.cross_entropy(out, y, reduction="none").detach()
    torch.testing.assert_close(ce, -probs.mean(0).gather(1, y[:, None]).squeeze(1).log(), rtol=0, atol=1e-12)
    assert soft.m == m and soft.num_classes == 3 and soft.input_shape == (6,)
    # one noise set shared by every row equals that set repeated per row, for any rows
    shared = z[:, :1]
    sub = SoftSmoothed(model, sigma, noise=shared)(x[3:7])
    full = SoftSmoothed(model, sigma, noise=shared.expand(m, 4, 6))(x[3:7])
    torch.testing.assert_close(sub, full, rtol=0, atol=1e-12)


def test_soft_smoothed_with_fresh_noise_is_reproducible_per_generator_and_refuses_bad_noise():
    x, _ = data(6)
    model = net()
    a = SoftSmoothed(model, 0.25, m=3, generator=torch.Generator().manual_seed(0))
    b = SoftSmoothed(model, 0.25, m=3, generator=torch.Generator().manual_seed(0))
    first = a(x)
    assert torch.equal(first, b(x)) and not torch.equal(first, a(x))  # fresh draws per forward
    z = standard_noise(x, 3, torch.Generator().manual_seed(0))
    torch.testing.assert_close(first, SoftSmoothed(model, 0.25, noise=z)(x), rtol=0, atol=0)
    with pytest.raises(ConfigError, match="generator"):
        SoftSmoothed(model, 0.25)
    with pytest.raises(ConfigError, match="m=2 but the fixed noise holds 3"):
        SoftSmoothed(model, 0.25, m=2, noise=z)
    with pytest.raises(InvalidInputError, match="per-row noise only fits the batch"):
        SoftSmoothed(model, 0.25, noise=z)(x[:4])


def test_the_evaluation_attack_runs_on_soft_smoothed_with_shared_noise():
    x, y = data(30)
    model = net()
    Trainer(model, ERM("ce"), **{**KW, "epochs": 5}).fit(blobs(n=60, seed=0))
    soft = SoftSmoothed(model, 0.25, noise=standard_noise(x[:1], 8, torch.Generator().manual_seed(4)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ProbabilityOutputWarning)  # log-probabilities are not flagged
        res = attacks.create("pgd", steps=10)(soft, x, y, ThreatModel("l2", 0.3))
    assert ((res.x_adv - x).norm(dim=1) <= 0.3 + 1e-6).all()
    with torch.no_grad():
        assert torch.equal(res.success, soft(res.x_adv).argmax(1) != y)  # re-checked on the smoothed model
    assert res.success.any() and not res.success.all()


def test_log_mean_softmax_of_one_copy_is_log_softmax():
    logits = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(log_mean_softmax(logits, 1), logits.log_softmax(1))


# -- smoothadv ---------------------------------------------------------------------------------
def soft_loss(model, x, y, z, sigma):
    with torch.no_grad():
        return F.cross_entropy(SoftSmoothed(model, sigma, noise=z)(x), y, reduction="none")


def test_smoothadv_attack_stays_in_the_current_ball_and_raises_the_soft_smoothed_loss():
    x, y = data(60)
    model = net()
    Trainer(model, ERM("ce"), **{**KW, "epochs": 5}).fit(blobs(n=60, seed=0))
    obj = started(SmoothAdv(sigma=0.25, eps=0.5, steps=5, m=4, eps_warmup=4))
    obj.set_progress(1.3, 10)  # epoch 1 of the staircase: eps * (1 + 1) / 4
    assert obj.current_eps() == pytest.approx(0.25)
    z = standard_noise(x, 4, torch.Generator().manual_seed(11))
    x_adv = obj.adversarial_smoothed(model, x, y, z)
    dist = (x_adv - x).norm(dim=1)
    assert dist.max() <= 0.25 + 1e-6 and dist.median() > 0.249  # 5 steps of 2 * eps / 5 reach the sphere
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    before, after = soft_loss(model, x, y, z, 0.25), soft_loss(model, x_adv, y, z, 0.25)
    assert after.mean() > before.mean() + 0.1 and (after > before).all()


def test_smoothadv_loss_is_the_mean_ce_over_the_noisy_copies_of_the_attacked_input():
    x, y = data(24)
    model = net()
    obj = started(SmoothAdv(sigma=0.25, eps=0.3, steps=3, m=3), seed=5)
    per, met = obj.loss(model, x, y, None)
    z = standard_noise(x, 3, torch.Generator().manual_seed(5))  # the one draw of the batch
    x_adv = obj.adversarial_smoothed(model, x, y, z)
    with torch.no_grad():
        ce = torch.stack([F.cross_entropy(model(x_adv + 0.25 * z[i]), y, reduction="none") for i in range(3)])
        hits = torch.stack([(model(x_adv + 0.25 * z[i]).argmax(1) == y).float() for i in range(3)])
    torch.testing.assert_close(per.detach(), ce.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(met["adv_accuracy"], hits.mean(0))
    assert set(met) == {"adv_accuracy", "accuracy"}


def test_smoothadv_attacks_in_eval_mode_trains_in_train_mode_and_restores_the_mode():
    x, y = data(12)
    model = Recorder()
    model.train()
    obj = started(SmoothAdv(sigma=0.25, eps=0.3, steps=2, m=2, clean_metrics=False))
    obj.loss(model, x, y, None)
    modes = [training for _, training in model.calls]
    assert modes == [False, False, True]  # two PGD steps on the smoothed model, then training
    assert all(len(inp) == 2 * len(x) for inp, _ in model.calls)  # m copies of every row each time
    assert model.training


def test_smoothadv_warmup_follows_the_official_per_epoch_staircase():
    obj = SmoothAdv(eps=0.4, eps_warmup=4)
    got = []
    for progress in (0.0, 0.99, 1.0, 2.5, 3.0, 7.2):
        obj.set_progress(progress, 10)
        got.append(obj.current_eps())
    assert got == pytest.approx([0.1, 0.1, 0.2, 0.3, 0.4, 0.4])
    assert obj.ramp_epochs() == 3.0
    obj.check_training(4)
    with pytest.raises(ConfigError, match="warm-up"):
        obj.check_training(3)


# -- consistency --------------------------------------------------------------------------
def test_consistency_terms_equal_the_hand_computed_values_on_a_fixed_example():
    # copy 1 predicts (1/2, 1/2), copy 2 predicts (3/4, 1/4); label 0; mean p = (5/8, 3/8)
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]], dtype=torch.float64)
    ce, kl, ent = consistency_terms(logits, torch.tensor([0]), 2)
    p = (5 / 8, 3 / 8)
    assert ce.item() == pytest.approx((math.log(2) + math.log(4 / 3)) / 2, abs=1e-12)
    kl1 = p[0] * math.log(p[0] / 0.5) + p[1] * math.log(p[1] / 0.5)
    kl2 = p[0] * math.log(p[0] / 0.75) + p[1] * math.log(p[1] / 0.25)
    assert kl.item() == pytest.approx((kl1 + kl2) / 2, abs=1e-12)
    assert ent.item() == pytest.approx(-(p[0] * math.log(p[0]) + p[1] * math.log(p[1])), abs=1e-12)


def test_consistency_loss_is_ce_plus_lam_kl_plus_eta_entropy_of_the_generators_copies():
    x, y = data(16)
    model = net()
    per, met = started(ConsistencyRegularization(sigma=0.5, m=3, lam=7.0, eta=0.25), seed=9).loss(model, x, y, None)
    z = 0.5 * torch.randn((3, *x.shape), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        probs = torch.stack([F.softmax(model(x + z[i]), 1) for i in range(3)])
    p_hat = probs.mean(0)
    ce = -probs.gather(2, y[None, :, None].expand(3, -1, 1)).squeeze(2).log().mean(0)
    kl = (p_hat * (p_hat.log() - probs.log())).sum(2).mean(0)
    ent = -(p_hat * p_hat.log()).sum(1)
    torch.testing.assert_close(per.detach(), ce + 7.0 * kl + 0.25 * ent, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(met["kl"], kl, rtol=1e-5, atol=1e-6)
    assert (kl > 0).all() and (ent > 0).all()


def test_consistency_without_regularisers_is_the_mean_ce_over_the_copies():
    x, y = data(16)
    model = net()
    per, _ = started(ConsistencyRegularization(sigma=0.25, m=4, lam=0.0, eta=0.0), seed=2).loss(model, x, y, None)
    z = standard_noise(x, 4, torch.Generator().manual_seed(2))
    with torch.no_grad():
        ce = F.cross_entropy(model(noisy_copies(x, z, 0.25)), y.repeat(4), reduction="none").reshape(4, -1).mean(0)
    torch.testing.assert_close(per.detach(), ce, rtol=1e-6, atol=1e-7)


# -- training -------------------------------------------------------------------------------
def noisy_eval(model, ds, sigma, m=20):
    """Accuracy and cross-entropy of the base model on m fixed noisy copies of ``ds``."""
    model.eval()
    z = standard_noise(ds.x, m, torch.Generator().manual_seed(123))
    with torch.no_grad():
        out = model(noisy_copies(ds.x, z, sigma))
    yy = ds.y.repeat(m)
    return (out.argmax(1) == yy).float().mean().item(), F.cross_entropy(out, yy).item()


def test_gaussian_training_fits_the_noisy_data_better_than_erm():
    ds = blobs(n=480, seed=0)
    train, test = ds.subset(range(0, 480, 2)), ds.subset(range(1, 480, 2))
    results = {}
    for name, obj in (("erm", ERM("ce")), ("gaussian", GaussianAugmentation(sigma=0.5))):
        model = net()
        Trainer(model, obj, **KW).fit(train)
        results[name] = noisy_eval(model, test, 0.5)
    (acc_erm, ce_erm), (acc_g, ce_g) = results["erm"], results["gaussian"]
    assert ce_g < 0.6 * ce_erm  # ERM is confidently wrong under noise; Gaussian training is not
    assert acc_g >= 0.6 and acc_g >= acc_erm - 0.02  # chance is 1/3


@pytest.mark.parametrize("name, params, metrics", [
    ("gaussian", {}, {"train_accuracy"}),
    ("smoothadv", dict(eps=0.25, steps=2, m=2, eps_warmup=2), {"train_adv_accuracy", "train_accuracy"}),
    ("consistency", {}, {"train_accuracy", "train_kl", "train_entropy"}),
])
def test_training_with_each_objective_is_deterministic(name, params, metrics):
    ds = blobs(n=96, seed=1)
    weights = []
    for _ in range(2):
        model = net()
        history = Trainer(model, create(name, **params), **{**KW, "epochs": 2}).fit(ds)
        assert metrics <= set(history[-1]) and math.isfinite(history[-1]["train_loss"])
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(weights[0], weights[1])
    assert not torch.equal(weights[0], torch.cat([p.detach().flatten() for p in net().parameters()]))
