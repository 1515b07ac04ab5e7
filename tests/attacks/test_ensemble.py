"""Ensembles: only still-robust points are attacked, stage records add up, the standard
protocol reaches the exact L-inf robust accuracy of a linear model; EOT."""

import logging
import re

import pytest
import torch
from torch import nn

from robustlab.attacks import FAST_PROTOCOL, PROTOCOL, ThreatModel, create
from robustlab.attacks.ensemble import fast_members, standard_members
from robustlab.errors import ConfigError
from tests.attacks.helpers import exact_linf_robust, gen, problem


def test_members_run_only_on_points_still_robust():
    lin, x, y = problem()
    eps = 0.05
    exact = exact_linf_robust(lin, x, y, eps)
    members = [("pgd", {"steps": 10, "loss": "margin", "targets": 3}), ("apgd-ce", {"steps": 5})]
    r = create("ensemble", members=members)(lin, x, y, ThreatModel("linf", eps), generator=gen(0))
    assert torch.equal(r.robust, exact)  # the multi-targeted PGD is exact on linear models
    broken_by = r.info["broken_by"]
    assert torch.equal(broken_by == -2, ~r.clean_correct)  # clean-misclassified: never attacked
    assert torch.equal(broken_by == -1, r.robust)
    assert not bool((broken_by == 1).any())  # nothing left for the second member to break
    # APGD-CE with 5 steps costs 6 forward passes per point it sees, plus one re-check:
    # it saw exactly the points the first member left robust
    assert r.info["stage_forwards"][1] == 7 * int(r.robust.sum())
    assert r.info["stage_backwards"][1] == 6 * int(r.robust.sum())
    assert r.info["stages"] == ["pgd", "apgd-ce"] and r.info["protocol"] == "robustlab-custom/1"


def test_first_stage_breaks_exactly_what_it_breaks_alone():
    lin, x, y = problem()
    t = ThreatModel("linf", 0.05)
    r = create("ensemble", members=["fgsm", ("pgd", {"steps": 10, "loss": "margin", "targets": 3})])(lin, x, y, t)
    alone = create("fgsm")(lin, x, y, t)  # deterministic
    assert torch.equal(r.info["broken_by"] == 0, alone.success & alone.clean_correct)
    assert r.info["stage_broken"] == [int((r.info["broken_by"] == j).sum()) for j in range(2)]


def test_several_eps_reuse_successes():
    lin, x, y = problem()
    eps = [0.02, 0.05, 0.1]
    members = [("fgsm", {}), ("pgd", {"steps": 10, "loss": "margin", "targets": 3})]
    res = create("ensemble", members=members)(lin, x, y, [ThreatModel("linf", e) for e in eps], generator=gen(0))
    for r, e in zip(res, eps, strict=True):
        assert torch.equal(r.robust, exact_linf_robust(lin, x, y, e))
    for a, b in zip(res, res[1:], strict=False):
        carried = a.success
        assert torch.equal(b.x_adv[carried], a.x_adv[carried])  # reused, not recomputed
        assert torch.equal(b.info["broken_by"][carried], a.info["broken_by"][carried])
    # the later budgets only attack what the earlier ones left: fewer passes
    assert res[2].forwards < res[0].forwards


