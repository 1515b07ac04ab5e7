"""PGD against closed-form truths on linear models, plus the template's contract."""

import math

import pytest
import torch
from torch import nn

from robustlab.attacks import ThreatModel, attacks, create
from robustlab.errors import (
    ConfigError,
    EpsilonError,
    InvalidInputError,
    LabelError,
    NonFiniteInputError,
)
from tests.attacks.helpers import cheap


def linear_model(d=12, k=4, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(d, k)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(k, d, generator=g) * scale / math.sqrt(d))
        lin.bias.copy_(torch.randn(k, generator=g) * 0.1)
    return lin


def exact_linf_robust(lin: nn.Linear, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """A point is robust iff for every j != y the minimum over the box-clipped L-inf ball
    of (w_y - w_j).x + (b_y - b_j) is positive; the minimiser is coordinate-wise."""
    W, b = lin.weight.detach(), lin.bias.detach()
    robust = lin(x).argmax(1) == y
    for j in range(W.shape[0]):
        a = W[y] - W[j]
        x_star = torch.where(a > 0, (x - eps).clamp(0, 1), (x + eps).clamp(0, 1))
        margin = (a * x_star).sum(1) + b[y] - b[j]
        robust &= (margin > 0) | (y == j)
    return robust


@pytest.fixture
def problem():
    lin = linear_model()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(300, 12, generator=g)
    y = lin(x).argmax(1).detach()
    y[:20] = (y[:20] + 1) % 4  # some clean-misclassified points
    return lin, x, y


@pytest.mark.parametrize("eps", [0.02, 0.05, 0.1])
def test_multitargeted_pgd_is_exact_on_linear_model(problem, eps):
    lin, x, y = problem
    exact = exact_linf_robust(lin, x, y, eps)
    assert 0.05 < exact.float().mean() < 0.95  # a non-trivial case
    res = create("pgd", steps=10, loss="margin", targets=3)(
        lin, x, y, ThreatModel("linf", eps), generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(res.robust, exact)


def test_untargeted_pgd_exact_for_binary_linear_model():
    lin = linear_model(d=10, k=2, seed=3)
    x = torch.rand(400, 10, generator=torch.Generator().manual_seed(2))
    y = lin(x).argmax(1).detach()
    for eps in (0.03, 0.1):
        exact = exact_linf_robust(lin, x, y, eps)
        res = create("pgd", steps=20)(lin, x, y, ThreatModel("linf", eps), generator=torch.Generator().manual_seed(0))
        assert torch.equal(res.robust, exact)


def test_untargeted_ce_pgd_is_an_upper_bound_close_to_exact(problem):
    lin, x, y = problem
    exact = exact_linf_robust(lin, x, y, 0.05)
    res = create("pgd", steps=20, restarts=2)(lin, x, y, ThreatModel("linf", 0.05), generator=torch.Generator().manual_seed(0))
    # an attack can never beat the exact minimum: every broken point is truly non-robust
    assert not bool((res.success & res.clean_correct & exact).any())
    assert res.robust_accuracy >= exact.float().mean().item() - 1e-9
    assert res.robust_accuracy - exact.float().mean().item() <= 0.05


def test_l2_pgd_finds_minimal_perturbation_of_binary_linear_model():
    # far from the box edges, the minimal L2 perturbation is |margin| / ||w_1 - w_0||
    lin = linear_model(d=8, k=2, seed=5)
    x = 0.4 + 0.2 * torch.rand(200, 8, generator=torch.Generator().manual_seed(3))
    y = lin(x).argmax(1).detach()
    W, b = lin.weight.detach(), lin.bias.detach()
    a = W[1] - W[0]
    dist = ((x @ a + b[1] - b[0]).abs() / a.norm())
    eps = 0.05
    expected_robust = dist > eps
    res = create("pgd", steps=40)(lin, x, y, ThreatModel("l2", eps), generator=torch.Generator().manual_seed(0))
    borderline = (dist - eps).abs() < 1e-4
    assert torch.equal(res.robust[~borderline], expected_robust[~borderline])


@pytest.mark.parametrize("name", attacks.available())
@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.5)])
def test_contract(name, norm, eps):
    # every registered attack (small budgets from helpers.CHEAP) that runs on 3 classes;
    # tests/attacks/test_contract.py covers all of them on 5 classes and every norm
    atk = create(name, **cheap(name))
    if norm not in atk.norms or atk.required_classes(False) > 3:
        pytest.skip(f"{name} does not run on a 3-class {norm} problem (see test_contract.py)")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Dropout(0.5), nn.ReLU(), nn.Linear(8, 3))
    model.train()
    x = torch.rand(32, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 3, (32,), generator=torch.Generator().manual_seed(1))
    threat = ThreatModel(norm, eps)
    r1 = atk(model, x, y, threat, generator=torch.Generator().manual_seed(7))
    r2 = atk(model, x, y, threat, generator=torch.Generator().manual_seed(7))
    assert model.training  # mode restored
    assert all(p.grad is None for p in model.parameters())  # no parameter gradients
    assert all(p.requires_grad for p in model.parameters())
    assert r1.x_adv.shape == x.shape and r1.x_adv.dtype == x.dtype
    assert torch.equal(r1.x_adv, r2.x_adv) and torch.equal(r1.success, r2.success)
    assert r1.x_adv.min() >= 0 and r1.x_adv.max() <= 1
    assert (threat.norm_of(r1.x_adv - x) <= eps * (1 + 1e-5)).all()
    # success is what the model says about x_adv in eval mode
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(r1.x_adv).argmax(1) != y, r1.success)
    # a batch of one works
    one = atk(model, x[:1], y[:1], threat, generator=torch.Generator().manual_seed(7))
    assert one.x_adv.shape == (1, 1, 4, 4)


