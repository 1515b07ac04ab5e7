"""Transfer attacks (mi-fgsm, cwa): what they compute, where their outputs lie, and how
they refuse surrogates that do not fit the attacked model."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from robustlab.attacks import ThreatModel, create
from robustlab.attacks.engine import AttackContext
from robustlab.attacks.transfer import CWA_INNER_STEP, diverse_input
from robustlab.errors import ConfigError, InvalidInputError, ShapeMismatchError
from tests.attacks.helpers import gen, problem


def small_cnn(seed: int = 0, k: int = 4, side: int = 8) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * side * side, k)
    )
    net.num_classes = k  # type: ignore[assignment]
    net.input_shape = (1, side, side)  # type: ignore[assignment]
    return net


def images(n: int = 24, side: int = 8, seed: int = 1) -> torch.Tensor:
    x = torch.rand(n, 1, side, side, generator=gen(seed))
    x[:, :, 0, :] = 0.0  # pixels on the box's edges, where only the box stops a step
    x[:, :, -1, :] = 1.0
    return x


def labelled(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net(x).argmax(1)


# -- what they compute ---------------------------------------------------------------------
def test_crafting_on_an_identical_copy_is_the_white_box_attack():
    net = small_cnn()
    twin = copy.deepcopy(net)
    x = images()
    y = labelled(net, x)
    y[:3] = (y[:3] + 1) % 4  # some clean-misclassified points
    t = ThreatModel("linf", 0.1)
    for name, params in [("mi-fgsm", {}), ("mi-fgsm", {"diversity_prob": 0.5}), ("cwa", {"steps": 4})]:
        white = create(name, **params)(net, x, y, t, generator=gen(3))
        trans = create(name, surrogates=[twin], **params)(net, x, y, t, generator=gen(3))
        assert torch.equal(white.x_adv, trans.x_adv), name
        assert torch.equal(white.success, trans.success) and 0 < int(white.success.sum()) < len(x)
        # the transfer run never asked the target for a gradient: only the clean pass and
        # the re-check of the 21 attacked points went through it
        assert trans.backwards == 0 and trans.forwards == len(x) + 21
        assert white.backwards > 0 and trans.info["surrogate_backwards"] == white.backwards


def test_one_step_of_mi_fgsm_is_fgsm_and_no_momentum_is_i_fgsm():
    lin, x, y = problem(n=60, d=12, k=4)
    t = ThreatModel("linf", 0.1)
    one = create("mi-fgsm", steps=1)(lin, x, y, t)
    fgsm = create("fgsm")(lin, x, y, t)
    assert torch.equal(one.x_adv, fgsm.x_adv)
    # mu = 0: I-FGSM, which is PGD without random start, final iterate (PGD's generate)
    a = create("mi-fgsm", steps=5, mu=0.0).generate(lin, x, y, t, generator=gen())
    b = create("pgd", steps=5, step_size=0.02, random_start=False).generate(lin, x, y, t, generator=gen())
    assert torch.equal(a, b)
    # momentum changes the path: with mu = 1 the iterate differs from I-FGSM's somewhere
    c = create("mi-fgsm", steps=5).generate(lin, x, y, t, generator=gen())
    assert not torch.equal(a, c)


def test_mi_fgsm_momentum_is_the_sum_of_l1_normalised_gradients():
    """On a linear model with one input the gradient of CE has a closed form; two steps of
    Eq. (6)-(7) by hand."""
    torch.manual_seed(0)
    lin = nn.Linear(3, 2).double()
    x = torch.tensor([[0.5, 0.4, 0.6]], dtype=torch.float64)
    y = torch.tensor([int(lin(x).argmax(1))])
    eps, alpha = 0.2, 0.05

    def grad(v: torch.Tensor) -> torch.Tensor:
        p = torch.softmax(lin(v), 1)
        onehot = torch.nn.functional.one_hot(y, 2).double()
        return (p - onehot) @ lin.weight.detach()

    g, v = torch.zeros_like(x), x.clone()
    for _ in range(2):
        d = grad(v)
        g = g + d / d.abs().sum()
        v = (v + alpha * g.sign()).clamp(x - eps, x + eps).clamp(0, 1)
    out = create("mi-fgsm", steps=2, step_size=alpha).generate(lin, x, y, ThreatModel("linf", eps), generator=gen())
    assert torch.allclose(out, v.detach(), atol=1e-12)


def test_cwa_with_one_surrogate_reduces_to_its_mi_fgsm_core():
    """No reverse step, no inner momentum and an inner step the ball never clips: the
    displacement of the inner step is beta * g / ||g||_2, so the outer momentum adds
    g / ||g||_1, which is MI-FGSM's update."""
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    x = 0.3 + 0.4 * torch.rand(40, 10, generator=gen(2), dtype=torch.float64)
    y = labelled(lin, x)
    t = ThreatModel("linf", 0.2)
    twin = copy.deepcopy(lin)
    core = create("cwa", surrogates=[twin], steps=6, step_size=0.02, reverse_step_size=0.0, inner_mu=0.0,
                  inner_step_size=1e-4).generate(lin, x, y, t, generator=gen())
    mi = create("mi-fgsm", surrogates=[twin], steps=6, step_size=0.02).generate(lin, x, y, t, generator=gen())
    assert torch.equal(core, mi)
    # the full attack (reverse step, inner momentum, large inner steps) is another one
    net = small_cnn()
    xi = images()
    yi = labelled(net, xi)
    ti = ThreatModel("linf", 0.1)
    full = create("cwa", surrogates=[net]).generate(net, xi, yi, ti, generator=gen())
    mi = create("mi-fgsm", surrogates=[net], step_size=0.02).generate(net, xi, yi, ti, generator=gen())
    assert (full - mi).abs().max() > 0.05


