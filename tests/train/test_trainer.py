"""The one training loop: schedules, determinism, exact resume, EMA, refusals."""

import math

import pytest
import torch
from torch import nn

from robustlab.data.base import Dataset
from robustlab.errors import CheckpointError, ConfigError, LabelError, ShapeMismatchError
from robustlab.train import ERM, Trainer, WeightEMA, lr_factor


def blobs(n=240, d=6, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.rand(k, d, generator=g)
    y = torch.arange(n) % k
    x = (centers[y] + 0.08 * torch.randn(n, d, generator=g)).clamp(0, 1)
    return Dataset(x=x, y=y, num_classes=k, name="blobs")


class Net(nn.Module):
    def __init__(self, d=6, k=3, dropout=0.2):
        super().__init__()
        self.input_shape = (d,)
        self.num_classes = k
        self.body = nn.Sequential(nn.Linear(d, 32), nn.ReLU(), nn.Dropout(dropout), nn.Linear(32, k))

    def forward(self, x):
        return self.body(x)


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
