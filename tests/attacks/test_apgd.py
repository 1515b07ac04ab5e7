"""APGD: the step-size schedule on scripted losses, the losses' values, the algorithm
against a plain (uncompacted) transcription, and closed-form oracles on linear models."""

import pytest
import torch
import torch.nn.functional as F

from robustlab.attacks import (
    APGDStepSchedule,
    L1SparsitySchedule,
    ThreatModel,
    apgd_checkpoints,
    create,
    dlr_loss,
    margin_loss,
    probability_margin_loss,
)
from robustlab.attacks.apgd import large_eps_schedule
from robustlab.errors import ConfigError
from tests.attacks.helpers import exact_l1_robust, exact_linf_robust, gen, linear_model, problem


# -- the schedule ------------------------------------------------------------------------
def test_checkpoints_follow_the_paper():
    # p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert apgd_checkpoints(1000) == [220, 410, 570, 700, 800, 870, 930, 990]
    assert apgd_checkpoints(10) == [2, 3, 4, 5, 6, 7, 8, 9, 10]


def run_schedule(losses, loss0, steps=100):
    sched = APGDStepSchedule(steps, torch.tensor([loss0]), step0=1.0)
    decisions = []
    for i, v in enumerate(losses):
        sched.record(i, torch.tensor([v]))
        r = sched.check()
        if r is not None:
            decisions.append((i + 1, bool(r[0])))
    return decisions, float(sched.step[0])


def script(windows):
    """Loss sequence from per-window step lists (+1 up, -0.5 down, or an explicit jump)."""
    vals, v = [], 0.0
    for w in windows:
        for s in w:
            v += s
            vals.append(v)
    return vals


def test_increasing_loss_never_halves_the_step():
    decisions, step = run_schedule([float(i) for i in range(1, 101)], 0.0)
    assert [c for c, _ in decisions] == [22, 41, 57, 70, 80, 87, 93, 99]
    assert not any(r for _, r in decisions) and step == 1.0


def test_constant_loss_halves_at_every_checkpoint():
    decisions, step = run_schedule([1.0] * 100, 1.0)
    assert all(r for _, r in decisions) and step == pytest.approx(1 / 2**8)


def test_hand_written_sequence_exercises_both_conditions():
    up, down = 1.0, -0.5
    losses = script([
        [up] * 17 + [down] * 5,            # 22 steps, 17 increases > 0.75*22: keep
        [up] * 14 + [down] * 5,            # 19 steps, 14 <= 14.25: halve (oscillation)
        [up] * 12 + [down] * 4,            # 16 steps, 12 <= 12: halve (the official <=)
        [up] * 10 + [down] * 3,            # 13 steps, 10 > 9.75; halved last time: keep
        [-1000.0] + [up] * 9,              # 10 steps, 9 > 7.5, best not improved and not
                                           #   halved last time: halve (stall)
        [up] * 7,                          # 7 steps, no gain but halved last time: keep
        [up] * 6,                          # 6 steps, no gain, kept last time: halve
        [2000.0] + [up] * 5,               # 6 steps, new best: keep
        [up],
    ])
    assert len(losses) == 100
    decisions, step = run_schedule(losses, 0.0)
    assert decisions == [(22, False), (41, True), (57, True), (70, False), (80, True), (87, False), (93, True), (99, False)]
    assert step == pytest.approx(1 / 16)


def test_first_window_compares_against_zero_like_the_official_code():
    # negative (DLR-like) losses: iterate 1 beats the start (-5) but not the buffer's 0,
    # so the first window counts 16 increases (<= 16.5) and the step is halved
    losses = script([[1.0] * 17 + [-0.5] * 5])
    losses = [v - 5.0 for v in losses] + [100.0] * 78
    decisions, _ = run_schedule(losses, -5.0)
    assert decisions[0] == (22, True)


def test_schedule_is_per_sample_and_compacts():
    sched = APGDStepSchedule(100, torch.zeros(3), step0=2.0)
    for i in range(22):
        sched.record(i, torch.tensor([float(i + 1), 1.0, float(i + 1)]))
        r = sched.check()
    assert r.tolist() == [False, True, False]
    assert sched.step.tolist() == [2.0, 1.0, 2.0]
    sched.keep(torch.tensor([False, True, True]))
    assert sched.step.tolist() == [1.0, 2.0] and sched.history.shape == (100, 2)


def test_l1_sparsity_schedule():
    sched = L1SparsitySchedule(100, torch.zeros(1), step0=1.0, d=100)
    assert sched.k == 4 and float(sched.topk[0]) == pytest.approx(0.2)
    l0s = [50, 49, 49, 49, 49, 49, 49, 20]
    steps, resets = [], []
    for l0 in l0s:
        for i in range(4):
            sched.record(i, torch.zeros(1))
            r = sched.check(torch.tensor([l0]))
        resets.append(bool(r[0]))
        steps.append(float(sched.step[0]))
    # 50/100 < 0.95: reset; then 49/50 = 0.98: divide by 1.5 until the floor 0.1; 20/49: reset
    assert resets == [True, False, False, False, False, False, False, True]
    assert steps == pytest.approx([1.0, 1 / 1.5, 1 / 1.5**2, 1 / 1.5**3, 1 / 1.5**4, 1 / 1.5**5, 0.1, 1.0])
    assert float(sched.topk[0]) == pytest.approx(20 / 100 / 1.5)


