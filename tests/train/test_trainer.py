"""The one training loop: schedules, determinism, exact resume, EMA, refusals."""

import math

import pytest
import torch
from torch import nn

from robustlab.data.base import Dataset
from robustlab.errors import CheckpointError, ConfigError, LabelError, ShapeMismatchError
from robustlab.train import ERM, Trainer, WeightEMA, lr_factor
from tests.train.helpers import Net, blobs


def fresh(seed=0):
    torch.manual_seed(seed)
    return Net()


def weights(m):
    return torch.cat([p.detach().flatten() for p in m.state_dict().values()])


def test_training_learns_separable_blobs():
    ds = blobs()
    m = fresh()
    hist = Trainer(m, ERM(), epochs=8, batch_size=32, lr=0.1, progress=False).fit(ds)
    assert hist[-1]["train_accuracy"] > 0.95
    assert [h["epoch"] for h in hist] == list(range(1, 9))


def test_same_seed_same_weights_and_global_rng_untouched():
    ds = blobs()
    a, b = fresh(), fresh()
    state = torch.get_rng_state()
    Trainer(a, epochs=3, batch_size=32, seed=5, progress=False).fit(ds)
    assert torch.equal(torch.get_rng_state(), state)
    Trainer(b, epochs=3, batch_size=32, seed=5, progress=False).fit(ds)
    assert torch.equal(weights(a), weights(b))
    c = fresh()
    Trainer(c, epochs=3, batch_size=32, seed=6, progress=False).fit(ds)
    assert not torch.equal(weights(a), weights(c))


def test_resume_after_interruption_matches_uninterrupted(tmp_path):
    ds = blobs()
    full = fresh()
    kw = dict(epochs=5, batch_size=32, seed=1, schedule="cosine", ema_decay=0.9, progress=False)
    Trainer(full, **kw).fit(ds)

    class Stop(Exception):
        pass

    def stop_after_two(trainer, record):
        if record["epoch"] == 2:
            raise Stop

    part = fresh()
    with pytest.raises(Stop):
        Trainer(part, checkpoint_dir=tmp_path, callbacks=[stop_after_two], **kw).fit(ds)
    resumed = fresh(seed=123)  # different init: everything must come from the checkpoint
    t = Trainer(resumed, checkpoint_dir=tmp_path, **kw)
    hist = t.fit(ds)
    assert t.resumed_from_epoch == 2 and len(hist) == 5
    assert torch.equal(weights(full), weights(resumed))


def _refused_checkpoint_message(tmp_path):
    m = fresh()
    before = weights(m).clone()
    with pytest.raises(CheckpointError) as info:
        Trainer(m, epochs=1, checkpoint_dir=tmp_path, progress=False).fit(blobs())
    assert torch.equal(weights(m), before)  # nothing trained, nothing loaded
    msg = str(info.value)
    assert "unreadable or holds non-tensor objects" in msg
    assert "never unpickles arbitrary objects" in msg
    assert f"Delete {tmp_path / 'last.pt'}" in msg
    assert "weights_only" not in msg  # not torch's advice to unpickle anyway
    assert info.value.__cause__ is None and info.value.__suppress_context__
    return msg


def test_garbage_checkpoint_refused_with_what_to_do(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"not a checkpoint")
    _refused_checkpoint_message(tmp_path)


