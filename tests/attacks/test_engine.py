"""Engine pieces shared by the attacks: the counted Jacobian, dtype of the logits handed
to step logic, box clipping, per-row records of ensemble members, the black-box attribute."""

import pytest
import torch
from torch import nn

from robustlab.attacks import Attack, AttackContext, ThreatModel, create
from robustlab.attacks.ensemble import is_black_box
from tests.attacks.helpers import gen, linear_model, problem


def test_jacobian_of_a_linear_model_is_its_weight_matrix_and_is_counted():
    lin = linear_model(d=7, k=5, seed=3)
    x = torch.rand(6, 7, generator=gen(1))
    ctx = AttackContext(lin, (0.0, 1.0), gen(0))
    logits, jac = ctx.jacobian(x)
    assert torch.allclose(logits, lin(x).detach())
    assert jac.shape == (6, 5, 7)
    assert torch.allclose(jac, lin.weight.detach().expand(6, 5, 7))
    assert ctx.forwards == 6 and ctx.backwards == 6 * 5  # one backward per class and point
    assert all(p.grad is None for p in lin.parameters())


def test_jacobian_matches_autograd_on_a_nonlinear_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x = torch.rand(4, 2, 4, generator=gen(2), dtype=torch.float64)
    _, jac = AttackContext(model, (0.0, 1.0), gen(0)).jacobian(x)
    for i in range(len(x)):
        full = torch.autograd.functional.jacobian(lambda z, i=i: model(z[None])[0], x[i])
        assert torch.allclose(jac[i], full, atol=1e-12)


def test_float64_logits_stay_float64_and_half_precision_is_upcast():
    lin = linear_model(d=5, k=4, seed=0)
    x = torch.rand(3, 5, generator=gen(0))
    loss = lambda z, y: z.gather(1, y[:, None]).squeeze(1)  # noqa: E731
    y = torch.zeros(3, dtype=torch.long)
    for dtype, expected in ((torch.float64, torch.float64), (torch.bfloat16, torch.float32)):
        model = linear_model(d=5, k=4, seed=0).to(dtype)
        ctx = AttackContext(model, (0.0, 1.0), gen(0))
        xd = x.to(dtype)
        assert ctx.logits(xd).dtype == expected
        assert ctx.logits(xd, exact=True).dtype == expected
        assert ctx.value_and_grad(xd, loss, y)[2].dtype == expected
        assert ctx.jacobian(xd)[0].dtype == expected
    # float64 keeps precision a float32 round trip would lose
    m64 = lin.double()
    x64 = torch.full((1, 5), 0.5, dtype=torch.float64) + 1e-12
    assert torch.equal(AttackContext(m64, (0.0, 1.0), gen(0)).logits(x64), m64(x64).detach())


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_clip_to_box_is_the_projection_onto_the_box_alone(norm):
    z = 3 * torch.randn(10, 6, generator=gen(4))
    bounds = (-0.5, 1.5)
    out = ThreatModel.clip_to_box(z, bounds)
    assert torch.equal(out, z.clamp(-0.5, 1.5))
    # projecting onto the ball around the point itself leaves only the box
    assert torch.equal(out, ThreatModel(norm, 0.3).project(z, z, bounds))


class _Probe(Attack):
    """Breaks nothing; records one value per row it sees and reports itself as black-box."""

    norms = ("linf", "l2", "l1")
    black_box = True

    def perturb(self, ctx, x, y, threat, target):
        ctx.record_rows("probe", torch.arange(len(x), dtype=torch.float32) + 100.0, fill=-1.0)
        return x.clone()


def test_members_recording_rows_are_scattered_into_the_ensemble_rows():
    lin, x, y = problem(n=120)
    t = ThreatModel("linf", 0.05)
    r = create("ensemble", members=[("fgsm", {}), _Probe()])(lin, x, y, t, generator=gen(0))
    probe = r.info["probe"]
    assert probe.shape == (len(x),)
    seen = r.info["broken_by"] != 0
    seen &= r.clean_correct
    # the probe saw exactly the points still robust after FGSM, in order
    assert torch.equal(probe[seen], torch.arange(int(seen.sum()), dtype=torch.float32) + 100.0)
    assert bool((probe[~r.clean_correct] == -1.0).all())  # not attacked by the ensemble: fill
    assert bool(probe[r.clean_correct & ~seen].isnan().all())  # broken before the probe ran
    assert r.info["stage_black_box"] == [False, True]


def test_fab_min_norm_inside_an_ensemble_and_alone():
    lin, x, y = problem(n=150)
    t = ThreatModel("l2", 0.3)
    fab = ("fab-t", {"n_iter": 20, "n_target_classes": 3})
    r = create("ensemble", members=[("fgsm", {}), fab])(lin, x, y, t, generator=gen(0))
    mn = r.info["min_norm"]
    by_fab = r.info["broken_by"] == 1
    assert bool(by_fab.any())
    assert torch.allclose(mn[by_fab], t.norm_of(r.x_adv - x)[by_fab])
    assert bool((mn[by_fab] <= t.eps * (1 + 1e-6)).all())
    assert bool((mn[r.info["broken_by"] == -1] > t.eps).all())  # robust: nothing within eps
    assert bool((mn[~r.clean_correct] == 0).all())
    assert bool(mn[r.info["broken_by"] == 0].isnan().all())  # FGSM broke them: not measured
    alone = create("fab-t", n_iter=20, n_target_classes=3)(lin, x, y, t, generator=gen(0))
    ok = alone.success & alone.clean_correct
    assert torch.allclose(alone.info["min_norm"][ok], t.norm_of(alone.x_adv - x)[ok])
    assert bool((alone.info["min_norm"][alone.robust] > t.eps).all())


def test_cw_records_the_smallest_adversarial_norm_it_saw():
    lin, x, y = problem(n=60, k=2, d=6)
    t = ThreatModel("l2", 0.2)
    r = create("cw-l2", steps=50, binary_search_steps=3)(lin, x, y, t, generator=gen(0))
    mn = r.info["min_norm"]
    ok = r.success & r.clean_correct
    assert bool(ok.any()) and bool(r.robust.any())
    assert bool((mn[ok] <= t.eps + 1e-6).all())
    assert torch.allclose(mn[ok], t.norm_of(r.x_adv - x)[ok], atol=1e-5)
    assert bool((mn[r.robust] > t.eps).all())
    assert bool((mn[~r.clean_correct] == 0).all())
    # CW inside an ensemble no longer crashes the template and keeps its record
    e = create("ensemble", members=[("fgsm", {}), ("cw-l2", {"steps": 50, "binary_search_steps": 3})])
    re = e(lin, x, y, t, generator=gen(0))
    assert re.info["min_norm"].shape == (len(x),)


def test_black_box_comes_from_the_class_attribute_not_the_name():
    assert is_black_box(create("square")) and not is_black_box(create("apgd-ce"))
    assert is_black_box(create("eot", attack="square", samples=2, params={"n_queries": 5}))
    assert is_black_box(_Probe())