def test_large_eps_stages():
    assert large_eps_schedule(2.0, 100) == [(6.0, 30), (4.0, 30), (2.0, 40)]
    assert large_eps_schedule(1.0, 10) == [(3.0, 3), (2.0, 3), (1.0, 4)]


# -- losses ------------------------------------------------------------------------------
def test_loss_values_on_hand_computed_logits():
    z = torch.tensor([[3.0, 1.0, 2.0, 0.0], [0.0, 4.0, 1.0, 2.0]])
    y = torch.tensor([0, 2])
    t = torch.tensor([1, 3])
    # sorted: [3, 2, 1, 0] and [4, 2, 1, 0]
    assert torch.allclose(dlr_loss(z, y), torch.tensor([-(3 - 2) / (3 - 1), -(1 - 4) / (4 - 1)]))
    assert torch.allclose(dlr_loss(z, y, t), torch.tensor([-(3 - 1) / (3 - 0.5 * (1 + 0)), -(1 - 2) / (4 - 0.5 * (1 + 0))]))
    p = z.softmax(1)
    assert torch.allclose(probability_margin_loss(z, y), torch.stack([p[0, 2] - p[0, 0], p[1, 1] - p[1, 2]]))
    assert torch.allclose(probability_margin_loss(z, y, t), torch.stack([p[0, 1] - p[0, 0], p[1, 3] - p[1, 1]]))
    assert torch.allclose(margin_loss(z, y), torch.tensor([2.0 - 3.0, 4.0 - 1.0]))
    # DLR is invariant to shifting and scaling the logits (its point)
    assert torch.allclose(dlr_loss(5 * z + 7, y), dlr_loss(z, y))


def test_dlr_needs_enough_classes():
    lin = linear_model(d=6, k=3)
    x = torch.rand(10, 6, generator=gen(0))
    y = lin(x).argmax(1).detach()
    with pytest.raises(ConfigError, match="4 classes"):
        create("apgd-t", steps=2, targets=2)(lin, x, y, ThreatModel("linf", 0.1))
    create("apgd-dlr", steps=2)(lin, x, y, ThreatModel("linf", 0.1))  # 3 classes suffice
    lin2 = linear_model(d=6, k=2)
    with pytest.raises(ConfigError, match="3 classes"):
        create("apgd-dlr", steps=2)(lin2, x, lin2(x).argmax(1).detach(), ThreatModel("linf", 0.1))


# -- the algorithm against a plain transcription -----------------------------------------
def plain_apgd_linf(model, x, y, eps, steps, generator, rho=0.75):
    """APGD-CE as the paper and the official code describe it, without compaction: every
    point runs all steps; returns the first misclassified iterate per point (or None)."""
    n = len(x)
    t = 2 * torch.rand(x.shape, generator=generator, dtype=x.dtype) - 1
    x_adv = (x + eps * t / (t.abs().reshape(n, -1).amax(1).reshape(-1, 1) + 1e-12)).clamp(0, 1)

    def lg(z):
        z = z.clone().requires_grad_(True)
        out = model(z)
        loss = F.cross_entropy(out, y, reduction="none")
        (g,) = torch.autograd.grad(loss.sum(), z)
        return loss.detach(), g, out.detach()

    loss, grad, out = lg(x_adv)
    first = [x_adv[i].clone() if out[i].argmax() != y[i] else None for i in range(n)]
    x_best, g_best, l_best = x_adv.clone(), grad.clone(), loss.clone()
    step = torch.full((n, 1), 2.0 * eps, dtype=x.dtype)
    x_old = x_adv.clone()
    hist = torch.zeros(steps, n)
    checks = set(apgd_checkpoints(steps))
    k, k_min, decr = max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)
    l_last, reduced_last = l_best.clone(), torch.ones(n, dtype=torch.bool)
    proj = lambda z: torch.minimum(torch.maximum(z, x - eps), x + eps).clamp(0, 1)  # noqa: E731
    for i in range(steps):
        mom = x_adv - x_old
        x_old = x_adv.clone()
        a = 0.75 if i > 0 else 1.0
        z = proj(x_adv + step * grad.sign())
        x_adv = proj(x_adv + a * (z - x_adv) + (1 - a) * mom)
        loss, grad, out = lg(x_adv)
        for j in range(n):
            if first[j] is None and out[j].argmax() != y[j]:
                first[j] = x_adv[j].clone()
        hist[i] = loss
        better = loss > l_best
        x_best[better], g_best[better], l_best[better] = x_adv[better], grad[better], loss[better]
        if i + 1 in checks:
            prev = [hist[i - c - 1] if i - c - 1 >= 0 else torch.zeros(n) for c in range(k)]
            inc = sum((hist[i - c] > prev[c]).float() for c in range(k))
            red = (inc <= k * rho) | (~reduced_last & (l_last >= l_best))
            reduced_last, l_last = red, l_best.clone()
            step[red] /= 2
            x_adv[red], grad[red] = x_best[red], g_best[red]
            k = max(k - decr, k_min)
    return first


