"""Checkpoints: safetensors only, sha256-checked, atomic, bit-exact round trips."""

from __future__ import annotations

import hashlib
import json
import pickle
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import robustlab
from robustlab import models
from robustlab.errors import CheckpointError, ConfigError

ROOT = Path(__file__).resolve().parents[2]


def _trained_like(name: str, shape=(1, 8, 8), **kw) -> nn.Module:
    """A model with non-trivial weights and BN running statistics."""
    torch.manual_seed(0)
    c, *hw = shape
    model = models.create(
        name,
        num_classes=5,
        in_channels=c,
        input_size=tuple(hw) if hw else None,
        mean=[0.3] * c,
        std=[0.2] * c,
        **kw,
    )
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
        model.train()
        model(torch.rand(8, *shape, generator=g))  # update BN running stats
    return model.eval()


def _header(path: Path) -> tuple[int, dict]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return n, json.loads(raw[8 : 8 + n])


@pytest.mark.parametrize(
    "name, shape, kw",
    [
        ("mlp", (4,), {"hidden": [6]}),
        ("mnist_net", (1, 8, 8), {}),
        ("preact_resnet18", (3, 8, 8), {"width": 2}),
        ("wide_resnet", (1, 8, 8), {"depth": 10, "widen_factor": 1, "dropout": 0.3}),
    ],
)
def test_round_trip_is_bit_identical(tmp_path, name, shape, kw):
    model = _trained_like(name, shape, **kw)
    path = models.save_model(model, tmp_path / "sub" / "m.safetensors")
    assert path == tmp_path / "sub" / "m.safetensors" and path.is_file()
    loaded = models.load_model(path)
    assert type(loaded) is type(model)
    assert not loaded.training  # returned in eval mode
    assert loaded.robustlab_config == model.robustlab_config
    assert (loaded.num_classes, loaded.input_shape, loaded.input_bounds) == (
        model.num_classes,
        model.input_shape,
        (0.0, 1.0),
    )
    for (k1, v1), (k2, v2) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert k1 == k2 and v1.dtype == v2.dtype and torch.equal(v1, v2)
    x = torch.rand(3, *shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_metadata_records_config_version_and_sha256(tmp_path):
    model = _trained_like("mnist_net")
    path = models.save_model(model, tmp_path / "m.safetensors")
    _, header = _header(path)
    meta = header["__metadata__"]
    assert json.loads(meta["robustlab_config"]) == model.robustlab_config
    assert meta["robustlab_version"] == robustlab.__version__
    expected = models.tensors_sha256({k: v for k, v in model.state_dict().items()})
    assert meta["tensors_sha256"] == expected and len(expected) == 64
    # the whole-file digest helper
    assert models.file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    # no temporary files are left beside the checkpoint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_one_flipped_byte_of_tensor_data_is_refused(tmp_path):
    path = models.save_model(_trained_like("mnist_net"), tmp_path / "m.safetensors")
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x01  # inside the last tensor's data
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="sha256.*corrupt or was modified"):
        models.load_model(path)


def test_an_edited_dtype_in_the_header_is_refused(tmp_path):
    """Same bytes, reinterpreted as int32: only a digest that covers dtypes notices."""
    path = models.save_model(_trained_like("mnist_net"), tmp_path / "m.safetensors")
    raw = path.read_bytes()
    n, header = _header(path)
    text = raw[8 : 8 + n].decode()
    key = "layers.7.bias"
    assert header[key]["dtype"] == "F32"
    start = text.index(f'"{key}"')
    at = text.index('"F32"', start)
    edited = text[:at] + '"I32"' + text[at + 5 :]
    path.write_bytes(raw[:8] + edited.encode() + raw[8 + n :])
    with pytest.raises(CheckpointError, match="sha256"):
        models.load_model(path)


def test_torch_save_pickles_are_refused_without_unpickling(tmp_path):
    model = _trained_like("mnist_net")
    zip_path = tmp_path / "m.pt"
    torch.save(model.state_dict(), zip_path)
    with pytest.raises(
        CheckpointError, match="not a safetensors file.*torch.save.*never unpickles.*convert"
    ):
        models.load_model(zip_path)
    legacy = tmp_path / "legacy.pt"
    torch.save(model.state_dict(), legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="not a safetensors file.*never unpickles"):
        models.load_model(legacy)

    class Boom:
        def __reduce__(self):
            return (pytest.fail, ("unpickled!",))

    bomb = tmp_path / "bomb.pkl"
    bomb.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(CheckpointError, match="pickle file"):
        models.load_model(bomb)


@pytest.mark.parametrize("keep", [0, 5, 8, 30, -1])
def test_truncated_files_are_refused(tmp_path, keep):
    path = models.save_model(_trained_like("mnist_net"), tmp_path / "m.safetensors")
    raw = path.read_bytes()
    path.write_bytes(raw[:keep] if keep >= 0 else raw[:-1])
    with pytest.raises(CheckpointError):
        models.load_model(path)
    if keep == -1:
        with pytest.raises(CheckpointError, match="truncated"):
            models.load_model(path)


