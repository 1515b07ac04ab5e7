"""The template's contract, for every registered attack (including ones registered by
other modules), every norm it supports, with small budgets from helpers.CHEAP."""

import pytest
import torch
from torch import nn

from robustlab.attacks import ThreatModel, attacks, create
from robustlab.errors import ConfigError
from tests.attacks.helpers import cheap

NORM_EPS = {"linf": [0.05, 0.1, 0.3], "l2": [0.25, 0.5, 1.5], "l1": [0.5, 1.0, 3.0]}
NAMES = attacks.available()


def mlp(classes=5, seed=0):
    torch.manual_seed(seed)  # parameter init only; the tests restore nothing else from it
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.Dropout(0.5), nn.ReLU(), nn.Linear(12, classes))


def data(n=24, classes=5):
    x = torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(1))
    return x, y


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_contract(name, norm):
    atk = create(name, **cheap(name))
    model = mlp()
    model.train()  # handed over in train mode: the attack must evaluate in eval mode and restore
    x, y = data()
    threats = [ThreatModel(norm, e) for e in NORM_EPS[norm]]
    if norm not in atk.norms:
        with pytest.raises(ConfigError, match=norm):
            atk(model, x, y, threats[0])
        return
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r1 = atk(model, x, y, threats, generator=torch.Generator().manual_seed(7))
    r2 = atk(model, x, y, threats, generator=torch.Generator().manual_seed(7))
    assert model.training  # mode restored
    assert all(p.grad is None for p in model.parameters())  # no parameter gradients
    assert all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # model untouched
    model.eval()
    prev = None
    for t, a, b in zip(threats, r1, r2, strict=True):
        assert a.threat == t
        assert a.x_adv.shape == x.shape and a.x_adv.dtype == x.dtype and a.x_adv.device == x.device
        assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.success, b.success)  # same generator
        assert a.x_adv.min() >= 0 and a.x_adv.max() <= 1  # inside the bounds
        assert (t.norm_of(a.x_adv - x) <= t.eps * (1 + 1e-5) + 1e-7).all()  # inside the ball
        with torch.no_grad():  # success is what the model says about x_adv in eval mode
            assert torch.equal(model(a.x_adv).argmax(1) != y, a.success)
        if prev is not None:  # broken at a smaller eps => broken at a larger one
            assert bool((a.success | ~prev).all())
        prev = a.success
    model.train()
    # the smallest budget of a list gives exactly what a call with it alone gives
    alone = atk(model, x, y, threats[0], generator=torch.Generator().manual_seed(7))
    assert torch.equal(alone.x_adv, r1[0].x_adv) and torch.equal(alone.success, r1[0].success)
    # a batch of one works
    one = atk(model, x[:1], y[:1], threats[-1], generator=torch.Generator().manual_seed(7))
    assert one.x_adv.shape == (1, 1, 4, 4) and one.success.shape == (1,)
    assert (threats[-1].norm_of(one.x_adv - x[:1]) <= threats[-1].eps * (1 + 1e-5) + 1e-7).all()


@pytest.mark.parametrize("name", NAMES)
def test_float64_inputs_keep_their_dtype(name):
    atk = create(name, **cheap(name))
    norm = "linf" if "linf" in atk.norms else atk.norms[0]
    model = mlp().double().eval()
    x, y = data(8)
    x = x.double()
    r = atk(model, x, y, ThreatModel(norm, NORM_EPS[norm][1]), generator=torch.Generator().manual_seed(0))
    assert r.x_adv.dtype == torch.float64
    with torch.no_grad():
        assert torch.equal(model(r.x_adv).argmax(1) != y, r.success)


@pytest.mark.parametrize("name", ["pgd", "apgd-t", "fast"])
def test_amp_is_a_no_op_on_cpu(name):
    model = mlp().eval()
    x, y = data()
    t = [ThreatModel("linf", 0.05), ThreatModel("linf", 0.1)]
    a = create(name, **cheap(name))(model, x, y, t, generator=torch.Generator().manual_seed(0))
    b = create(name, **cheap(name))(model, x, y, t, generator=torch.Generator().manual_seed(0), amp=True)
    assert all(torch.equal(p.x_adv, q.x_adv) and torch.equal(p.success, q.success) for p, q in zip(a, b, strict=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", NAMES)
def test_contract_on_cuda_with_amp(name):
    atk = create(name, **cheap(name))
    norm = "linf" if "linf" in atk.norms else atk.norms[0]
    model = mlp().cuda().eval()
    x, y = data()
    x, y = x.cuda(), y.cuda()
    t = ThreatModel(norm, NORM_EPS[norm][1])
    r = atk(model, x, y, t, generator=torch.Generator(device="cuda").manual_seed(0), amp=True)
    assert r.x_adv.device == x.device and r.x_adv.dtype == x.dtype
    assert (t.norm_of(r.x_adv - x) <= t.eps * (1 + 1e-5) + 1e-7).all()
    with torch.no_grad():  # success re-checked in full precision: exact under autocast too
        assert torch.equal(model(r.x_adv).argmax(1) != y, r.success)