def test_cwa_defaults_are_the_official_ones_scaled_to_eps_and_size():
    atk = create("cwa")
    assert (atk.steps, atk.mu, atk.inner_mu) == (10, 1.0, None)
    alpha, r, beta = atk.steps_for(ThreatModel("linf", 16 / 255), 3 * 224 * 224)
    assert alpha == pytest.approx(3.2 / 255) and r == pytest.approx(16 / 255 / 15)
    assert beta == pytest.approx(250.0) and CWA_INNER_STEP == pytest.approx(10.2696, abs=1e-4)
    assert create("mi-fgsm")._alpha(ThreatModel("linf", 16 / 255)) == pytest.approx(1.6 / 255)


def test_examples_crafted_on_a_model_transfer_to_a_slightly_changed_copy():
    """A target whose weights differ from the surrogate's by a little noise is broken on
    nearly the same points as the surrogate itself (a continuity check of the transfer
    path: crafting sees only the surrogate, judging only the target)."""
    a = small_cnn(seed=0)
    b = copy.deepcopy(a)
    with torch.no_grad():
        for p in b.parameters():
            p.add_(1e-3 * torch.randn(p.shape, generator=gen(9)))
    x = images(n=64)
    y = labelled(a, x)
    t = ThreatModel("linf", 0.15)
    for name in ("mi-fgsm", "cwa"):
        on_a = create(name)(a, x, y, t)
        on_b = create(name, surrogates=[a])(b, x, y, t)
        ok = on_a.clean_correct & on_b.clean_correct
        assert int(ok.sum()) >= 60 and 30 < int(on_a.success[ok].sum()) < 55  # measured 43 and 42
        assert int((on_a.success[ok] != on_b.success[ok]).sum()) <= 3  # measured 1 and 1


# -- where outputs lie ---------------------------------------------------------------------
@pytest.mark.parametrize("name,norm,params", [
    ("mi-fgsm", "linf", {}), ("mi-fgsm", "l2", {}), ("mi-fgsm", "linf", {"diversity_prob": 1.0}),
    ("cwa", "linf", {}), ("cwa", "l2", {}), ("cwa", "linf", {"diversity_prob": 1.0, "surrogates": "two"}),
])
def test_every_iterate_returned_is_inside_the_ball_and_the_box(name, norm, params):
    net = small_cnn()
    x = images()
    y = labelled(net, x)
    eps = 0.1 if norm == "linf" else 1.0
    t = ThreatModel(norm, eps)
    params = dict(params)
    if params.get("surrogates") == "two":
        params["surrogates"] = [small_cnn(seed=1), small_cnn(seed=2)]
    atk = create(name, steps=5, **params)
    # the step logic itself (before the template's own guard projection)
    ctx = AttackContext(net, (0.0, 1.0), gen())
    out = atk.perturb(ctx, x, y, t, None)
    dist = t.norm_of(out - x)
    assert float(dist.max()) <= eps * (1 + 1e-6) and float(dist.max()) > 0.5 * eps
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    res = atk(net, x, y, t)
    assert float(t.norm_of(res.x_adv - x).max()) <= eps * (1 + 1e-6)
    assert 0.0 <= float(res.x_adv.min()) and float(res.x_adv.max()) <= 1.0