def test_random_bytes_and_missing_files_are_refused(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(
        torch.randint(
            0, 256, (4096,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
        )
        .numpy()
        .tobytes()
    )
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        models.load_model(junk)
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        models.load_model(tmp_path / "absent.safetensors")


def test_failed_save_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = models.save_model(_trained_like("mnist_net"), tmp_path / "m.safetensors")
    before = path.read_bytes()

    def broken(*args, **kwargs):
        Path(args[1]).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        models.save_model(_trained_like("mlp", (4,)), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_user_model_via_factory_round_trips(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from tests.models.user_factory import make

    torch.manual_seed(3)
    user = make(in_features=5, hidden=7)
    path = models.save_model(user, tmp_path / "user.safetensors")
    loaded = models.load_model(
        path, factory="tests.models.user_factory:make", in_features=5, hidden=7
    )
    assert loaded.input_bounds == (0.0, 1.0)
    assert not hasattr(loaded, "num_classes")  # not invented
    x = torch.rand(4, 5)
    assert torch.equal(user(x), loaded(x))

    # without a factory the file does not say what to build
    with pytest.raises(CheckpointError, match="factory="):
        models.load_model(path)
    # a factory building another shape: the mismatch names the offending keys
    with pytest.raises(
        CheckpointError, match="shape mismatch.*0.weight: file \\(7, 5\\) vs model \\(3, 5\\)"
    ):
        models.load_model(path, factory="tests.models.user_factory:make", in_features=5, hidden=3)
    with pytest.raises(ConfigError, match="package.module:function"):
        models.load_model(path, factory="tests.models.user_factory.make")
    with pytest.raises(ConfigError, match="not a torch.nn.Module"):
        models.load_model(path, factory="tests.models.user_factory:not_a_module")
    with pytest.raises(ConfigError, match="cannot import"):
        models.load_model(path, factory="tests.models.no_such_module:make")


def test_missing_and_unexpected_keys_are_listed(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    path = models.save_model(_trained_like("mnist_net"), tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError) as info:
        models.load_model(path, factory="tests.models.user_factory:make")
    msg = str(info.value)
    assert "missing keys '0.bias', '0.weight'" in msg
    assert "unexpected keys 'layers.0.bias', 'layers.0.weight'" in msg and "more)" in msg


def test_plain_safetensors_without_metadata(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from tests.models.user_factory import make

    user = make()
    path = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in user.state_dict().items()}, str(path))
    with pytest.raises(CheckpointError, match="does not say which robustlab model"):
        models.load_model(path)
    with pytest.warns(UserWarning, match="no tensors_sha256"):
        loaded = models.load_model(path, factory="tests.models.user_factory:make")
    x = torch.rand(2, 5)
    assert torch.equal(user(x), loaded(x))


def test_factory_kwargs_without_factory_are_refused(tmp_path):
    path = models.save_model(_trained_like("mnist_net"), tmp_path / "m.safetensors")
    with pytest.raises(ConfigError, match="only used with factory"):
        models.load_model(path, hidden=3)


def test_unbuildable_config_is_a_checkpoint_error(tmp_path):
    model = _trained_like("mlp", (4,), hidden=[3])
    model.robustlab_config = {"name": "no_such_model", "params": {}}
    path = models.save_model(model, tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match="no_such_model"):
        models.load_model(path)


def test_tensors_sha256_depends_on_names_dtypes_and_values():
    a = {"w": torch.arange(4.0), "b": torch.zeros(2)}
    assert models.tensors_sha256(a) == models.tensors_sha256(dict(reversed(list(a.items()))))
    assert models.tensors_sha256(a) != models.tensors_sha256({"w2": a["w"], "b": a["b"]})
    assert models.tensors_sha256(a) != models.tensors_sha256({"w": a["w"].view(2, 2), "b": a["b"]})
    assert models.tensors_sha256(a) != models.tensors_sha256({"w": a["w"].double(), "b": a["b"]})
    scalar = {"n": torch.tensor(3, dtype=torch.int64), "h": torch.ones(3, dtype=torch.bfloat16)}
    assert len(models.tensors_sha256(scalar)) == 64


def test_convert_checkpoint_reads_torch_save_safely(tmp_path):
    """An official-style MNIST-net checkpoint (plain nn.Sequential, DataParallel prefix)."""
    torch.manual_seed(0)
    official = nn.Sequential(
        nn.Conv2d(1, 16, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 100),
        nn.ReLU(),
        nn.Linear(100, 10),
    )
    src = tmp_path / "mnist.pth"
    torch.save({"module." + k: v for k, v in official.state_dict().items()}, src)
    dst = models.convert_checkpoint(
        src,
        tmp_path / "mnist.safetensors",
        name="mnist_net",
        prefix="layers.",
        num_classes=10,
        in_channels=1,
        input_size=28,
    )
    net = models.load_model(dst)
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(net(x), official(x))

    class Evil:
        def __reduce__(self):
            return (pytest.fail, ("unpickled!",))

    evil = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(1), "obj": Evil()}, evil)
    with pytest.raises(CheckpointError, match="weights_only"):
        models.convert_checkpoint(
            evil, tmp_path / "x.safetensors", name="mlp", num_classes=2, in_channels=1
        )


def test_load_to_device_keeps_values(tmp_path):
    model = _trained_like("mlp", (4,), hidden=[3])
    path = models.save_model(model, tmp_path / "m.safetensors")
    loaded = models.load_model(path, device=torch.device("cpu"))
    assert all(p.device.type == "cpu" for p in loaded.parameters())
