"""Attack.generate: adversarial inputs for training, without evaluation semantics."""

import pytest
import torch
from torch import nn

from robustlab.attacks import ThreatModel, create, kl_loss, logit_change_loss
from robustlab.errors import ConfigError
from tests.attacks.helpers import gen, linear_model


def binary_problem(n=100):
    lin = linear_model(d=6, k=2, seed=4)
    x = 0.3 + 0.4 * torch.rand(n, 6, generator=gen(2))  # away from the box: corners reachable
    y = lin(x).argmax(1).detach()
    y[:10] = 1 - y[:10]  # some clean-misclassified points
    return lin, x, y


def test_generate_attacks_every_point_to_the_final_iterate():
    # for a binary linear model every CE step moves along sign(w_other - w_y); after
    # enough steps the final iterate is the corner x + eps * sign(...) for EVERY point,
    # also those misclassified from the start or broken after the first step
    lin, x, y = binary_problem()
    eps = 0.05
    pgd = create("pgd", steps=8, rel_step_size=0.25)
    x_adv = pgd.generate(lin, x, y, ThreatModel("linf", eps), generator=gen(0))
    a = (lin.weight[1] - lin.weight[0]).detach()
    direction = torch.where(y[:, None] == 0, a.sign(), -a.sign())
    assert torch.allclose(x_adv, x + eps * direction, atol=1e-6)
    # evaluation semantics differ: misclassified points are left alone, broken ones stop
    res = pgd(lin, x, y, ThreatModel("linf", eps), generator=gen(0))
    assert torch.equal(res.x_adv[:10], x[:10])
    assert not torch.allclose(res.x_adv, x_adv)


def test_generate_leaves_parameters_alone_even_when_they_require_grad():
    lin, x, y = binary_problem()
    assert all(p.requires_grad for p in lin.parameters())
    for name, params in [("pgd", {"steps": 3}), ("apgd-ce", {"steps": 3}), ("fgsm", {})]:
        create(name, **params).generate(lin, x, y, ThreatModel("linf", 0.05), generator=gen(0))
    assert all(p.grad is None and p.requires_grad for p in lin.parameters())


class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 4)
        self.bn = nn.BatchNorm1d(4)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        return self.out(torch.relu(self.bn(self.lin(x))))


@pytest.mark.parametrize("bn_mode,stats_change,mode_during", [("eval", False, False), ("train", True, True), ("keep", True, True)])
def test_bn_mode(bn_mode, stats_change, mode_during):
    torch.manual_seed(0)
    net = BNNet()
    net.train()
    seen = []
    net.bn.register_forward_hook(lambda m, i, o: seen.append(m.training))
    before = net.bn.running_mean.clone()
    _, x, y = binary_problem()
    create("pgd", steps=2).generate(net, x, y, ThreatModel("linf", 0.05), generator=gen(0), bn_mode=bn_mode)
    assert net.training and net.bn.training  # restored
    assert set(seen) == {mode_during}
    assert (not torch.equal(before, net.bn.running_mean)) == stats_change


def test_keep_mode_leaves_an_eval_model_in_eval():
    net = BNNet().eval()
    seen = []
    net.bn.register_forward_hook(lambda m, i, o: seen.append(m.training))
    _, x, y = binary_problem()
    create("pgd", steps=2).generate(net, x, y, ThreatModel("linf", 0.05), generator=gen(0), bn_mode="keep")
    assert set(seen) == {False} and not net.training
    with pytest.raises(ConfigError, match="bn_mode"):
        create("pgd").generate(net, x, y, ThreatModel("linf", 0.05), generator=gen(0), bn_mode="frozen")