def test_input_diversity_resizes_and_pads_within_the_scaled_margin():
    x = torch.ones(2, 1, 28, 28)
    assert diverse_input(x, 0.0, gen(), (0.0, 1.0)) is x
    seen = set()
    for s in range(40):
        out = diverse_input(x, 1.0, gen(s), (0.0, 1.0))
        assert out.shape == x.shape and set(out.unique().tolist()) <= {0.5, 1.0}
        # the padded 31-pixel image resized back (nearest): at most 3 of 31 rows were
        # padding, and resizing may skip a padded row
        rows = int((out[0, 0] == 0.5).all(1).sum())
        assert 0 <= rows <= 3
        seen.add(rows)
    assert {1, 2} <= seen
    # one draw for the batch: every image gets the same transform
    out = diverse_input(torch.ones(3, 1, 28, 28), 1.0, gen(7), (0.0, 1.0))
    assert torch.equal(out[0], out[2])
    # probability 0.5: some steps keep the input as it is
    kept = sum(torch.equal(diverse_input(x, 0.5, gen(s), (0.0, 1.0)), x) for s in range(40))
    assert 5 < kept < 35


def test_surrogate_attacks_are_black_box_members_of_an_ensemble():
    net, twin = small_cnn(), small_cnn(seed=3)
    assert create("mi-fgsm").black_box is False and create("mi-fgsm", surrogates=[twin]).black_box is True
    x = images()
    y = labelled(net, x)
    res = create("ensemble", members=[("fgsm", {}), ("mi-fgsm", {"surrogates": [twin]})])(
        net, x, y, ThreatModel("linf", 0.1))
    assert res.info["stage_black_box"] == [False, True]
    assert "<1 model(s)>" in repr(create("cwa", surrogates=[twin]))


# -- refusals --------------------------------------------------------------------------------
def test_surrogates_that_do_not_fit_the_target_are_refused():
    net = small_cnn(k=4)
    x = images()
    y = labelled(net, x)
    t = ThreatModel("linf", 0.1)
    for name in ("mi-fgsm", "cwa"):
        with pytest.raises(ConfigError, match="at least one surrogate"):
            create(name, surrogates=[])
        with pytest.raises(ConfigError, match="not a torch model"):
            create(name, surrogates=[net, "resnet"])
        with pytest.raises(ShapeMismatchError, match="5 classes but the attacked model has 4"):
            create(name, surrogates=[small_cnn(k=5)])(net, x, y, t)
        with pytest.raises(ShapeMismatchError, match=r"surrogate 0 expects \(1, 10, 10\)"):
            create(name, surrogates=[small_cnn(side=10)])(net, x, y, t)
        undeclared = nn.Sequential(nn.Flatten(), nn.Linear(100, 4))
        with pytest.raises(ShapeMismatchError, match="cannot take inputs of per-sample shape"):
            create(name, surrogates=[undeclared])(net, x, y, t)
        other_box = small_cnn()
        other_box.input_bounds = (-1.0, 1.0)  # type: ignore[assignment]
        with pytest.raises(InvalidInputError, match="same input range"):
            create(name, surrogates=[other_box]).generate(net, x, y, t, generator=gen())
        with pytest.raises(ConfigError, match="clean logits"):
            create(name, loss="kl")
    lin, xv, yv = problem(n=10)
    with pytest.raises(ConfigError, match="diversity_prob=0"):
        create("mi-fgsm", diversity_prob=0.5)(lin, xv, yv, t)
    with pytest.raises(ConfigError, match="diversity_prob"):
        create("cwa", diversity_prob=1.5)