def test_standard_reaches_the_exact_linf_robust_accuracy():
    lin, x, y = problem(n=150)
    eps = 0.05
    exact = exact_linf_robust(lin, x, y, eps)
    assert 0.05 < exact.float().mean() < 0.95
    r = create("standard")(lin, x, y, ThreatModel("linf", eps), generator=gen(0))
    assert torch.equal(r.robust, exact)
    assert r.info["protocol"] == PROTOCOL == "robustlab-standard/1"
    assert r.info["stages"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert r.info["stage_black_box"] == [False, False, False, True]
    assert r.info["skipped"] == []  # targets capped at classes - 1 is a note, not a skip
    assert r.info["notes"] == ["apgd-t: targets capped at 3 (classes - 1)", "fab-t: n_target_classes capped at 3 (classes - 1)"]


def test_protocol_tables_follow_the_reference():
    assert [m for m, _ in standard_members("linf")] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    linf = dict(standard_members("linf"))
    assert linf["apgd-ce"] == {"steps": 100, "restarts": 1} and linf["apgd-t"]["targets"] == 9
    l1 = dict(standard_members("l1"))
    assert l1["apgd-ce"] == {"steps": 100, "restarts": 5, "large_eps": True}
    assert l1["apgd-t"]["targets"] == 5 and l1["apgd-t"]["large_eps"]
    assert [m for m, _ in fast_members("l2")] == ["apgd-ce", "apgd-t", "square"]
    assert [m for m, _ in fast_members("l1")] == ["apgd-ce", "apgd-t"]  # square has no L1
    assert create("fast").protocol == FAST_PROTOCOL
    assert create("standard", members=["apgd-ce"]).protocol == "robustlab-custom/1"


def test_members_that_cannot_run_are_skipped_and_recorded():
    lin, x, y = problem(n=60, k=3)
    r = create("standard", members=[("apgd-t", {"steps": 3, "targets": 2}), ("apgd-ce", {"steps": 3}), ("no-such", {})])(
        lin, x, y, ThreatModel("linf", 0.05)
    )
    reasons = {s["member"]: s["reason"] for s in r.info["skipped"]}
    assert "4 classes" in reasons["apgd-t"] and "not registered" in reasons["no-such"]
    assert r.info["stages"] == ["apgd-ce"]
    with pytest.raises(ConfigError, match="no member"):
        create("ensemble", members=[("apgd-t", {"steps": 3})])(lin, x, y, ThreatModel("linf", 0.05))


def test_ensembles_refuse_targets_and_bad_members():
    lin, x, y = problem(n=20)
    with pytest.raises(ConfigError, match="untargeted"):
        create("fast")(lin, x, y, ThreatModel("linf", 0.05), target=(y + 1) % 4)
    with pytest.raises(ConfigError, match="members"):
        create("ensemble")
    with pytest.raises(ConfigError, match="member"):
        create("ensemble", members=[42])


def test_fast_is_sound_and_close_to_exact():
    lin, x, y = problem(n=200)
    exact = exact_linf_robust(lin, x, y, 0.05)
    r = create("fast")(lin, x, y, ThreatModel("linf", 0.05), generator=gen(0))
    assert not bool((r.success & r.clean_correct & exact).any())
    assert r.robust_accuracy - exact.float().mean().item() <= 0.01


# -- EOT -----------------------------------------------------------------------------------
class Counting(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x):
        self.calls += len(x)
        return self.inner(x)


def test_eot_on_a_deterministic_model_equals_the_wrapped_attack_at_n_times_the_cost():
    lin, x, y = problem(n=80)
    t = ThreatModel("linf", 0.05)
    plain = create("apgd-ce", steps=10)(lin, x, y, t, generator=gen(1))
    eot = create("eot", attack="apgd-ce", samples=3, params={"steps": 10})(lin, x, y, t, generator=gen(1))
    assert torch.equal(plain.x_adv, eot.x_adv) and torch.equal(plain.success, eot.success)
    # the clean pass and the final re-check are single passes; every gradient costs x3
    assert eot.backwards == 3 * plain.backwards
    assert eot.forwards - plain.forwards == 2 * plain.backwards


class NoisyLogits(nn.Module):
    """A randomised model in eval mode: logits + Gaussian noise from its own generator."""

    def __init__(self, lin, sigma):
        super().__init__()
        self.lin, self.sigma = lin, sigma
        self.g = torch.Generator().manual_seed(123)

    def forward(self, x):
        z = self.lin(x)
        return z + self.sigma * torch.randn(z.shape, generator=self.g)


def test_eot_averages_gradients_of_a_randomised_model():
    # additive noise independent of x: each sampled margin gradient is w_j - w_y of the
    # noiseless model (the noise is too small to change the runner-up class), so the
    # EOT average equals the noiseless gradient while single passes differ in value
    from robustlab.attacks.base import AttackContext, margin_loss
    from robustlab.attacks.eot import EOTContext

    lin, x, y = problem(n=30, wrong=0)
    noisy = NoisyLogits(lin, 1e-3)
    ctx = EOTContext(AttackContext(noisy, (0.0, 1.0), gen(0)), samples=4)
    loss_eot, g_eot, _ = ctx.value_and_grad(x, margin_loss, y)
    loss_ref, g_ref, _ = AttackContext(lin, (0.0, 1.0), gen(0)).value_and_grad(x, margin_loss, y)
    assert torch.allclose(g_eot, g_ref, atol=1e-6)
    assert not torch.equal(loss_eot, loss_ref) and torch.allclose(loss_eot, loss_ref, atol=1e-2)
    assert ctx.forwards == 4 * len(x) and ctx.backwards == 4 * len(x)


LINE = re.compile(
    r"^(?P<name>\S+) (?P<threat>\S+ eps=\S+): stage (?P<j>\d+)/(?P<of>\d+) (?P<label>\S+) on "
    r"(?P<on>\d+) of (?P<n>\d+) points, (?P<broken>\d+) broken, (?P<robust>\d+) robust, .+ s$"
)


def test_one_progress_line_per_stage_in_order_with_the_counts_of_the_result(caplog):
    lin, x, y = problem()
    members = [("fgsm", {}), ("pgd", {"steps": 10, "loss": "margin", "targets": 3}), ("apgd-ce", {"steps": 5})]
    eps = [0.02, 0.05]
    caplog.set_level(logging.INFO, logger="robustlab.progress")
    res = create("ensemble", members=members)(lin, x, y, [ThreatModel("linf", e) for e in eps], generator=gen(0))
    lines = [LINE.match(r.getMessage()) for r in caplog.records if r.name == "robustlab.progress"]
    assert len(lines) == 2 * 3 and all(lines)
    for k, r in enumerate(res):  # budgets run in increasing eps, the stages in order
        got = lines[3 * k: 3 * k + 3]
        bb = r.info["broken_by"]
        assert [m["threat"] for m in got] == [f"linf eps={eps[k]:g}"] * 3
        assert [m["label"] for m in got] == r.info["stages"] == ["fgsm", "pgd", "apgd-ce"]
        assert [int(m["j"]) for m in got] == [1, 2, 3] and {m["of"] for m in got} == {"3"}
        assert {m["name"] for m in got} == {"ensemble"} and {int(m["n"]) for m in got} == {len(x)}
        # this call attacks the points still robust at the smaller eps (all correct ones at the first)
        attacked = r.clean_correct & ~res[k - 1].success if k else r.clean_correct
        for j, m in enumerate(got):
            broken_here = int(((bb == j) & attacked).sum())
            assert int(m["broken"]) == broken_here == r.info["stage_broken"][j]
            assert int(m["on"]) == int((attacked & ((bb == -1) | (bb >= j))).sum())
            assert int(m["robust"]) == int(m["on"]) - broken_here
        assert int(got[-1]["robust"]) == int(r.robust.sum())
    assert int(lines[1]["broken"]) > 0  # not vacuous: a later stage breaks points
