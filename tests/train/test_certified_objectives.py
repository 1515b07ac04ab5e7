"""Certified training objectives (``ibp``, ``crown-ibp``): the eps/kappa/beta schedules at
hand-picked progress values, the robust cross-entropy against its definition, the loss
against a hand computation from ``compute_bounds``, the beta = 1 and beta = 0 ends of
CROWN-IBP, gradients through the bounds, the ``verified`` metric against ``verify``,
parameter checks and round trips, configs, determinism, and a short IBP training that
makes the training points verifiable where ERM's are not."""

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlab.attacks import ThreatModel
from robustlab.certify.bounds import compute_bounds, margin_spec, verified_accuracy, verify
from robustlab.errors import ConfigError, EpsilonError
from robustlab.experiments import make_config
from robustlab.experiments.runner import build_objective, validate_config
from robustlab.train import CrownIBPTraining, IBPTraining, Trainer, create
from robustlab.train.certified import CertifiedSchedule, robust_cross_entropy

sys.path.insert(0, str(Path(__file__).parent))
from helpers import Net, blobs  # noqa: E402

torch.set_num_threads(1)

NAMES = ("ibp", "crown-ibp")


def _net(seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    return Net(dropout=0.0).to(dtype)


def _batch(n: int = 12, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    ds = blobs(n=n, seed=1)
    return ds.x.to(dtype), ds.y


def _hand_robust_ce(lower: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CE of the worst-case logits written out: z_hat_y = 0, z_hat_j = -lower_j (j != y,
    in margin_spec's order), as the official CROWN-IBP code builds them by scattering."""
    b, k = len(y), lower.shape[1] + 1
    cols = torch.arange(k).expand(b, k)
    others = cols[cols != y[:, None]].reshape(b, k - 1)
    z_hat = lower.new_zeros(b, k).scatter(1, others, -lower)
    return F.cross_entropy(z_hat, y, reduction="none")


# -- schedules -------------------------------------------------------------------------
def test_schedule_values_at_hand_picked_progress():
    # eps 0.5, 2 warm-up epochs, 4 ramp epochs; values chosen to be exact in binary
    obj = create("crown-ibp", eps=0.5, warmup=2, rampup=4, kappa_final=0.5, beta_final=0.0)
    expected = {  # progress: (eps, kappa, beta)
        0.0: (0.0, 1.0, 1.0),
        1.5: (0.0, 1.0, 1.0),
        2.0: (0.0, 1.0, 1.0),
        3.0: (0.125, 0.875, 0.75),
        4.0: (0.25, 0.75, 0.5),
        5.0: (0.375, 0.625, 0.25),
        6.0: (0.5, 0.5, 0.0),
        9.25: (0.5, 0.5, 0.0),
    }
    for progress, (eps, kappa, beta) in expected.items():
        obj.set_progress(progress, 10)
        assert (obj.current_eps(), obj.current_kappa(), obj.current_beta()) == (eps, kappa, beta), progress
    # kappa_final 0.25 and beta_final 0.5 half-way through the ramp
    other = create("crown-ibp", eps=0.5, warmup=2, rampup=4, kappa_final=0.25, beta_final=0.5)
    other.set_progress(4.0, 10)
    assert (other.current_kappa(), other.current_beta()) == (0.625, 0.75)
    # a ramp of 0 epochs jumps to the full eps when the warm-up ends
    s = CertifiedSchedule(0.3, warmup=1.0, rampup=0.0)
    assert (s.eps_at(0.999), s.eps_at(1.0), s.weight_at(1.0, 0.5)) == (0.0, 0.3, 0.5)


def test_warmup_plus_ramp_is_the_ramp_and_must_fit_into_training():
    obj = create("ibp", eps=0.1, warmup=3, rampup=17)
    assert obj.ramp_epochs() == 20.0
    obj.check_training(20)  # reaching the full eps at the very end is allowed
    with pytest.raises(ConfigError, match=r"warm-up \(3\) plus eps ramp \(17\) last 20 epochs but training has only 19"):
        obj.check_training(19)
    assert create("crown-ibp").ramp_epochs() == 20.0  # official defaults: 3 + 17


# -- the loss --------------------------------------------------------------------------
def test_robust_ce_of_the_true_margins_is_the_clean_cross_entropy_float64():
    g = torch.Generator().manual_seed(0)
    z = 5 * torch.randn(64, 7, generator=g, dtype=torch.float64)
    y = torch.randint(0, 7, (64,), generator=g)
    true_margins = torch.einsum("bsk,bk->bs", margin_spec(y, 7).double(), z)  # z_y - z_j, j != y
    torch.testing.assert_close(robust_cross_entropy(true_margins), F.cross_entropy(z, y, reduction="none"),
                               rtol=0, atol=1e-12)
    torch.testing.assert_close(robust_cross_entropy(true_margins), _hand_robust_ce(true_margins, y), rtol=0, atol=1e-12)
    # and IBP's margin bounds at eps = 0 are the true margins of the model
    net = _net(dtype=torch.float64)
    x, yb = _batch(dtype=torch.float64)
    lower, _ = compute_bounds(net, x, 0.0, method="ibp", C=margin_spec(yb, 3))
    with torch.no_grad():
        logits = net(x)
        clean = F.cross_entropy(logits, yb, reduction="none")
    torch.testing.assert_close(robust_cross_entropy(lower), clean, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_during_the_warmup_the_loss_is_the_clean_cross_entropy_exactly(name):
    net = _net()
    x, y = _batch()
    obj = create(name, eps=0.1, warmup=2, rampup=2)
    obj.set_progress(1.9, 10)
    per, metrics = obj.loss(net, x, y, None)
    assert torch.equal(per, F.cross_entropy(net(x), y, reduction="none"))
    # verified at eps 0: every clean margin positive (this separable model gets them all)
    assert torch.equal(metrics["verified"], metrics["accuracy"])


@pytest.mark.parametrize("progress", [2.5, 3.0, 7.0])
def test_ibp_loss_equals_the_hand_computation_from_compute_bounds(progress):
    net = _net()
    x, y = _batch()
    obj = create("ibp", eps=0.2, warmup=2, rampup=2, kappa_final=0.25)
    obj.set_progress(progress, 10)
    eps, kappa = obj.current_eps(), obj.current_kappa()
    assert eps > 0 and kappa < 1
    per, metrics = obj.loss(net, x, y, None)
    lower, _ = compute_bounds(net, x, eps, method="ibp", C=margin_spec(y, 3))
    hand = kappa * F.cross_entropy(net(x), y, reduction="none") + (1 - kappa) * _hand_robust_ce(lower, y)
    torch.testing.assert_close(per, hand, rtol=1e-6, atol=1e-6)
    # verified: exactly the engine's IBP verification at the current eps
    assert torch.equal(metrics["verified"].bool(), verify(net, x, y, ThreatModel("linf", eps), method="ibp"))


def test_crown_ibp_beta_one_uses_crown_ibp_margins_and_beta_zero_is_ibp():
    net = _net()
    x, y = _batch()
    spec = margin_spec(y, 3)
    clean = F.cross_entropy(net(x), y, reduction="none")
    # beta_final = 1: beta stays 1, the bound is CROWN-IBP's (no IBP intersection)
    obj = create("crown-ibp", eps=0.2, warmup=1, rampup=2, kappa_final=0.5, beta_final=1.0)
    obj.set_progress(2.0, 10)
    eps, kappa = obj.current_eps(), obj.current_kappa()
    assert (eps, kappa, obj.current_beta()) == (0.1, 0.75, 1.0)
    crown, _ = compute_bounds(net, x, eps, method="crown-ibp", C=spec, bound_upper=False, intersect_ibp=False)
    ibp, _ = compute_bounds(net, x, eps, method="ibp", C=spec)
    assert not torch.allclose(crown, ibp)  # the two bounds differ here, so the test can tell them apart
    per, metrics = obj.loss(net, x, y, None)
    torch.testing.assert_close(per, kappa * clean + (1 - kappa) * _hand_robust_ce(crown, y), rtol=1e-6, atol=1e-6)
    assert torch.equal(metrics["verified"].bool(), (torch.maximum(crown, ibp) > 0).all(1))
    # a quarter into the ramp with beta_final 0: beta = 3/4 on the CROWN-IBP bound
    mid = create("crown-ibp", eps=0.4, warmup=1, rampup=2, kappa_final=0.5)
    mid.set_progress(1.5, 10)
    assert (mid.current_eps(), mid.current_kappa(), mid.current_beta()) == (0.1, 0.875, 0.75)
    torch.testing.assert_close(mid.loss(net, x, y, None)[0],
                               0.875 * clean + 0.125 * _hand_robust_ce(0.75 * crown + 0.25 * ibp, y),
                               rtol=1e-6, atol=1e-6)
    # after the ramp beta = beta_final = 0: crown-ibp's loss is ibp's, bit for bit
    a = create("crown-ibp", eps=0.2, warmup=1, rampup=2, kappa_final=0.5)
    b = create("ibp", eps=0.2, warmup=1, rampup=2, kappa_final=0.5)
    for o in (a, b):
        o.set_progress(4.0, 10)
    assert a.current_beta() == 0.0
    la, ma = a.loss(net, x, y, None)
    lb, mb = b.loss(net, x, y, None)
    assert torch.equal(la, lb) and torch.equal(ma["verified"], mb["verified"])


def test_crown_ibp_trains_on_the_pure_crown_ibp_bound_not_its_intersection_with_ibp():
    # z = (relu(2.1 x - 1), 0), x = 0.5, eps = 0.5: h in [-1, 1.1], so CROWN's adaptive lower
    # line for the unstable ReLU is relu(h) >= h (slope 1 as u >= -l), and the margin's
    # CROWN-IBP lower bound is -1 where IBP's is 0
    first = nn.Linear(1, 1)
    last = nn.Linear(1, 2)
    with torch.no_grad():
        first.weight.fill_(2.1)
        first.bias.fill_(-1.0)
        last.weight.copy_(torch.tensor([[1.0], [0.0]]))
        last.bias.zero_()
    net = nn.Sequential(first, nn.ReLU(), last)
    x, y = torch.tensor([[0.5]]), torch.tensor([0])
    obj = create("crown-ibp", eps=0.5, warmup=0, rampup=0, kappa_final=0.0, beta_final=1.0)
    obj.set_progress(0.0, 1)
    per, metrics = obj.loss(net, x, y, None)
    torch.testing.assert_close(per, torch.log1p(torch.tensor([torch.e])))  # CE of z_hat = (0, 1): lower -1
    assert metrics["verified"].item() == 0.0  # max(-1, 0) = 0 is not > 0


@pytest.mark.parametrize("name", NAMES)
def test_gradients_flow_through_the_bounds_to_every_parameter(name):
    net = _net()
    x, y = _batch()
    # kappa_final 0: after the ramp the loss is the robust term alone
    obj = create(name, eps=0.2, warmup=0, rampup=1, kappa_final=0.0, **({"beta_final": 0.5} if name == "crown-ibp" else {}))
    obj.set_progress(2.0, 4)
    per, _ = obj.loss(net, x, y, None)
    per.mean().backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, pname
    # the gradient is the bound's: autograd through compute_bounds by hand gives the same
    grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    spec = margin_spec(y, 3)
    lower, _ = compute_bounds(net, x, 0.2, method="ibp", C=spec)
    if name == "crown-ibp":
        crown, _ = compute_bounds(net, x, 0.2, method="crown-ibp", C=spec, bound_upper=False, intersect_ibp=False)
        lower = 0.5 * crown + 0.5 * lower
    _hand_robust_ce(lower, y).mean().backward()
    for g, p in zip(grads, net.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-6)


# -- parameters and configs ------------------------------------------------------------
@pytest.mark.parametrize(
    "name, kw, match",
    [
        ("ibp", dict(kappa_final=1.5), "kappa_final"),
        ("ibp", dict(warmup=-1), "warmup"),
        ("crown-ibp", dict(rampup=float("nan")), "rampup"),
        ("crown-ibp", dict(beta_final=-0.1), "beta_final"),
        ("ibp", dict(eps=0), "eps > 0"),
        ("ibp", dict(eps="1/0"), "eps"),
        ("crown-ibp", dict(norm="l7"), "norm"),
    ],
)
def test_bad_parameters_are_refused_with_one_line(name, kw, match):
    with pytest.raises(ConfigError, match=match) as err:
        create(name, **kw)
    assert "\n" not in str(err.value)


def test_eps_beyond_the_box_is_refused():
    with pytest.raises(EpsilonError):
        create("ibp", eps=1.5)


@pytest.mark.parametrize("name, cls", [("ibp", IBPTraining), ("crown-ibp", CrownIBPTraining)])
def test_params_round_trip_and_defaults(name, cls):
    obj = create(name)
    assert isinstance(obj, cls)
    p = obj.get_params()
    expected = {"eps": 8 / 255, "norm": "linf", "warmup": 3.0, "rampup": 17.0, "kappa_final": 0.5}
    if name == "crown-ibp":
        expected["beta_final"] = 0.0
    assert p == expected
    custom = create(name, eps="2/5", warmup=1, rampup=2.5, kappa_final=0.0)
    again = create(name, **custom.get_params())
    assert again.get_params() == custom.get_params() and again.threat.eps == pytest.approx(0.4)


@pytest.mark.parametrize("name", NAMES)
def test_configs_accept_both_by_name(name):
    cfg = make_config({}, ["train.epochs=4", f"train.objective={name}",
                           "train.objective_params={eps: 0.1, warmup: 1, rampup: 2}"])
    validate_config(cfg)  # builds the objective and a Trainer from the config
    obj = build_objective(cfg)
    assert type(obj) is {"ibp": IBPTraining, "crown-ibp": CrownIBPTraining}[name]
    assert obj.get_params()["rampup"] == 2.0
    too_short = make_config({}, ["train.epochs=4", f"train.objective={name}"])  # defaults: 3 + 17 epochs
    with pytest.raises(ConfigError, match="last 20 epochs but training has only 4"):
        validate_config(too_short)


# -- training --------------------------------------------------------------------------
EPS = 0.2
TRAIN = dict(epochs=20, batch_size=32, optimizer="adam", lr=0.01, schedule="constant", progress=False)


def _train(name: str, seed: int = 0, epochs: int = 20, warmup: float = 2, rampup: float = 8) -> tuple[nn.Module, list[dict]]:
    torch.manual_seed(seed)
    net = Net(dropout=0.0)
    obj = create("erm") if name == "erm" else create(name, eps=EPS, warmup=warmup, rampup=rampup)
    history = Trainer(net, obj, seed=seed, **dict(TRAIN, epochs=epochs)).fit(blobs())
    return net, history


def test_ibp_training_makes_the_training_points_verifiable_where_erm_does_not():
    # measured (seed 0): CROWN-IBP-verified accuracy at eps 0.2 of 0.558 after IBP training,
    # 0.142 after ERM (seeds 0-3: 0.56-0.63 vs 0.14-0.18); both models fit every point
    ds = blobs()
    threat = ThreatModel("linf", EPS)
    ibp_net, history = _train("ibp")
    erm_net, _ = _train("erm")
    ibp_verified = verified_accuracy(ibp_net, ds.x, ds.y, threat, method="crown-ibp")
    erm_verified = verified_accuracy(erm_net, ds.x, ds.y, threat, method="crown-ibp")
    assert ibp_verified >= 0.45 and erm_verified <= 0.25
    assert history[-1]["train_accuracy"] == 1.0
    # the training log: during the warm-up (eps 0) verified is the clean accuracy; at the end
    # of the ramp (epoch 10) IBP verifies 0.20 of the points at the full eps, after ten more
    # epochs at that eps 0.51 (measured)
    assert history[1]["train_verified"] == history[1]["train_accuracy"]
    assert history[-1]["train_verified"] >= 0.4
    assert history[-1]["train_verified"] >= history[9]["train_verified"] + 0.15


def test_crown_ibp_training_runs_in_the_trainer_and_is_deterministic():
    a, ha = _train("crown-ibp", epochs=4, warmup=1, rampup=2)
    b, hb = _train("crown-ibp", epochs=4, warmup=1, rampup=2)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    assert [h["train_loss"] for h in ha] == [h["train_loss"] for h in hb]
    assert {"train_accuracy", "train_verified"} <= set(ha[-1])