class _Payload:
    """A pickle that runs a shell command when unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_refused_and_its_payload_never_runs(tmp_path):
    marker = tmp_path / "payload-ran"
    state = {"format": "robustlab-train-checkpoint/1", "epoch": 1, "model": _Payload(marker)}
    torch.save(state, tmp_path / "last.pt")
    assert not marker.exists()
    _refused_checkpoint_message(tmp_path)
    assert not marker.exists()


def test_schedules():
    kw = dict(steps_per_epoch=10)
    assert lr_factor("constant", 57, 100, **kw) == 1.0
    assert lr_factor("cosine", 0, 100, **kw) == 1.0
    assert lr_factor("cosine", 50, 100, **kw) == pytest.approx(0.5)
    assert lr_factor("multistep", 49, 100, **kw) == 1.0
    assert lr_factor("multistep", 50, 100, **kw) == pytest.approx(0.1)
    assert lr_factor("multistep", 75, 100, **kw) == pytest.approx(0.01)
    assert lr_factor("multistep", 30, 100, milestones=(3,), **kw) == pytest.approx(0.1)
    assert lr_factor("onecycle", 40, 100, **kw) == pytest.approx(1.0)
    assert lr_factor("onecycle", 20, 100, **kw) == pytest.approx(0.5)
    assert lr_factor("onecycle", 70, 100, **kw) == pytest.approx(0.5)
    assert lr_factor("constant", 4, 100, warmup_epochs=1, **kw) == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="cosine"):
        lr_factor("cosin", 0, 1, **kw)


def test_lr_follows_schedule_in_training():
    seen = []
    t = Trainer(fresh(), epochs=4, batch_size=240, lr=0.2, schedule="cosine", progress=False,
                callbacks=[lambda tr, rec: seen.append(rec["lr"])])
    t.fit(blobs())
    want = [0.2 * 0.5 * (1 + math.cos(math.pi * s / 4)) for s in range(4)]
    assert seen == pytest.approx(want)


def test_ema_is_the_exponential_average():
    m = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(0.0)
    ema = WeightEMA(m, decay=0.5, warmup=False)
    for v in (1.0, 2.0, 3.0):
        with torch.no_grad():
            m.weight.fill_(v)
        ema.update(m)
    # ((0*.5 + 1*.5)*.5 + 2*.5)*.5 + 3*.5 = 2.125
    assert torch.allclose(ema.shadow["weight"], torch.full((1, 2), 2.125))


def test_bad_data_refused_before_training():
    ds = blobs()
    with pytest.raises(ShapeMismatchError):
        Trainer(fresh(), epochs=1).fit(Dataset(x=torch.rand(10, 5), y=torch.zeros(10, dtype=torch.long), num_classes=3))
    net = fresh()
    net.num_classes = 2
    with pytest.raises(LabelError):
        Trainer(net, epochs=1).fit(ds)
    with pytest.raises(ConfigError):
        Trainer(fresh(), optimizer="sgdd")
    with pytest.raises(ConfigError):
        Trainer(fresh(), epochs=2, warmup_epochs=3)


def test_dataset_refuses_bad_data():
    from robustlab.errors import NonFiniteInputError

    x = torch.rand(4, 3)
    x[0, 0] = float("nan")
    with pytest.raises(NonFiniteInputError):
        Dataset(x=x, y=torch.zeros(4, dtype=torch.long), num_classes=2)
    with pytest.raises(LabelError, match=r"\[0, 1\]"):
        Dataset(x=torch.rand(4, 3), y=torch.tensor([0, 1, 2, 0]), num_classes=2)


class CountingLoss(nn.Module):
    """A stateful per-sample loss: counts how often each training sample was seen."""

    needs_indices = True

    def __init__(self):
        super().__init__()
        self.reduction = "none"
        self.register_buffer("seen", torch.zeros(0, dtype=torch.long))
        self.epochs_started = []

    def setup(self, num_samples, num_classes):
        self.seen = torch.zeros(num_samples, dtype=torch.long)

    def start_epoch(self, epoch):
        self.epochs_started.append(epoch)

    def forward(self, logits, target, index=None):
        assert index is not None
        self.seen[index] += 1
        return nn.functional.cross_entropy(logits, target, reduction="none")


def test_erm_hands_dataset_indices_and_epochs_to_a_stateful_loss():
    from robustlab.losses import Loss

    class Stateful(CountingLoss, Loss):
        def __init__(self):
            Loss.__init__(self, "none")
            self.register_buffer("seen", torch.zeros(0, dtype=torch.long))
            self.epochs_started = []

    loss = Stateful()
    obj = ERM(loss)
    assert obj.needs_indices
    ds = blobs(n=90)
    Trainer(fresh(), obj, epochs=3, batch_size=32, progress=False).fit(ds)
    assert torch.equal(loss.seen, torch.full((90,), 3))  # every sample once per epoch
    assert loss.epochs_started == [0, 1, 2]
    assert torch.equal(obj.state_dict()["criterion"]["seen"], loss.seen)


def test_objective_modules_are_trained_checkpointed_and_resumed(tmp_path):
    from robustlab.train import Objective

    class TwoNets(Objective):
        """Trains the model and a peer network on the same batches (as co-teaching does)."""

        def __init__(self):
            super().__init__()
            torch.manual_seed(1)
            self.peer = Net()
            self.progress_seen = []

        def trainable_modules(self):
            return [self.peer]

        def loss(self, model, x, y, index):
            self.progress_seen.append(self.progress)
            ce = nn.functional.cross_entropy
            return ce(model(x), y, reduction="none") + ce(self.peer(x), y, reduction="none"), {}

        def state_dict(self):
            return {"peer": self.peer.state_dict()}

        def load_state_dict(self, state):
            self.peer.load_state_dict(state["peer"])

    ds = blobs(n=96)
    ref_obj = TwoNets()
    before = weights(ref_obj.peer).clone()
    Trainer(fresh(), ref_obj, epochs=4, batch_size=32, progress=False).fit(ds)
    assert not torch.equal(before, weights(ref_obj.peer))  # the peer was optimised
    assert not ref_obj.peer.training  # and left in eval mode like the model
    assert ref_obj.progress_seen[:4] == [0.0, 1 / 3, 2 / 3, 1.0]

    class Stop(Exception):
        pass

    def die(trainer, record):
        if record["epoch"] == 2:
            raise Stop

    cut_obj, model = TwoNets(), fresh()
    with pytest.raises(Stop):
        Trainer(model, cut_obj, epochs=4, batch_size=32, progress=False, checkpoint_dir=tmp_path,
                callbacks=[die]).fit(ds)
    resumed_obj, model2 = TwoNets(), fresh()
    Trainer(model2, resumed_obj, epochs=4, batch_size=32, progress=False, checkpoint_dir=tmp_path).fit(ds)
    assert torch.equal(weights(resumed_obj.peer), weights(ref_obj.peer))


# -- the Trainer's signature is the config -----------------------------------------------------
def _keyword_settings():
    import inspect
    import typing

    from robustlab.train import trainer as trainer_mod

    hints = typing.get_type_hints(Trainer.__init__, vars(trainer_mod))
    params = inspect.signature(Trainer.__init__).parameters
    return {n: (hints.get(n), p.default) for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def test_every_setting_has_a_precise_annotation_and_a_json_default():
    import json
    import typing

    settings = _keyword_settings()
    assert "threads" in settings and settings["threads"] == (int | None, None)
    for name, (hint, default) in settings.items():
        assert hint is not None and hint is not typing.Any, name
        json.dumps(default)  # the config stores the defaults
    assert settings["device"] == (str, "cpu") and settings["milestones"] == (tuple[float, ...], (0.5, 0.75))


def _int_settings():
    return sorted(n for n, (hint, _) in _keyword_settings().items() if hint in (int, int | None))


def _float_settings():
    return sorted(n for n, (hint, _) in _keyword_settings().items() if hint in (float, float | None))


@pytest.mark.parametrize("name", _int_settings())
@pytest.mark.parametrize("bad", [2.5, True, "3"])
def test_integer_settings_refuse_fractions_booleans_and_strings(name, bad):
    assert name in {"epochs", "batch_size", "seed", "threads", "val_every", "val_subset", "early_stopping"}
    extra = {"select": "clean"} if name == "early_stopping" else {}
    with pytest.raises(ConfigError, match=name):
        Trainer(fresh(), **{name: bad}, **extra)


@pytest.mark.parametrize("name", _float_settings())
@pytest.mark.parametrize("bad", [True, float("nan"), "0.1", -1.0])
def test_real_settings_refuse_booleans_nan_strings_and_negatives(name, bad):
    with pytest.raises(ConfigError, match=name):
        Trainer(fresh(), **{name: bad})


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(optimizer="sgdd"), "optimizer.*'sgd'"),
        (dict(schedule="cosin"), "schedule.*Did you mean 'cosine'"),
        (dict(amp="fp8"), "amp"),
        (dict(nesterov="yes"), "nesterov"),
        (dict(momentum=1.0), "momentum"),
        (dict(nesterov=True, momentum=0.0), "nesterov"),
        (dict(milestones=(0.5, "x")), "milestones"),
        (dict(select="best"), "select"),
        (dict(val_norm="linf"), "val_norm and val_eps"),
        (dict(val_norm="linf", val_eps=True), "val_eps"),
        (dict(val_norm="linf", val_eps="a/b"), "val_eps"),
        (dict(val_norm="l3", val_eps=0.1), "norm"),
    ],
)
def test_other_settings_are_checked(kw, match):
    with pytest.raises(ConfigError, match=match):
        Trainer(fresh(), **kw)


def test_integral_floats_from_yaml_are_accepted_as_integers():
    t = Trainer(fresh(), epochs=3.0, batch_size=32.0)
    assert (t.epochs, t.batch_size) == (3, 32) and isinstance(t.epochs, int)


@pytest.mark.parametrize("device", ["tpu", "gpu", "", "cuda:x"])
def test_unknown_devices_are_config_errors(device):
    with pytest.raises(ConfigError, match="device"):
        Trainer(fresh(), device=device)


def test_cuda_without_cuda_is_a_config_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"device 'cuda'.*use --device cpu"):
        Trainer(fresh(), device="cuda")
    assert Trainer(fresh(), device=torch.device("cpu")).device == torch.device("cpu")


# -- empty data ----------------------------------------------------------------------------------
def empty():
    return Dataset(x=torch.zeros(0, 6), y=torch.zeros(0, dtype=torch.long), num_classes=3, name="empty")


@pytest.mark.parametrize(
    "which, match",
    [
        ("train", r"the training set is empty \(0 samples\); pass a training set with at least one sample"),
        ("val", r"the validation set is empty .*val_fraction"),
        ("test", r"the test set is empty .*test=None"),
    ],
)
def test_empty_data_is_refused_before_training_saying_which_set(which, match, tmp_path):
    from robustlab.errors import InvalidInputError

    sets = {"train": blobs(), "val": blobs(n=30, seed=1), "test": blobs(n=30, seed=2)}
    sets[which] = empty()
    m = fresh()
    before = weights(m).clone()
    with pytest.raises(InvalidInputError, match=match):
        Trainer(m, epochs=1, checkpoint_dir=tmp_path, progress=False).fit(sets["train"], sets["val"], test=sets["test"])
    assert torch.equal(weights(m), before) and not (tmp_path / "last.pt").exists()


# -- threads -------------------------------------------------------------------------------------
@pytest.mark.parametrize("threads", [1, 2])
def test_threads_apply_during_fit_and_are_restored_after(threads):
    before = torch.get_num_threads()
    seen = []
    t = Trainer(fresh(), epochs=2, batch_size=32, threads=threads, progress=False,
                callbacks=[lambda tr, rec: seen.append(torch.get_num_threads())])
    t.fit(blobs())
    assert seen == [threads, threads] and t.summary()["threads"] == threads
    assert torch.get_num_threads() == before


def test_threads_rule_is_one_thread_for_small_work(monkeypatch):
    from robustlab import threads as threads_mod

    monkeypatch.delenv("ROBUSTLAB_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads_mod, "user_choice", lambda: None)
    t = Trainer(fresh(), epochs=1, batch_size=32, progress=False)
    t.fit(blobs())
    assert t.summary()["threads"] == 1  # a 6-32-3 MLP on 32 points is far below the threshold


# -- progress ------------------------------------------------------------------------------------
LINE = (
    r"epoch (\d+)/(\d+)  loss \d+\.\d{3}  acc \d+\.\d%( {2}val \d+\.\d%)?( {2}test \d+\.\d%)?"
    r"  \d+(\.\d)? s(  ETA \d+(\.\d)? s)?"
)


def test_one_progress_line_per_epoch(caplog):
    import re

    caplog.set_level("INFO", logger="robustlab.progress")
    Trainer(fresh(), epochs=3, batch_size=32, progress=False).fit(blobs(), test=blobs(n=30, seed=2))
    lines = [r.getMessage() for r in caplog.records if r.name == "robustlab.progress"]
    assert len(lines) == 3
    for i, line in enumerate(lines):
        m = re.fullmatch(LINE, line)
        assert m and m.group(1) == str(i + 1) and m.group(2) == "3", line
        assert ("ETA" in line) == (i < 2)  # no ETA after the last epoch
        assert "test " in line


def test_progress_line_shows_validation_best_epoch_and_patience(caplog):
    caplog.set_level("INFO", logger="robustlab.progress")
    Trainer(fresh(), epochs=3, batch_size=32, select="clean", early_stopping=4, progress=False).fit(
        blobs(), blobs(n=30, seed=1)
    )
    lines = [r.getMessage() for r in caplog.records if r.name == "robustlab.progress"]
    assert len(lines) == 3
    assert all(" val " in line and "best epoch " in line and "patience " in line for line in lines)
    assert lines[0].endswith("patience 0/4") or "patience 0/4" in lines[0]


def test_progress_bar_on_a_terminal_still_logs_one_line_per_epoch(caplog):
    caplog.set_level("INFO", logger="robustlab.progress")
    Trainer(fresh(), epochs=2, batch_size=32, progress=True).fit(blobs())
    assert len([r for r in caplog.records if r.name == "robustlab.progress"]) == 2