def test_success_monotone_in_eps_for_linear_model(problem):
    lin, x, y = problem
    atk = create("pgd", steps=10, loss="margin", targets=3)
    prev = None
    for eps in (0.0, 0.02, 0.05, 0.1, 0.2):
        r = atk(lin, x, y, ThreatModel("linf", eps), generator=torch.Generator().manual_seed(0))
        if prev is not None:
            assert bool((r.success | ~prev).all())  # broken at eps => broken at larger eps
        prev = r.success


def test_targeted_pgd_reaches_target_when_possible(problem):
    lin, x, y = problem
    target = (y + 1) % 4
    r = create("pgd", steps=10, loss="margin")(lin, x, y, ThreatModel("linf", 1.0), target=target,
                                               generator=torch.Generator().manual_seed(0))
    assert r.targeted
    with torch.no_grad():
        assert torch.equal(lin(r.x_adv).argmax(1) == target, r.success)


def test_fgsm_is_one_sign_step_of_size_eps():
    lin = linear_model(d=6, k=2, seed=1)
    x = torch.full((5, 6), 0.5)
    y = torch.zeros(5, dtype=torch.long)
    with torch.no_grad():
        lin.bias.copy_(torch.tensor([8.0, 0.0]))  # stays correct: the attack cannot stop early
    r = create("fgsm")(lin, x, y, ThreatModel("linf", 0.1))
    grad_dir = (lin.weight[1] - lin.weight[0]).sign().detach()
    assert torch.allclose(r.x_adv, x + 0.1 * grad_dir, atol=1e-6)


def test_bad_inputs_are_refused(problem):
    lin, x, y = problem
    atk = create("pgd")
    t = ThreatModel("linf", 0.1)
    with pytest.raises(EpsilonError):
        ThreatModel("linf", -0.1)
    with pytest.raises(EpsilonError, match="255"):
        ThreatModel("linf", 8)
    with pytest.raises(EpsilonError):
        atk(lin, x, y, ThreatModel("l2", 100.0))
    with pytest.raises(ConfigError, match="norm"):
        ThreatModel("l3", 0.1)
    with pytest.raises(InvalidInputError, match="dtype"):
        atk(lin, (x * 255).long(), y, t)
    bad = x.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(NonFiniteInputError):
        atk(lin, bad, y, t)
    with pytest.raises(InvalidInputError, match=r"\[0, 1\]"):
        atk(lin, x * 2, y, t)
    with pytest.raises(LabelError, match=r"\[0, 3\]"):
        atk(lin, x, y + 4, t)
    with pytest.raises(ConfigError):
        create("pgd", steps=0)
    with pytest.raises(ConfigError, match="margin"):
        create("pgd", loss="margn")


def test_eps_fractions_parse():
    assert ThreatModel("linf", "8/255").eps == pytest.approx(8 / 255)
    assert ThreatModel("Linf", 0.1).norm == "linf"
