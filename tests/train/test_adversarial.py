"""Adversarial training objectives: equalities with ERM, the attack registry as the only
inner maximiser, AWP's exact restore, DONE's weights, the catastrophic-overfitting check,
determinism, exact resume, and refusals before training."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import robustlab.attacks
from robustlab.attacks import ThreatModel
from robustlab.data.base import Dataset
from robustlab.errors import ConfigError, NonFiniteInputError, UnknownNameError
from robustlab.train import (
    AWP,
    ERM,
    FGSMRS,
    CatastrophicOverfittingCheck,
    Objective,
    Trainer,
    create,
    derive_seed,
    done_weights,
)
from robustlab.train.adversarial import gradient_alignment, mart_terms


def blobs(n=120, d=6, k=3, seed=0, spread=0.05):
    g = torch.Generator().manual_seed(seed)
    centers = 0.2 + 0.6 * torch.rand(k, d, generator=g)
    y = torch.arange(n) % k
    x = (centers[y] + spread * torch.randn(n, d, generator=g)).clamp(0, 1)
    return Dataset(x=x, y=y, num_classes=k, name="blobs")


class Net(nn.Module):
    def __init__(self, d=6, k=3, width=32):
        super().__init__()
        self.input_shape = (d,)
        self.num_classes = k
        self.body = nn.Sequential(nn.Linear(d, width), nn.ReLU(), nn.Linear(width, k))

    def forward(self, x):
        return self.body(x)


def fresh(seed=0):
    torch.manual_seed(seed)
    return Net()


def weights(m):
    return torch.cat([v.detach().flatten().float() for v in m.state_dict().values()])


KW = dict(epochs=3, batch_size=32, lr=0.1, progress=False, schedule="constant")
EPS = 0.08


def started(obj, epoch=0, seed=0):
    obj.start_epoch(epoch, torch.Generator().manual_seed(seed))
    return obj


# -- equalities with ERM ------------------------------------------------------------------
def test_trades_with_beta_zero_is_erm_bit_for_bit():
    ds = blobs()
    a, b = fresh(), fresh()
    Trainer(a, ERM("ce"), seed=3, **KW).fit(ds)
    Trainer(b, create("trades", beta=0.0, eps=EPS, steps=3), seed=3, **KW).fit(ds)
    assert torch.equal(weights(a), weights(b))


def test_pgd_at_with_eps_zero_is_erm_bit_for_bit():
    ds = blobs()
    a, b = fresh(), fresh()
    Trainer(a, ERM("ce"), seed=4, **KW).fit(ds)
    Trainer(b, create("pgd-at", eps=0.0, steps=3), seed=4, **KW).fit(ds)
    assert torch.equal(weights(a), weights(b))


def test_pgd_at_composes_with_a_registry_loss():
    ds = blobs()
    obj = create("pgd-at", loss="label_smoothing", loss_params={"smoothing": 0.2}, eps=EPS, steps=2)
    model = fresh()
    started(obj)
    x, y = ds.x[:16], ds.y[:16]
    captured = {}
    real = obj.adversarial

    def adv(m, xx, yy):
        captured["x_adv"] = real(m, xx, yy)
        return captured["x_adv"]

    obj.adversarial = adv
    per, _ = obj.loss(model, x, y, None)
    want = F.cross_entropy(model(captured["x_adv"]), y, reduction="none", label_smoothing=0.2)
    assert torch.allclose(per, want, atol=1e-6)


# -- the attack registry is the only inner maximiser ------------------------------------
class SpyAttack:
    """Stands in for a registry attack: records calls and returns a known x_adv."""

    def __init__(self, name, params, calls):
        self.name, self.params, self.calls = name, params, calls
        self.loss = params.get("loss", "ce")

    def needs_clean_logits(self):
        return self.loss == "kl"

    def generate(self, model, x, y, threat, *, generator, bn_mode, clean_logits=None, **kw):
        self.calls.append({"name": self.name, "params": self.params, "eps": threat.eps, "bn_mode": bn_mode,
                           "clean": clean_logits})
        return (x + 0.5 * threat.eps * torch.cos(torch.arange(x[0].numel()).float())).clamp(0, 1)


@pytest.fixture
def spy(monkeypatch):
    calls = []

    def fake_create(name, /, **params):
        calls.append({"create": name, **params})
        return SpyAttack(name, params, calls)

    monkeypatch.setattr(robustlab.attacks, "create", fake_create)
    return calls


def spy_x_adv(x, eps):
    return (x + 0.5 * eps * torch.cos(torch.arange(x[0].numel()).float())).clamp(0, 1)


def test_pgd_at_trades_mart_use_the_attack_registry_and_its_output(spy):
    ds = blobs()
    x, y = ds.x[:20], ds.y[:20]
    model = fresh()
    x_adv = spy_x_adv(x, EPS)

    pgd = started(create("pgd-at", eps=EPS, steps=7))
    trades = started(create("trades", eps=EPS, beta=2.5))
    mart = started(create("mart", eps=EPS, beta=3.0))
    made = [c for c in spy if "create" in c]
    assert [(c["create"], c["loss"], c["steps"]) for c in made] == [("pgd", "ce", 7), ("pgd", "kl", 10), ("pgd", "ce", 10)]
    assert made[1]["init_std"] == 0.001 and made[2]["init_std"] == 0.001  # official start x + 0.001 N(0, I)

    per, _ = pgd.loss(model, x, y, None)
    assert torch.allclose(per, F.cross_entropy(model(x_adv), y, reduction="none"), atol=1e-6)

    per, _ = trades.loss(model, x, y, None)
    lc, la = model(x), model(x_adv)
    p = lc.softmax(1)
    kl = (p * (p.log() - la.log_softmax(1))).sum(1)
    assert torch.allclose(per, F.cross_entropy(lc, y, reduction="none") + 2.5 * kl, atol=1e-6)

    per, _ = mart.loss(model, x, y, None)
    boost, wkl = mart_terms(lc, la, y)
    assert torch.allclose(per, F.cross_entropy(la, y, reduction="none") + boost + 3.0 * wkl, atol=1e-6)

    gens = [c for c in spy if "eps" in c]
    assert len(gens) == 3 and all(c["eps"] == pytest.approx(EPS) for c in gens)
    assert [c["bn_mode"] for c in gens] == ["train", "eval", "eval"]  # official codes' defaults


def test_single_step_objectives_use_registry_attacks_with_the_official_steps(spy):
    fg = create("fgsm-rs", eps=EPS)
    ga = create("gradalign", eps=EPS)
    aa = create("aaer", eps=EPS)
    made = [c for c in spy if "create" in c]
    pgd_checks = [c for c in made if c.get("steps") == 5]  # fgsm-rs's catastrophic-overfitting check
    train_attacks = [c for c in made if c not in pgd_checks]
    assert [c["create"] for c in train_attacks] == ["pgd", "fgsm", "fgsm"]
    assert train_attacks[0]["steps"] == 1 and train_attacks[0]["rel_step_size"] == 1.25  # step 1.25 eps
    assert train_attacks[0]["random_start"] is True
    assert len(pgd_checks) == 1 and fg.co is not None and ga.co is None and aa.co is None
    ds = blobs()
    x, y = ds.x[:16], ds.y[:16]
    started(fg).loss(fresh(), x, y, None)
    started(create("fgsm-rs", eps=EPS, bn_mode="eval")).loss(fresh(), x, y, None)
    assert [c["bn_mode"] for c in spy if "bn_mode" in c] == ["train", "eval"]


def test_adv_comp_sum_penalty_uses_the_attack_output(spy):
    ds = blobs()
    x, y = ds.x[:20], ds.y[:20]
    model = fresh()
    obj = started(create("adv-comp-sum", loss="ce", eps=EPS, nu=0.7))
    assert spy[0]["create"] == "pgd" and spy[0]["loss"] == "logit-diff"
    per, _ = obj.loss(model, x, y, None)
    # the engine's pgd computes the clean logits once per batch for this loss
    from robustlab.attacks.base import attacks as registry

    assert registry.create("pgd", loss="logit-diff").needs_clean_logits()
    lc, la = model(x), model(spy_x_adv(x, EPS))
    d = (la - la.gather(1, y[:, None])) - (lc - lc.gather(1, y[:, None]))
    want = F.cross_entropy(lc, y, reduction="none") + 0.7 * d.norm(dim=1)
    assert torch.allclose(per, want, atol=1e-6)


def test_trades_computes_the_clean_distribution_once_per_batch():
    ds = blobs()
    x, y = ds.x[:16], ds.y[:16]
    model = fresh()
    calls = []
    model.register_forward_hook(lambda m, inp, out: calls.append(len(inp[0])))
    steps = 6
    started(create("trades", eps=EPS, steps=steps)).loss(model, x, y, None)
    # p(x) once for the attack + one forward per attack step + clean and adversarial outer passes
    assert len(calls) == 1 + steps + 2


def test_mart_matches_a_hand_computation():
    torch.manual_seed(0)
    logits = torch.randn(5, 4, dtype=torch.float64)
    logits_adv = torch.randn(5, 4, dtype=torch.float64)
    y = torch.tensor([0, 3, 1, 2, 3])
    beta = 6.0
    boost, wkl = mart_terms(logits, logits_adv, y)
    for i in range(5):
        p = [math.exp(v) for v in logits[i].tolist()]
        p = [v / sum(p) for v in p]
        q = [math.exp(v) for v in logits_adv[i].tolist()]
        q = [v / sum(q) for v in q]
        yi = int(y[i])
        ce_adv = -math.log(q[yi])
        top_other = max(q[k] for k in range(4) if k != yi)
        b = -math.log(1.0001 - top_other + 1e-12)
        kl = sum(p[k] * (math.log(p[k]) - math.log(q[k] + 1e-12)) for k in range(4))
        total = ce_adv + b + beta * kl * (1.0000001 - p[yi])
        got = F.cross_entropy(logits_adv[i : i + 1], y[i : i + 1]).item() + boost[i].item() + beta * wkl[i].item()
        assert got == pytest.approx(total, rel=1e-10, abs=1e-12)


# -- AWP -------------------------------------------------------------------------------
def test_awp_perturb_then_restore_is_bit_identical_and_gradients_come_from_the_perturbed_weights():
    ds = blobs()
    x, y = ds.x[:32], ds.y[:32]
    model = fresh()
    obj = started(AWP("pgd-at", eps=EPS, steps=3, gamma=0.05))
    captured = {}
    real = obj.base.adversarial

    def adv(m, xx, yy):
        captured["x_adv"] = real(m, xx, yy)
        return captured["x_adv"]

    obj.base.adversarial = adv
    before = {k: v.clone() for k, v in model.state_dict().items()}
    per, metrics = obj.loss(model, x, y, None)
    assert metrics["awp_active"].item() == 1.0
    perturbed = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert not torch.equal(perturbed["body.0.weight"], before["body.0.weight"])  # weight matrices moved
    assert torch.equal(perturbed["body.0.bias"], before["body.0.bias"])  # biases are not perturbed
    per.mean().backward()
    obj.after_backward(model)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # restored bit for bit
    # the gradient the optimiser will apply was taken at the perturbed weights
    ref = fresh()
    ref.load_state_dict(perturbed)
    F.cross_entropy(ref(captured["x_adv"]), y).backward()
    for (n, p), (_, q) in zip(model.named_parameters(), ref.named_parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-7), n


def test_awp_relative_size_of_the_weight_perturbation_is_gamma():
    ds = blobs()
    model = fresh()
    obj = started(AWP("pgd-at", eps=EPS, steps=2, gamma=0.02))
    x, y = ds.x[:32], ds.y[:32]
    x_adv = obj.base.adversarial(model, x, y)
    v = obj.weight_perturbation(model, x, x_adv, y)
    params = dict(model.named_parameters())
    assert set(v) == {"body.0.weight", "body.2.weight"}
    for n, d in v.items():
        assert (d.norm() / params[n].norm()).item() == pytest.approx(0.02, rel=1e-5)


def test_awp_restores_weights_even_when_the_loss_is_not_finite():
    ds = blobs()
    model = fresh()
    obj = AWP("pgd-at", eps=EPS, steps=2, gamma=0.05)
    real_outer = obj.base.outer

    def nan_outer(m, x, x_adv, y, index, **kw):
        per, met = real_outer(m, x, x_adv, y, index, **kw)
        return per * float("nan"), met

    before = weights(model).clone()
    obj.base.outer = nan_outer
    with pytest.raises(NonFiniteInputError):
        Trainer(model, obj, **KW).fit(ds)
    assert torch.equal(weights(model), before)


# -- DONE ------------------------------------------------------------------------------
def test_done_weights_simplex_and_limits():
    losses = torch.tensor([0.3, 2.0, 1.1, 0.7, 1.9], dtype=torch.float64)
    for r in (0.1, 1.0, 10.0):
        w = done_weights(losses, r)
        assert w.sum().item() == pytest.approx(1.0, abs=1e-12) and bool((w > 0).all())
    assert torch.allclose(done_weights(losses, 1e9), torch.full((5,), 0.2, dtype=torch.float64), atol=1e-9)
    assert torch.equal(done_weights(losses, 1e-6), torch.tensor([0, 1, 0, 0, 0], dtype=torch.float64))
    # heavier loss, heavier weight
    w = done_weights(losses, 1.0)
    assert torch.equal(w.argsort(), losses.argsort())


def test_done_minibatch_outer_loss_is_the_weighted_sum_and_records_entropy(spy):
    ds = blobs()
    x, y = ds.x[:24], ds.y[:24]
    model = fresh()
    obj = started(create("done-minibatch", eps=EPS, r=0.5))
    per, metrics = obj.loss(model, x, y, None)
    adv_loss = F.cross_entropy(model(spy_x_adv(x, EPS)), y, reduction="none")
    w = torch.softmax(adv_loss.detach() / 0.5, 0)
    assert per.mean().item() == pytest.approx((w * adv_loss).sum().item(), rel=1e-6)
    assert metrics["done_entropy"].item() == pytest.approx(-(w * w.log()).sum().item(), rel=1e-6)
    uniform = started(create("done-minibatch", eps=EPS, r=1e12))
    _, m2 = uniform.loss(model, x, y, None)
    assert m2["done_entropy"].item() == pytest.approx(math.log(24), rel=1e-6)  # float32


# -- catastrophic overfitting ------------------------------------------------------------
def test_co_check_fires_on_a_collapsing_model_and_not_on_a_stable_one():
    ds = blobs()
    model = fresh()
    Trainer(model, ERM(), **KW).fit(ds)
    chk = CatastrophicOverfittingCheck(threshold=0.2)
    chk.observe(ds.x[:64], ds.y[:64])
    threat = ThreatModel("linf", 0.02)
    gen = torch.Generator().manual_seed(0)
    v1 = chk.check(model, threat, gen, 0)
    assert v1.action is None and v1.metrics["co_pgd_accuracy"] > 0.8
    v2 = chk.check(model, threat, gen, 1)  # same model: no drop
    assert v2.action is None and not v2.metrics["co_detected"]
    with torch.no_grad():  # collapse: everything predicted as class 0
        model.body[2].bias.copy_(torch.tensor([1e3, 0.0, 0.0]))
    v3 = chk.check(model, threat, gen, 2)
    assert v3.action == "rollback" and v3.metrics["co_detected"] and v3.metrics["co_pgd_accuracy"] < 0.4
    assert "catastrophic overfitting in epoch 3" in v3.reason


class SabotagedFGSM(FGSMRS):
    """FGSM-RS whose model collapses during epoch ``at`` (0-based)."""

    def __init__(self, at, **kw):
        super().__init__(**kw)
        self.at = at

    def loss(self, model, x, y, index):
        if self.epoch == self.at:
            with torch.no_grad():
                model.body[2].bias.copy_(torch.tensor([50.0, 0.0, 0.0]))
        return super().loss(model, x, y, index)


def test_fgsm_rs_rolls_back_to_the_previous_epoch_and_says_so(tmp_path):
    ds = blobs()
    kw = dict(KW, epochs=5)
    ref_states = {}
    ref = fresh()
    Trainer(ref, create("fgsm-rs", eps=EPS), callbacks=[lambda t, r: ref_states.setdefault(r["epoch"], weights(t.model).clone())],
            **kw).fit(ds)
    model = fresh()
    t = Trainer(model, SabotagedFGSM(2, eps=EPS), checkpoint_dir=tmp_path, **kw)
    hist = t.fit(ds)
    assert len(hist) == 3 and [h["co_detected"] for h in hist] == [False, False, True]
    assert "catastrophic overfitting in epoch 3" in hist[-1]["stopped"] and "rolled back" in hist[-1]["stopped"]
    assert torch.equal(weights(model), ref_states[2])  # the weights after epoch 2
    assert t.summary()["stopped_early"]
    # resuming a stopped run does not train on
    again = fresh(seed=7)
    t2 = Trainer(again, SabotagedFGSM(2, eps=EPS), checkpoint_dir=tmp_path, **kw)
    assert len(t2.fit(ds)) == 3 and torch.equal(weights(again), ref_states[2])


def test_fgsm_rs_healthy_run_never_triggers_the_check():
    hist = Trainer(fresh(), create("fgsm-rs", eps=EPS), **dict(KW, epochs=5)).fit(blobs())
    assert len(hist) == 5 and not any(h["co_detected"] for h in hist)
    assert all("stopped" not in h for h in hist)
    assert hist[-1]["co_pgd_accuracy"] > 0.5  # well above chance (1/3): the check measured a robust model


# -- eps warm-up --------------------------------------------------------------------------
def test_eps_warmup_is_a_linear_per_step_ramp(spy):
    ds = blobs(n=64)
    obj = create("pgd-at", eps=0.08, steps=2, eps_warmup=2)
    Trainer(fresh(), obj, **dict(KW, epochs=3)).fit(ds)
    eps = [c["eps"] for c in spy if "eps" in c]
    # 2 batches per epoch: progress 0, .5, 1, 1.5, 2, 2.5 epochs -> eps ramps to 0.08 at 2 epochs
    assert eps == pytest.approx([0.0, 0.02, 0.04, 0.06, 0.08, 0.08])


# -- metrics, validation, selection -------------------------------------------------------
def test_count_metrics_are_summed_over_the_epoch():
    class Counting(Objective):
        def loss(self, model, x, y, index):
            logits = model(x)
            return F.cross_entropy(logits, y, reduction="none"), {"hit_count": (y == 0).float(), "share": (y == 0).float()}

    ds = blobs(n=90)
    hist = Trainer(fresh(), Counting(), **KW).fit(ds)
    assert hist[0]["train_hit_count"] == 30.0  # 30 samples of class 0, summed
    assert hist[0]["train_share"] == pytest.approx(1 / 3)  # averaged


def test_robust_validation_uses_the_ema_weights():
    ds, val = blobs(), blobs(n=60, seed=1)
    seen = {}
    t = Trainer(fresh(), create("pgd-at", eps=EPS, steps=3), ema_decay=0.9, val_attack="pgd",
                callbacks=[lambda tr, r: seen.setdefault(r["epoch"], {k: v.clone() for k, v in tr.ema.shadow.items()})],
                **dict(KW, epochs=2))
    hist = t.fit(ds, val)
    check = fresh()
    check.load_state_dict(seen[1])
    # the validation attack called by hand, once on all 60 points (one batch), with the
    # generator the Trainer seeds for epoch 0: the same number, bit for bit
    atk = robustlab.attacks.create("pgd", steps=10, rel_step_size=0.25)
    gen = torch.Generator().manual_seed(derive_seed("val", 0, 0))
    want = int(atk(check, val.x, val.y, ThreatModel("linf", EPS), generator=gen).robust.sum()) / len(val)
    assert hist[0]["val_robust_accuracy"] == want


def test_robust_validation_runs_every_n_epochs_and_after_the_last():
    ds, val = blobs(n=64), blobs(n=30, seed=1)
    hist = Trainer(fresh(), create("fgsm-rs", eps=EPS), val_attack="pgd", val_every=2, **dict(KW, epochs=5)).fit(ds, val)
    assert [("val_robust_accuracy" in h) for h in hist] == [False, True, False, True, True]
    assert all("val_accuracy" in h for h in hist)


def test_select_keeps_the_best_weights_and_early_stopping_stops(tmp_path):
    ds, val = blobs(), blobs(n=60, seed=1)
    snaps = {}
    t = Trainer(fresh(), create("fgsm-rs", eps=EPS, co_check=False), val_attack="pgd", select="robust",
                early_stopping=2, checkpoint_dir=tmp_path,
                callbacks=[lambda tr, r: snaps.setdefault(r["epoch"], weights(tr.model).clone())],
                **dict(KW, epochs=30))
    hist = t.fit(ds, val)
    s = t.summary()
    best = s["best_epoch"]
    scores = [h["val_robust_accuracy"] for h in hist]
    assert s["best_score"] == max(scores) and scores.index(max(scores)) + 1 == best
    assert len(hist) == best + 2 and "early stopping" in hist[-1]["stopped"]  # patience 2
    assert torch.equal(weights(t.model), snaps[best])
    saved = torch.load(tmp_path / "best.pt", weights_only=True)
    assert saved["epoch"] == best and torch.equal(
        torch.cat([v.flatten() for v in saved["model"].values()]), snaps[best]
    )


# -- determinism and exact resume ---------------------------------------------------------
RESUME_CASES = {
    "pgd-at+ema+select": (lambda: create("pgd-at", eps=EPS, steps=3), dict(ema_decay=0.9, val_attack="pgd", select="robust")),
    "trades": (lambda: create("trades", eps=EPS, steps=3), {}),
    "mart": (lambda: create("mart", eps=EPS, steps=3), {}),
    "fgsm-rs": (lambda: create("fgsm-rs", eps=EPS), {}),
    "fgsm-rs+early-stopping": (lambda: create("fgsm-rs", eps=EPS), dict(select="clean", early_stopping=1)),
    "gradalign": (lambda: create("gradalign", eps=EPS), {}),
    "aaer": (lambda: create("aaer", eps=EPS, step_warmup=3), {}),  # resumed inside the step ramp
    "awp-trades": (lambda: create("awp", base="trades", eps=EPS, steps=3, warmup=1), {}),
    "done": (lambda: create("done", eps=EPS, steps=3, eps_warmup=2), {}),
    "adv-comp-sum": (lambda: create("adv-comp-sum", loss="ce", eps=EPS, steps=3), {}),
}


@pytest.mark.parametrize("case", sorted(RESUME_CASES))
def test_resume_in_the_middle_of_adversarial_training_is_exact(case, tmp_path):
    make, extra = RESUME_CASES[case]
    ds, val = blobs(n=96), blobs(n=45, seed=1)
    kw = dict(KW, epochs=4, seed=2, schedule="cosine", **extra)
    full = fresh()
    Trainer(full, make(), **kw).fit(ds, val)

    class Stop(Exception):
        pass

    def stop(tr, rec):
        if rec["epoch"] == 2:
            raise Stop

    with pytest.raises(Stop):
        Trainer(fresh(), make(), checkpoint_dir=tmp_path, callbacks=[stop], **kw).fit(ds, val)
    resumed = fresh(seed=99)
    t = Trainer(resumed, make(), checkpoint_dir=tmp_path, **kw)
    t.fit(ds, val)
    assert t.resumed_from_epoch == 2
    assert torch.equal(weights(full), weights(resumed))


@pytest.mark.parametrize("name", ["trades", "aaer", "gradalign", "done"])
def test_same_seed_same_weights(name):
    ds = blobs(n=64)
    runs = []
    for seed in (1, 1, 2):
        m = fresh()
        kw = {"steps": 2} if name in ("trades", "done") else {"step_warmup": 1} if name == "aaer" else {}
        Trainer(m, create(name, eps=EPS, **kw), seed=seed, **dict(KW, epochs=2)).fit(ds)
        runs.append(weights(m))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


# -- refusals before training -------------------------------------------------------------
def test_unknown_objective_and_wrong_parameter_names_list_close_matches():
    with pytest.raises(UnknownNameError, match="trades"):
        create("trdaes")
    with pytest.raises(ConfigError, match="'beta'"):
        create("trades", betta=1.0)
    with pytest.raises(ConfigError, match="'steps'"):
        create("pgd-at", stpes=3)
    with pytest.raises(ConfigError, match="'gamma'"):
        create("awp", base="pgd-at", gama=0.01)
    with pytest.raises(ConfigError, match="pgd-at, trades"):
        create("awp", base="mart")


@pytest.mark.parametrize(
    "name,params,match",
    [
        ("trades", {"beta": -1.0}, "beta"),
        ("mart", {"beta": -0.5}, "beta"),
        ("done", {"r": 0.0}, r"r \(the DONE temperature.*\(0, inf\)"),
        ("done", {"r": -2.0}, r"r \(the DONE temperature"),
        ("pgd-at", {"bn_mode": "training"}, "bn_mode"),
        ("pgd-at", {"eps": -0.1}, "eps"),
        ("pgd-at", {"steps": 0}, "steps"),
        ("fgsm-rs", {"co_action": "panic"}, "co_action"),
    ],
)
def test_bad_values_are_refused_at_construction(name, params, match):
    with pytest.raises((ConfigError, robustlab.errors.EpsilonError), match=match):
        create(name, **params)


def test_schedules_longer_than_training_are_refused_before_any_step(tmp_path):
    ds = blobs()
    for obj in (create("pgd-at", eps=EPS, eps_warmup=5), create("awp", base="trades", eps=EPS, warmup=3)):
        m = fresh()
        before = weights(m).clone()
        with pytest.raises(ConfigError, match="warm"):
            Trainer(m, obj, checkpoint_dir=tmp_path, **KW).fit(ds)
        assert torch.equal(weights(m), before) and not (tmp_path / "last.pt").exists()


def test_validation_settings_are_checked():
    with pytest.raises(ConfigError, match="val_attack"):
        Trainer(fresh(), select="robust")
    with pytest.raises(ConfigError, match="select"):
        Trainer(fresh(), early_stopping=3)
    with pytest.raises(ConfigError, match="validation data"):
        Trainer(fresh(), select="clean", **KW).fit(blobs())
    with pytest.raises(ConfigError, match="val_norm and val_eps"):  # ERM has no threat model
        Trainer(fresh(), ERM(), val_attack="pgd", **KW).fit(blobs(), blobs(n=30, seed=1))
    with pytest.raises(UnknownNameError):
        Trainer(fresh(), val_attack="pgdd")


def test_gradient_alignment_cosine_and_zero_mask():
    g1 = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    g2 = torch.tensor([[2.0, 0.0], [-1.0, 1.0], [1.0, 0.0]])
    cos, ok = gradient_alignment(g1, g2)
    assert ok.tolist() == [True, True, False]
    assert cos[:2].tolist() == pytest.approx([1.0, 0.0])
