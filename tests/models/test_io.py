"""Checkpoints: safetensors only, sha256-checked, atomic, bit-exact round trips."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import robustlab
from robustlab import models
from robustlab.errors import CheckpointError, ConfigError, WriteError

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


def test_disk_full_during_save_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = models.save_model(_trained_like("mnist_net"), tmp_path / "m.safetensors")
    before = path.read_bytes()

    def disk_full(tmp, tensors, metadata):
        Path(tmp).write_bytes(b"half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("robustlab.models.io._write_safetensors", disk_full)
    with pytest.raises(WriteError) as info:
        models.save_model(_trained_like("mlp", (4,)), path)
    assert str(info.value) == (
        f"cannot write {path}: no space left on device (ENOSPC); free some space or choose "
        f"another folder (e.g. another --results folder)."
    )
    assert info.value.errno == errno.ENOSPC and isinstance(info.value, OSError)
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


# -- a checkpoint whose config declares a huge model --------------------------------------

_HUGE_SCRIPT = """
import json, resource, sys, time
from robustlab import models
from robustlab.errors import CheckpointError

try:  # Linux: cap the address space at 512 MiB above what the imports mapped
    status = open("/proc/self/status").read()
except OSError:  # elsewhere the time limit below still catches an allocation
    pass
else:
    vm_kb = int(next(l for l in status.splitlines() if l.startswith("VmSize:")).split()[1])
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    limit = vm_kb * 1024 + (512 << 20)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
start = time.perf_counter()
try:
    models.load_model(sys.argv[1])
except CheckpointError as e:
    print(json.dumps({"error": str(e), "seconds": time.perf_counter() - start}))
else:
    print(json.dumps({"error": None}))
