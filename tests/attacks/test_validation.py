"""Bad input gets a typed error (or a warning) that says what was wrong."""

import pytest
import torch
from torch import nn

from robustlab.attacks import ProbabilityOutputWarning, ThreatModel, attacks, create
from robustlab.errors import (
    ConfigError,
    EpsilonError,
    InvalidInputError,
    LabelError,
    NonFiniteInputError,
    RobustlabError,
)
from tests.attacks.helpers import cheap, gen, problem

NAMES = attacks.available()


@pytest.mark.parametrize("name", NAMES)
def test_every_attack_refuses_bad_inputs(name):
    lin, x, y = problem(n=12, k=5)
    atk = create(name, **cheap(name))
    norm = "linf" if "linf" in atk.norms else atk.norms[0]
    t = ThreatModel(norm, 0.1)
    with pytest.raises(InvalidInputError, match="dtype"):
        atk(lin, (x * 255).long(), y, t)
    bad = x.clone()
    bad[3, 2] = float("inf")
    with pytest.raises(NonFiniteInputError):
        atk(lin, bad, y, t)
    with pytest.raises(InvalidInputError, match=r"\[0, 1\]"):
        atk(lin, x + 1.5, y, t)
    with pytest.raises(LabelError, match=r"\[0, 4\]"):
        atk(lin, x, y + 5, t)
    with pytest.raises(LabelError):
        atk(lin, x, y.float(), t)
    with pytest.raises(EpsilonError, match="diameter"):
        atk(lin, x, y, ThreatModel(norm, 1000.0) if norm != "linf" else ThreatModel("l2", 1000.0))
    with pytest.raises(ConfigError):
        atk(lin, x, y, "linf 0.1")
    unsupported = [n for n in ("linf", "l2", "l1") if n not in atk.norms]
    for n in unsupported:
        with pytest.raises(ConfigError, match="supports norms"):
            atk(lin, x, y, ThreatModel(n, 0.1))


def test_eps_checks():
    with pytest.raises(EpsilonError):
        ThreatModel("linf", -0.1)
    with pytest.raises(EpsilonError):
        ThreatModel("l1", float("nan"))
    with pytest.raises(EpsilonError, match="255"):
        ThreatModel("linf", 8)
    with pytest.raises(EpsilonError, match="8/255"):
        ThreatModel("linf", "8/25/5")
    lin, x, y = problem(n=10)
    with pytest.raises(EpsilonError, match="diameter"):
        create("apgd-ce", steps=2)(lin, x, y, ThreatModel("l1", 12.5))  # d = 12
    with pytest.raises(ConfigError, match="one norm"):
        create("pgd")(lin, x, y, [ThreatModel("linf", 0.1), ThreatModel("l2", 0.1)])


def test_more_targets_than_classes_minus_one():
    lin, x, y = problem(n=20, k=4, wrong=0)
    with pytest.raises(ConfigError, match="at most 3"):
        create("apgd-t", steps=2, targets=4)(lin, x, y, ThreatModel("linf", 0.05))
    with pytest.raises(ConfigError, match="at most 3"):
        create("pgd", steps=2, targets=4)(lin, x, y, ThreatModel("linf", 0.05))
    create("apgd-t", steps=2, targets=3)(lin, x, y, ThreatModel("linf", 0.05))


def test_probability_outputs_warn():
    lin, x, y = problem(n=20)
    with pytest.warns(ProbabilityOutputWarning):
        create("apgd-ce", steps=2)(nn.Sequential(lin, nn.Softmax(1)), x, y, ThreatModel("linf", 0.05))
    assert issubclass(ProbabilityOutputWarning, UserWarning)


def test_model_bounds_are_the_models():
    class Signed(nn.Module):  # inputs in [-1, 1]
        input_bounds = (-1.0, 1.0)

        def __init__(self, lin):
            super().__init__()
            self.lin = lin

        def forward(self, x):
            return self.lin((x + 1) / 2)

    lin, x, y = problem(n=60)
    model = Signed(lin)
    xs = 2 * x - 1
    for name in ("pgd", "apgd-ce", "apgd-t"):
        r = create(name, **cheap(name))(model, xs, y, ThreatModel("linf", 0.2), generator=gen(0))
        assert r.x_adv.min() >= -1 and r.x_adv.max() <= 1 and r.x_adv.min() < 0
    with pytest.raises(InvalidInputError, match=r"\[-1.0, 1.0\]"):
        create("pgd")(model, xs * 2, y, ThreatModel("linf", 0.1))


def test_errors_are_robustlab_errors_with_advice():
    lin, x, y = problem(n=10)
    with pytest.raises(RobustlabError, match="Did you mean"):
        create("apgd-cee")
    with pytest.raises(ConfigError, match="steps"):
        create("apgd-ce", stpes=3)
    with pytest.raises(ConfigError, match="margin"):
        create("pgd", loss="margn")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_model_and_inputs_on_different_devices():
    lin, x, y = problem(n=10)
    with pytest.raises(InvalidInputError, match="device|cuda"):
        create("pgd")(lin.cuda(), x, y, ThreatModel("linf", 0.1))
