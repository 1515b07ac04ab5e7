"""AAER as the official code trains it (tmllab/2023_NeurIPS_AAER): the loss by hand, the
FGSM step-size ramp of ``SVHN/AAER.py`` (noise not ramped), and two batch-norm updates per
optimiser step."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import robustlab.attacks
from robustlab.attacks import ThreatModel
from robustlab.data.base import Dataset
from robustlab.errors import ConfigError
from robustlab.train import AAER, Trainer, create

EPS = 0.08


def blobs(n=64, d=6, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = 0.2 + 0.6 * torch.rand(k, d, generator=g)
    y = torch.arange(n) % k
    x = (centers[y] + 0.05 * torch.randn(n, d, generator=g)).clamp(0, 1)
    return Dataset(x=x, y=y, num_classes=k, name="blobs")


class Net(nn.Module):
    def __init__(self, bn=False):
        super().__init__()
        self.input_shape = (6,)
        self.num_classes = 3
        self.body = nn.Sequential(nn.Linear(6, 16), *([nn.BatchNorm1d(16)] if bn else []), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x):
        return self.body(x)


class Wavy(nn.Module):
    """A model whose loss oscillates along the input (``sin(60 x)``): an FGSM step of
    0.04 turns the phase by 2.4 rad, so some steps lower the loss -- abnormal examples."""

    def __init__(self):
        super().__init__()
        self.input_shape = (6,)
        self.num_classes = 3
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.lin = nn.Linear(6, 3)

    def forward(self, x):
        return self.lin(torch.sin(60 * x))


def fresh(bn=False):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return Net(bn)


def test_defaults_are_the_official_svhn_script_and_clip_switches_the_noise():
    obj = AAER(eps=EPS)
    assert (obj.lam1, obj.lam2, obj.lam3, obj.noise, obj.alpha, obj.clip, obj.step_warmup) == (1.0, 4.0, 1.5, 2.0, 1.0, False, 5.0)
    assert obj.bn_mode == "train" and obj.ramp_epochs() == 5.0
    rs = AAER(eps=EPS, clip=True, alpha=1.25)  # RS-AAER: the official --clamp 1 samples noise in [-eps, eps]
    assert rs.noise == 1.0 and rs.get_params()["noise"] == 1.0
    assert AAER(eps=EPS, eps_warmup=7, step_warmup=2).ramp_epochs() == 7


@pytest.mark.parametrize("progress, w", [(0.0, 0.0), (1.25, 0.25), (2.5, 0.5), (5.0, 1.0), (9.0, 1.0)])
def test_step_factor_is_the_official_linear_ramp(progress, w):
    obj = AAER(eps=EPS)
    obj.set_progress(progress, 10)
    assert obj.step_factor() == w  # min((epoch + i / len(loader)) / 5, 1)
    assert AAER(eps=EPS, step_warmup=0).step_factor() == 1.0


class Spy:
    """Records the FGSM step the objective asks for and the start point it hands over."""

    def __init__(self, calls):
        self.calls = calls

    def needs_clean_logits(self):
        return False

    def generate(self, model, x, y, threat, *, generator, bn_mode, clean_logits=None, **kw):
        self.calls.append({"step": threat.eps, "x0": x.clone()})
        return (x + threat.eps).clamp(0, 1)


def test_only_the_fgsm_step_is_ramped_per_optimiser_step_not_the_noise(monkeypatch):
    calls = []
    monkeypatch.setattr(robustlab.attacks, "create", lambda name, /, **p: Spy(calls))
    ds = blobs(n=64)  # 2 steps per epoch
    xs = []
    obj = create("aaer", eps=EPS, step_warmup=2)
    real = obj.adversarial

    def adversarial(model, x, y):
        xs.append(x.clone())
        return real(model, x, y)

    obj.adversarial = adversarial
    Trainer(fresh(), obj, epochs=3, batch_size=32, lr=0.1, progress=False).fit(ds)
    # progress 0, .5, 1, 1.5, 2, 2.5 epochs -> step alpha * eps * min(1, t / 2)
    assert [c["step"] for c in calls] == pytest.approx([0.0, 0.02, 0.04, 0.06, 0.08, 0.08], abs=1e-12)
    for c, x in zip(calls, xs, strict=True):
        noise = (c["x0"] - x).abs()
        inner = (x > 2 * EPS) & (x < 1 - 2 * EPS)  # points the box clip cannot touch
        assert float(noise.max()) <= 2 * EPS + 1e-7
        assert float(noise[inner].max()) > 1.5 * EPS  # full-size noise U[-2 eps, 2 eps], from the first step on


def test_loss_matches_a_hand_computation_inside_the_ramp():
    ds = blobs()
    x, y = ds.x[:32], ds.y[:32]
    model = Wavy()
    obj = create("aaer", eps=EPS)  # step_warmup 5
    gen = torch.Generator().manual_seed(5)
    obj.start_epoch(2, gen)
    obj.set_progress(2.5, 10)  # w = 0.5
    state = gen.get_state()
    per, metrics = obj.loss(model, x, y, None)
    # the official step, by hand: x0 = clip(x + U[-2 eps, 2 eps]); x' = clip(x0 + 0.5 eps sign(grad CE(x0)))
    g2 = torch.Generator()
    g2.set_state(state)
    x0 = ThreatModel("linf", EPS).random_start(x, (0.0, 1.0), g2, eps=2 * EPS)
    xr = x0.clone().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(F.cross_entropy(model(xr), y, reduction="sum"), xr)
    x_adv = (x0 + 0.5 * EPS * g.sign()).clamp(0, 1)
    ce0 = F.cross_entropy(model(x0), y, reduction="none")
    ce1 = F.cross_entropy(model(x_adv), y, reduction="none")
    ab = ce0 > ce1
    assert torch.equal(metrics["aaer_count"], ab.float())
    assert 0 < int(ab.sum()) < 32  # both groups present: the regulariser is active
    l0, l1 = model(x0), model(x_adv)
    var_a = ((l0[ab] - l1[ab]) ** 2).sum(1).mean()
    var_n = ((l0[~ab] - l1[~ab]) ** 2).sum(1).mean()
    want = ce1.mean() + ab.sum() / 32 * (4.0 * (ce0 - ce1)[ab].mean() + 1.5 * torch.clamp(var_a - var_n, min=0))
    assert per.mean().item() == pytest.approx(want.item(), rel=1e-5)


def test_clip_projects_onto_the_ramped_radius():
    ds = blobs()
    x, y = ds.x[:32], ds.y[:32]
    obj = create("aaer", eps=EPS, clip=True, alpha=1.25)
    obj.start_epoch(1, torch.Generator().manual_seed(0))
    obj.set_progress(1.0, 10)  # w = 0.2: radius 0.2 eps
    x_adv = obj.adversarial(fresh(), x, y)
    assert float((x_adv - x).abs().max()) == pytest.approx(0.2 * EPS, rel=1e-5)


def test_batch_norm_statistics_are_updated_twice_per_step_at_x0_and_at_x_adv():
    ds = blobs()
    x, y = ds.x[:32], ds.y[:32]
    model = fresh(bn=True)
    model.train()
    bn = model.body[1]
    m0, v0 = bn.running_mean.clone(), bn.running_var.clone()
    obj = create("aaer", eps=EPS, step_warmup=0)
    obj.start_epoch(0, torch.Generator().manual_seed(0))
    seen = {}
    real = obj.adversarial

    def adversarial(m, xx, yy):
        seen["x_adv"] = real(m, xx, yy)
        seen["x0"] = obj._start[0].clone()
        return seen["x_adv"]

    obj.adversarial = adversarial
    obj.loss(model, x, y, None)
    assert int(bn.num_batches_tracked) == 2  # official: forward at x0 (gradient) and at x' (loss)
    with torch.no_grad():
        h0, h1 = model.body[0](seen["x0"]), model.body[0](seen["x_adv"])
    m1 = 0.9 * m0 + 0.1 * h0.mean(0)
    v1 = 0.9 * v0 + 0.1 * h0.var(0, unbiased=True)
    assert torch.allclose(bn.running_mean, 0.9 * m1 + 0.1 * h1.mean(0), atol=1e-6)
    assert torch.allclose(bn.running_var, 0.9 * v1 + 0.1 * h1.var(0, unbiased=True), atol=1e-6)


def test_a_ramp_longer_than_training_is_refused_before_any_step():
    m = fresh()
    before = [p.clone() for p in m.parameters()]
    with pytest.raises(ConfigError, match=r"step_warmup=5 .*only 3.*step_warmup to at most 3"):
        Trainer(m, create("aaer", eps=EPS), epochs=3, progress=False).fit(blobs())
    assert all(torch.equal(a, b) for a, b in zip(before, m.parameters(), strict=True))
    Trainer(fresh(), create("aaer", eps=EPS, step_warmup=0), epochs=1, progress=False).fit(blobs())