def test_apgd_equals_a_plain_uncompacted_run():
    lin, x, y = problem(n=120, wrong=0)
    lin = lin.double()
    x = x.double()
    eps = 0.05
    res = create("apgd-ce", steps=30)(lin, x, y, ThreatModel("linf", eps), generator=gen(3))
    first = plain_apgd_linf(lin, x, y, eps, 30, gen(3))
    plain_success = torch.tensor([f is not None for f in first])
    assert 5 < int(plain_success.sum()) < 115  # a non-trivial case
    assert torch.equal(res.success, plain_success)
    for i in plain_success.nonzero().squeeze(1).tolist():
        assert torch.allclose(res.x_adv[i], first[i], atol=1e-12)


# -- oracles -----------------------------------------------------------------------------
@pytest.mark.parametrize("eps", [0.02, 0.05, 0.1])
def test_apgd_t_within_one_point_of_exact_linf(eps):
    lin, x, y = problem()
    exact = exact_linf_robust(lin, x, y, eps)
    assert 0.05 < exact.float().mean() < 0.95
    res = create("apgd-t", targets=3)(lin, x, y, ThreatModel("linf", eps), generator=gen(0))
    assert not bool((res.success & res.clean_correct & exact).any())  # never beats the truth
    assert res.robust_accuracy - exact.float().mean().item() <= 0.01


def test_apgd_ce_l2_finds_the_minimal_perturbation_of_a_binary_linear_model():
    lin = linear_model(d=8, k=2, seed=5)
    x = 0.4 + 0.2 * torch.rand(200, 8, generator=gen(3))
    y = lin(x).argmax(1).detach()
    a = (lin.weight[1] - lin.weight[0]).detach()
    dist = (x @ a + lin.bias[1].detach() - lin.bias[0].detach()).abs() / a.norm()
    eps = 0.05
    res = create("apgd-ce", steps=20)(lin, x, y, ThreatModel("l2", eps), generator=gen(0))
    border = (dist - eps).abs() < 1e-4
    assert torch.equal(res.robust[~border], (dist > eps)[~border])


@pytest.mark.parametrize(
    "d,k,attack,params,tol",
    [
        (100, 2, "apgd-ce", {}, 0.0),
        (64, 4, "apgd-t", {"targets": 3, "large_eps": True}, 0.02),
    ],
)
def test_l1_apgd_close_to_the_exact_knapsack_answer(d, k, attack, params, tol):
    # the exact L1 ∩ box answer of a linear model is a fractional knapsack; L1-APGD moves
    # at least ceil(topk * d) coordinates per step, so on small d it can split its budget
    # between coordinates and fall slightly short (this is the reference algorithm)
    lin, x, y = problem(n=200, d=d, k=k, wrong=0, seed=1)
    eps = 0.3
    exact = exact_l1_robust(lin, x, y, eps)
    assert exact.float().mean() < 0.99
    res = create(attack, **params)(lin, x, y, ThreatModel("l1", eps), generator=gen(0))
    assert not bool((res.success & exact).any())  # never beats the truth: projection is exact
    assert res.robust_accuracy - exact.float().mean().item() <= tol + 1e-9


def test_pma_margin_attack_is_sound_and_close_on_linear_model():
    lin, x, y = problem()
    exact = exact_linf_robust(lin, x, y, 0.05)
    res = create("pma", targets=3)(lin, x, y, ThreatModel("linf", 0.05), generator=gen(0))
    assert not bool((res.success & res.clean_correct & exact).any())
    assert res.robust_accuracy - exact.float().mean().item() <= 0.01


def test_targeted_apgd_reaches_the_given_target():
    lin, x, y = problem(wrong=0)
    target = (y + 1) % 4
    res = create("apgd-ce", steps=20)(lin, x, y, ThreatModel("linf", 1.0), target=target, generator=gen(0))
    with torch.no_grad():
        assert torch.equal(lin(res.x_adv).argmax(1) == target, res.success)
    assert res.success.float().mean() > 0.9


def test_global_rng_untouched():
    lin, x, y = problem(n=40)
    state = torch.random.get_rng_state()
    create("apgd-t", steps=5, targets=3)(lin, x, y, ThreatModel("linf", 0.05))
    create("apgd-ce", steps=5, large_eps=True)(lin, x, y, ThreatModel("l1", 0.5))
    assert torch.equal(state, torch.random.get_rng_state())


def test_apgd_refuses_bad_parameters():
    with pytest.raises(ConfigError):
        create("apgd", steps=0)
    with pytest.raises(ConfigError, match="untargeted"):
        create("apgd", loss="kl", targets=2)
    with pytest.raises(ConfigError):
        create("apgd-t", targets=0)
    lin, x, y = problem(n=10)
    with pytest.raises(ConfigError, match="l1"):
        create("apgd-ce", large_eps=True)(lin, x, y, ThreatModel("linf", 0.1))