"""


def test_a_huge_declared_model_is_refused_before_allocating_it(tmp_path):
    """The config asks for an mlp with two hidden layers of 10**6 units (4 TB of float32)
    beside the tensors of an [8, 8] mlp: the shapes are compared on the meta device, under
    an address-space limit that leaves 512 MiB, in milliseconds."""
    model = models.create("mlp", num_classes=3, in_channels=4, hidden=[8, 8])
    config = json.loads(json.dumps(model.robustlab_config))
    config["params"]["hidden"] = [10**6, 10**6]
    model.robustlab_config = config
    path = models.save_model(model, tmp_path / "huge.safetensors")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run(
        [sys.executable, "-c", _HUGE_SCRIPT, str(path)],
        capture_output=True, text=True, timeout=120, env=env, check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["error"] is not None, out.stderr
    msg = result["error"]
    assert f"{path} declares model 'mlp' (1,000,009,000,011 weights, 4.0 TB)" in msg
    assert "layers.2.weight: file (8, 8) vs model (1000000, 1000000)" in msg
    assert "refused before building the model" in msg
    assert result["seconds"] < 5.0


def test_declared_architecture_is_checked_against_the_header_before_tensors_are_read(
    tmp_path, monkeypatch
):
    model = _trained_like("mlp", (4,), hidden=[6])
    model.robustlab_config = {**model.robustlab_config, "params": {**model.robustlab_config["params"], "hidden": [7]}}
    path = models.save_model(model, tmp_path / "m.safetensors")

    def no_reading(*args, **kwargs):
        raise AssertionError("tensors were read before the shapes were checked")

    monkeypatch.setattr("safetensors.torch.load_file", no_reading)
    with pytest.raises(CheckpointError, match=r"layers.0.weight: file \(6, 4\) vs model \(7, 4\)"):
        models.load_model(path)


def test_header_whose_shape_disagrees_with_its_byte_range_is_refused(tmp_path):
    path = models.save_model(_trained_like("mlp", (4,), hidden=[6]), tmp_path / "m.safetensors")
    raw = path.read_bytes()
    n, header = _header(path)
    text = raw[8 : 8 + n].decode()
    edited = text.replace('"shape":[6,4]', '"shape":[9,4]')
    assert edited != text
    path.write_bytes(raw[:8] + edited.encode() + raw[8 + n :])
    with pytest.raises(CheckpointError, match=r"declares shape \(9, 4\).*96 bytes.*corrupt"):
        models.load_model(path)


# -- byte-reproducible files, metadata ------------------------------------------------------

_SAVE_SCRIPT = """
import sys, torch
from robustlab import models
torch.manual_seed(0)
net = models.create("mnist_net", num_classes=5, in_channels=1, input_size=8)
models.save_model(net, sys.argv[1], metadata={"robustlab_run_id": "r1", "note": "x", "a": "y"})
"""


def test_saves_are_byte_identical_across_calls_and_processes(tmp_path):
    torch.manual_seed(0)
    net = models.create("mnist_net", num_classes=5, in_channels=1, input_size=8)
    meta = {"robustlab_run_id": "r1", "note": "x", "a": "y"}
    a = models.save_model(net, tmp_path / "a.safetensors", metadata=meta)
    b = models.save_model(net, tmp_path / "b.safetensors", metadata=dict(reversed(meta.items())))
    assert a.read_bytes() == b.read_bytes()
    # a fresh process (another hash seed) writes the same bytes
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "12345",
           "PYTHONPATH": str(ROOT / "src")}
    subprocess.run([sys.executable, "-c", _SAVE_SCRIPT, str(tmp_path / "c.safetensors")],
                   env=env, check=True, timeout=120)
    assert (tmp_path / "c.safetensors").read_bytes() == a.read_bytes()
    # a loaded model saves back to the same bytes
    again = models.save_model(models.load_model(a), tmp_path / "d.safetensors", metadata=meta)
    assert again.read_bytes() == a.read_bytes()
    # and the digest of the whole file therefore identifies the saved weights
    assert models.file_sha256(a) == models.file_sha256(tmp_path / "c.safetensors")
    # different metadata: different bytes, same weights identity
    other = models.save_model(net, tmp_path / "e.safetensors", metadata={**meta, "note": "z"})
    assert other.read_bytes() != a.read_bytes()
    assert models.read_metadata(other)["tensors_sha256"] == models.read_metadata(a)["tensors_sha256"]


def test_file_layout_is_canonical_safetensors(tmp_path):
    net = _trained_like("preact_resnet18", (3, 8, 8), width=2)
    path = models.save_model(net, tmp_path / "m.safetensors", metadata={"z": "1", "b": "2"})
    raw = path.read_bytes()
    n, header = _header(path)
    assert n % 8 == 0
    text = raw[8 : 8 + n].decode()
    assert text.rstrip(" ") == json.dumps(header, sort_keys=True, separators=(",", ":"))
    size = {"F32": 4, "I64": 8}
    # data: largest element size first, then by name; each tensor aligned to its element size
    names = sorted((k for k in header if k != "__metadata__"),
                   key=lambda k: (-size[header[k]["dtype"]], k))
    offsets = [header[k]["data_offsets"] for k in names]
    assert offsets[0][0] == 0 and all(o[1] == p[0] for o, p in zip(offsets, offsets[1:]))
    assert 8 + n + offsets[-1][1] == len(raw)
    assert all(header[k]["data_offsets"][0] % size[header[k]["dtype"]] == 0 for k in names)
    assert {header[k]["dtype"] for k in names} == {"F32", "I64"}  # BN counters are int64


def test_the_safetensors_library_reads_our_files(tmp_path):
    net = _trained_like("wide_resnet", (1, 8, 8), depth=10, widen_factor=1)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    state["extra.bf16"] = torch.arange(6, dtype=torch.bfloat16).reshape(2, 3)
    state["extra.bool"] = torch.tensor([True, False, True])
    state["extra.empty"] = torch.zeros(0, 3)
    state["extra.scalar"] = torch.tensor(7, dtype=torch.int64)
    holder = nn.Module()
    holder.state_dict = lambda: state  # type: ignore[method-assign]
    path = models.save_model(holder, tmp_path / "m.safetensors", metadata={"note": "hi"})
    loaded = load_file(str(path))
    assert sorted(loaded) == sorted(state)
    for k, v in state.items():
        assert loaded[k].dtype == v.dtype and loaded[k].shape == v.shape and torch.equal(loaded[k], v)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        assert torch.equal(f.get_tensor("extra.bf16"), state["extra.bf16"])
    assert meta == models.read_metadata(path)
    assert meta["note"] == "hi" and meta["format"] == "pt"
    # the recorded digest verifies against what the safetensors library read
    assert models.tensors_sha256(loaded) == meta["tensors_sha256"] == models.weights_sha256(state)


def test_extra_metadata_round_trips(tmp_path):
    net = _trained_like("mlp", (4,), hidden=[3])
    provenance = {
        "robustlab_run_id": "0123abcd",
        "robustlab_run_name": "gce-q0.7",
        "robustlab_training": json.dumps({"epochs": 3, "loss": {"name": "gce"}}),
        "unicode": "Zürich ✓",
    }
    path = models.save_model(net, tmp_path / "m.safetensors", metadata=provenance)
    meta = models.read_metadata(path)
    assert {k: meta[k] for k in provenance} == provenance
    assert set(meta) == set(provenance) | set(models.io.RESERVED_METADATA)
    assert json.loads(meta["robustlab_config"]) == net.robustlab_config
    loaded = models.load_model(path)
    assert loaded.robustlab_metadata == provenance
    assert models.load_model(models.save_model(net, tmp_path / "n.safetensors")).robustlab_metadata == {}


@pytest.mark.parametrize(
    "metadata, words",
    [
        ({"tensors_sha256": "0" * 64}, "written by save_model itself"),
        ({"format": "np"}, "written by save_model itself"),
        ({"epochs": 3}, "must be strings"),
        ({1: "x"}, "must be strings"),
        ([("a", "b")], "mapping of strings"),
    ],
)
def test_bad_metadata_is_refused(tmp_path, metadata, words):
    with pytest.raises(ConfigError, match=words):
        models.save_model(_trained_like("mlp", (4,), hidden=[3]), tmp_path / "m.safetensors", metadata=metadata)
    assert list(tmp_path.iterdir()) == []


def test_read_metadata_reads_the_header_only_and_refuses_other_files(tmp_path, monkeypatch):
    path = models.save_model(_trained_like("mlp", (4,), hidden=[3]), tmp_path / "m.safetensors",
                             metadata={"k": "v"})
    monkeypatch.setattr("safetensors.torch.load_file", None)  # would fail if called
    assert models.read_metadata(path)["k"] == "v"
    pt = tmp_path / "m.pt"
    torch.save({"w": torch.zeros(2)}, pt)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        models.read_metadata(pt)


def test_weights_sha256_is_the_identity_of_the_weights(tmp_path):
    net = _trained_like("mnist_net")
    digest = models.weights_sha256(net)
    assert digest == models.weights_sha256(net.state_dict()) == models.tensors_sha256(net.state_dict())
    path = models.save_model(net, tmp_path / "m.safetensors", metadata={"a": "1"})
    assert models.read_metadata(path)["tensors_sha256"] == digest
    assert models.weights_sha256(models.load_model(path)) == digest
    with torch.no_grad():
        next(net.parameters()).view(-1)[0] += 1e-6
    assert models.weights_sha256(net) != digest
    with pytest.raises(CheckpointError, match="'step' is a int, not a tensor"):
        models.weights_sha256({"w": torch.zeros(1), "step": 3})
    with pytest.raises(ConfigError, match="state dict"):
        models.weights_sha256([torch.zeros(1)])


# -- user models from torch.save state dicts --------------------------------------------


def test_factory_loads_a_torch_save_state_dict(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from tests.models.user_factory import make

    torch.manual_seed(4)
    user = make(in_features=5, hidden=7)
    x = torch.rand(4, 5)
    for i, (obj, kw) in enumerate([
        (user.state_dict(), {}),
        (user.state_dict(), {"_use_new_zipfile_serialization": False}),  # legacy format
        ({"state_dict": user.state_dict(), "epoch": 3}, {}),  # a training checkpoint
    ]):
        pt = tmp_path / f"net{i}.pt"
        torch.save(obj, pt, **kw)
        loaded = models.load_model(pt, factory="tests.models.user_factory:make", in_features=5, hidden=7)
        assert torch.equal(loaded(x), user(x)) and not loaded.training
        assert loaded.robustlab_metadata == {} and loaded.input_bounds == (0.0, 1.0)
        assert models.weights_sha256(loaded) == models.weights_sha256(user)
    # shapes are still checked
    with pytest.raises(CheckpointError, match=r"0.weight: file \(7, 5\) vs model \(3, 5\)"):
        models.load_model(tmp_path / "net0.pt", factory="tests.models.user_factory:make", hidden=3)
    # without a factory a torch.save file is refused, pointing at factory= and conversion
    with pytest.raises(CheckpointError, match="torch.save.*never unpickles.*convert_checkpoint.*factory="):
        models.load_model(tmp_path / "net0.pt")


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("kind", ["zip", "legacy", "raw-pickle", "whole-module", "garbage", "truncated"])
def test_malicious_or_broken_torch_files_are_refused_without_running_anything(tmp_path, monkeypatch, kind):
    monkeypatch.syspath_prepend(str(ROOT))
    from tests.models.user_factory import make

    marker = tmp_path / "pwned"
    pt = tmp_path / "net.pt"
    state = {**make().state_dict(), "x": _Payload(marker)}
    if kind == "zip":
        torch.save(state, pt)
    elif kind == "legacy":
        torch.save(state, pt, _use_new_zipfile_serialization=False)
    elif kind == "raw-pickle":
        pt.write_bytes(pickle.dumps(state))
    elif kind == "whole-module":
        torch.save(make(), pt)
    elif kind == "garbage":
        pt.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)
    else:
        torch.save(make().state_dict(), pt)
        pt.write_bytes(pt.read_bytes()[:300])
    with pytest.raises(CheckpointError) as info:
        models.load_model(pt, factory="tests.models.user_factory:make")
    msg = str(info.value)
    assert msg.startswith(f"cannot read {pt} as a state dict of tensors: ")
    assert "robustlab never unpickles arbitrary objects" in msg
    assert "robustlab.models.convert_checkpoint" in msg
    assert "weights_only=False" not in msg and "\n" not in msg
    assert info.value.__cause__ is None and info.value.__suppress_context__
    if kind in ("zip", "legacy"):
        assert "posix.system" in msg or "os.system" in msg or "nt.system" in msg
    if kind == "truncated":
        assert "truncated or corrupt" in msg
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="never unpickles arbitrary objects") as info:
        models.convert_checkpoint(pt, tmp_path / "c.safetensors", name="mlp", num_classes=3, in_channels=5)
    assert "weights_only=False" not in str(info.value)
    assert not marker.exists() and not (tmp_path / "c.safetensors").exists()


@pytest.mark.parametrize("dtype", ['"X99"', '["F32"]', "null"])
def test_an_unknown_dtype_in_the_header_is_refused(tmp_path, dtype):
    path = models.save_model(_trained_like("mlp", (4,), hidden=[6]), tmp_path / "m.safetensors")
    raw = path.read_bytes()
    n, _ = _header(path)
    text = raw[8 : 8 + n].decode().replace('"dtype":"F32"', f'"dtype":{dtype}', 1)
    text += " " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text.encode() + raw[8 + n :])
    with pytest.raises(CheckpointError, match="dtype 'X99'" if dtype == '"X99"' else "bad entry"):
        models.read_metadata(path)