class Counting(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def test_kl_loss_clean_logits_computed_once_per_batch():
    lin, x, y = binary_problem()
    net = Counting(lin)
    pgd = create("pgd", steps=5, loss="kl", init_std=0.001)
    pgd.generate(net, x, y, ThreatModel("linf", 0.05), generator=gen(0))
    assert net.calls == 1 + 5  # one clean pass, one pass per step
    net.calls = 0
    with torch.no_grad():
        clean = lin(x)
    pgd.generate(net, x, y, ThreatModel("linf", 0.05), generator=gen(0), clean_logits=clean)
    assert net.calls == 5  # the objective's clean logits are reused


def test_trades_inner_maximisation_reaches_the_kl_maximising_corner():
    # binary linear model, s(x) = a.x + b: KL(p(x) || p(x')) grows with |s(x') - s(x)|, and
    # sign steps from x + 0.001 N(0, I) walk to one of the two corners x ± eps sign(a)
    lin, x, y = binary_problem()
    eps = 0.05
    x_adv = create("pgd", steps=10, rel_step_size=0.25, loss="kl", init_std=0.001).generate(
        lin, x, y, ThreatModel("linf", eps), generator=gen(0)
    )
    a = (lin.weight[1] - lin.weight[0]).detach()
    with torch.no_grad():
        clean = lin(x)
        kl = kl_loss(lin(x_adv), y, None, clean)
        corners = [kl_loss(lin(x + s * eps * a.sign()), y, None, clean) for s in (1, -1)]
    assert ((kl - corners[0]).abs() < 1e-6).logical_or((kl - corners[1]).abs() < 1e-6).all()
    assert (kl > 0).all()


def test_kl_loss_matches_kldiv():
    z_clean = torch.randn(5, 3, generator=gen(0))
    z_adv = torch.randn(5, 3, generator=gen(1))
    ref = nn.KLDivLoss(reduction="none")(z_adv.log_softmax(1), z_clean.softmax(1)).sum(1)
    assert torch.allclose(kl_loss(z_adv, torch.zeros(5, dtype=torch.long), None, z_clean), ref, atol=1e-6)
    with pytest.raises(ConfigError, match="clean"):
        kl_loss(z_adv, torch.zeros(5, dtype=torch.long))


def test_generate_needs_a_generator_and_a_single_threat():
    lin, x, y = binary_problem()
    with pytest.raises(ConfigError, match="Generator"):
        create("pgd").generate(lin, x, y, ThreatModel("linf", 0.05), generator=None)
    with pytest.raises(ConfigError):
        create("pgd").generate(lin, x, y, [ThreatModel("linf", 0.05)], generator=gen(0))


def test_fgsm_rs_is_one_step_from_a_random_start():
    # Wong et al. 2020: uniform start in the ball, one step of 1.25 eps, projection
    lin, x, y = binary_problem()
    eps = 0.05
    t = ThreatModel("linf", eps)
    x_adv = create("pgd", steps=1, rel_step_size=1.25).generate(lin, x, y, t, generator=gen(3))
    start = t.random_start(x, (0.0, 1.0), gen(3))
    a = (lin.weight[1] - lin.weight[0]).detach()
    direction = torch.where(y[:, None] == 0, a.sign(), -a.sign())
    assert torch.allclose(x_adv, t.project(start + 1.25 * eps * direction, x, (0.0, 1.0)), atol=1e-6)


def test_logit_change_loss():
    z_clean = torch.tensor([[1.0, 2.0, 0.0]])
    z_adv = torch.tensor([[2.0, 1.0, 0.5]])
    y = torch.tensor([1])
    # Delta(x) = [-1, 0, -2], Delta(x') = [1, 0, -0.5]: difference [2, 0, 1.5], norm 2.5
    assert torch.allclose(logit_change_loss(z_adv, y, None, z_clean), torch.tensor([2.5]))
    assert torch.allclose(logit_change_loss(z_clean + 3.0, y, None, z_clean), torch.zeros(1))  # shift-invariant
    lin, x, yy = binary_problem()
    net = Counting(lin)
    for name in ("pgd", "apgd"):
        net.calls = 0
        create(name, steps=4, loss="logit-diff").generate(net, x, yy, ThreatModel("linf", 0.05), generator=gen(0))
        assert net.calls == 1 + 4 + (1 if name == "apgd" else 0)  # clean pass; APGD also scores its start
