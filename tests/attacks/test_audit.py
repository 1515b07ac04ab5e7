"""Audit flags fire on constructed cases and stay silent on a plain linear model."""

import pytest
import torch
from torch import nn

from robustlab.attacks import ProbabilityOutputWarning, ThreatModel, attacks, audit, create
from robustlab.attacks.audit import (
    check_black_box,
    check_gradients,
    check_large_eps,
    check_monotone,
    check_more_iterations,
    check_protocol,
    check_randomized,
    check_softmax,
)
from robustlab.attacks.base import Attack
from tests.attacks.helpers import gen, problem


def codes(flags):
    return [f.code for f in flags]


def test_no_flag_on_a_plain_linear_model():
    lin, x, y = problem(n=120)
    flags = audit(lin, x, y, ThreatModel.grid("linf", [0.02, 0.05, 0.1]), robust_accuracy=[0.7, 0.45, 0.18],
                  attack="pgd", params={"steps": 10})
    assert flags == []


def test_dropout_in_train_mode_is_randomised():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.Dropout(0.5), nn.ReLU(), nn.Linear(16, 4)).train()
    x = torch.rand(32, 12, generator=gen(0))
    state = torch.random.get_rng_state()
    flags = check_randomized(model, x)
    assert codes(flags) == ["randomized"] and "train mode" in flags[0].message
    assert model.training and torch.equal(state, torch.random.get_rng_state())
    assert check_randomized(model.eval(), x) == []  # deterministic in eval mode


def test_randomised_in_eval_mode():
    class Noisy(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(12, 4)
            self.g = torch.Generator().manual_seed(0)

        def forward(self, x):
            return self.lin(x + 0.1 * torch.randn(x.shape, generator=self.g))

    flags = check_randomized(Noisy().eval(), torch.rand(16, 12, generator=gen(0)))
    assert codes(flags) == ["randomized"] and "rand" in flags[0].message


def test_audit_restores_batch_norm_statistics():
    net = nn.Sequential(nn.Linear(12, 8), nn.BatchNorm1d(8), nn.Linear(8, 4)).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    check_randomized(net, torch.rand(16, 12, generator=gen(0)))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_softmax_outputs_are_flagged_and_warned():
    lin, x, y = problem(n=40)
    model = nn.Sequential(lin, nn.Softmax(dim=1))
    with torch.no_grad():
        assert codes(check_softmax(model(x))) == ["softmax-output"]
        assert check_softmax(lin(x)) == []
    with pytest.warns(ProbabilityOutputWarning, match="logits"):
        create("pgd", steps=2)(model, x, y, ThreatModel("linf", 0.05))


class Step(nn.Module):
    """A piecewise-constant model: zero input gradient everywhere."""

    def __init__(self, lin):
        super().__init__()
        self.lin = lin

    def forward(self, x):
        return self.lin(torch.floor(x * 4) / 4)


def test_zero_gradient_model_is_flagged():
    lin, x, y = problem(n=64)
    flags = check_gradients(Step(lin), x, y)
    assert codes(flags) == ["zero-grad"] and flags[0].value == 1.0
    assert check_gradients(lin, x, y) == []


def test_nan_gradient_model_is_flagged():
    class SqrtZero(nn.Module):
        def __init__(self, lin):
            super().__init__()
            self.lin = lin

        def forward(self, x):  # finite outputs, NaN gradient: d sqrt(u)/du at 0 is inf, times 0
            return self.lin(x) + torch.sqrt(x * 0).sum(1, keepdim=True)

    lin, x, y = problem(n=16)
    assert codes(check_gradients(SqrtZero(lin), x, y)) == ["nan-grad"]


def test_large_eps_check_catches_gradient_masking():
    lin, x, y = problem(n=100)
    flags = check_large_eps(Step(lin), x, y, "linf", generator=gen(0))
    assert codes(flags) == ["large-eps-robust"] and flags[0].value > 0
    assert check_large_eps(lin, x, y, "linf", generator=gen(0)) == []
    assert check_large_eps(lin, x, y, "l2", generator=gen(0)) == []


def test_black_box_and_monotone_and_protocol_checks():
    stages, bb = ["apgd-ce", "apgd-t", "square"], [False, False, True]
    assert codes(check_black_box(stages, bb, [50, 10, 3], 1000)) == ["black-box-stronger"]
    assert check_black_box(stages, bb, [50, 10, 2], 1000) == []  # 0.2%: AutoAttack's threshold
    assert check_black_box(["a", "b"], [False, False], [5, 5], 100) == []
    assert codes(check_monotone([0.1, 0.2, 0.3], [0.5, 0.4, 0.45])) == ["non-monotone-eps"]
    assert check_monotone([0.3, 0.1, 0.2], [0.2, 0.5, 0.4]) == []
    assert codes(check_protocol([{"member": "square", "reason": "does not support l1"}], "p")) == ["incomplete-protocol"]
    assert check_protocol([], "p") == []


def test_black_box_stronger_fires_when_square_beats_apgd_on_a_masked_model():
    from robustlab.evaluate import attack_report

    lin, x, y = problem(n=100)
    rep = attack_report(Step(lin), x, y, 0.1, "standard", audit="cheap", batch_size=100,
                        members=[("apgd-ce", {"steps": 10}), ("square", {"n_queries": 200})])
    assert "black-box-stronger" in codes(rep.flags) and "zero-grad" in codes(rep.flags)
    assert rep.results[0].per_attack["square"] < rep.results[0].per_attack["apgd-ce"]


def test_more_iterations_check(monkeypatch):
    class Erratic(Attack):
        """Breaks points with few steps, none with many: a broken attack to detect."""

        norms = ("linf",)

        def __init__(self, steps: int = 5) -> None:
            self.steps = steps

        def perturb(self, ctx, x, y, threat, target):
            if self.steps > 5:
                return x
            return create("pgd", steps=10, loss="margin", targets=3).perturb(ctx, x, y, threat, None)

    monkeypatch.setitem(attacks._entries, "erratic", Erratic)
    monkeypatch.setitem(attacks._names, "erratic", "erratic")
    lin, x, y = problem(n=100)
    flags = check_more_iterations(lin, x, y, ThreatModel("linf", 0.05), generator_seed=0, attack="erratic")
    assert codes(flags) == ["more-iterations-higher"]
    assert check_more_iterations(lin, x, y, ThreatModel("linf", 0.05), generator_seed=0, attack="pgd") == []
