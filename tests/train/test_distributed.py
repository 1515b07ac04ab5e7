"""Data-parallel training under torchrun (2 ranks, gloo on CPU) against one process.

One ``torchrun --standalone --nproc_per_node=2`` launch runs the child script below. On
every rank it trains :func:`train` three ways: uninterrupted for 3 epochs; interrupted after
epoch 1 and resumed from its checkpoint; and one experiment through the runner
(``run_experiment``). An audit hook records every file each rank opens for writing,
renames, deletes or creates under the test's folder. The test then trains :func:`train`
in this process and compares.

Tolerance: for the same global batches the 2-rank gradient is the sum of two partial sums
instead of one sum, so the weights differ from one process by float32 rounding only;
measured here after 3 epochs of ERM (SGD with momentum, cosine schedule, EMA, best-epoch
selection): max |diff| 1.2e-7. Asserted: :data:`WEIGHT_ATOL` = 1e-5. (Weighting the ranks'
mean losses equally instead, as plain DDP averaging would with these unequal parts,
gives 0.5.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

from robustlab.errors import ConfigError
from robustlab.train import ERM, Trainer, distributed
from tests.train.helpers import Net, blobs

REPO = Path(__file__).resolve().parents[2]
#: the asserted bound on max |w_2ranks - w_1process| after 3 epochs (measured 1.2e-7)
WEIGHT_ATOL = 1e-5
EPOCHS = 3


def problem() -> tuple[Any, Any]:
    """253 training points in global batches of 25 (parts of 13 and 12 rows, the last
    batch of 3 split 2/1, so a mean of the ranks' means would be wrong) and 61 validation
    points (sharded 31/30)."""
    return blobs(n=253, seed=0), blobs(n=61, seed=1)


def train(checkpoint_dir: Path, *, init_seed: int = 0, callbacks: Sequence[Callable[..., None]] = ()) -> Trainer:
    """The run both sides train: ERM on blobs, no dropout (ranks draw their own dropout
    masks, so dropout would differ from one process), EMA, best-epoch selection on val."""
    torch.manual_seed(init_seed)
    net = Net(dropout=0.0)
    trainer = Trainer(
        net, ERM("ce"), epochs=EPOCHS, batch_size=25, lr=0.2, ema_decay=0.9, select="clean",
        checkpoint_dir=checkpoint_dir, callbacks=callbacks, progress=False, threads=1,
    )
    tr, va = problem()
    trainer.fit(tr, va)
    return trainer


class Interrupt(Exception):
    """Raised by a callback to stop a run after its first epoch, as a crash would."""


CHILD = r'''
import json, os, sys
from pathlib import Path

root = Path(sys.argv[1])
sys.path.insert(0, sys.argv[2])
rank = int(os.environ["RANK"])
events = []
recording = [True]
WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def audit(event, args):
    # every file this process creates, opens for writing, renames or deletes under root
    if not recording[0]:
        return
    if event == "open":
        path, mode, flags = (list(args) + [None, None])[:3]
        writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & WRITE)
        if writes and isinstance(path, (str, os.PathLike)) and str(path).startswith(str(root)):
            events.append([event, str(path)])
    elif event in ("os.rename", "os.replace", "os.remove", "os.unlink", "os.mkdir", "os.rmdir", "os.truncate"):
        if str(args[0]).startswith(str(root)):
            events.append([event, str(args[0])])


sys.addaudithook(audit)

from tests.train.test_distributed import Interrupt, train  # noqa: E402


def weights(t):
    return {k: v.flatten().tolist() for k, v in t.model.state_dict().items()}


def stop_after_first(trainer, record):
    if record["epoch"] == 1:
        raise Interrupt()


# rank 1 starts from other initial weights: the Trainer must give it rank 0's
full = train(root / "ck-full", init_seed=rank)
try:
    train(root / "ck-resume", init_seed=rank, callbacks=[stop_after_first])
    raise SystemExit("the interrupting callback did not stop the run")
except Interrupt:
    pass
resumed = train(root / "ck-resume", init_seed=123)

# the experiment runner: rank 0 writes the store row and the artifacts, rank 1 nothing
from robustlab.experiments import ResultsStore, make_config, run_experiment  # noqa: E402

recording[0] = False
store = ResultsStore(root / "results")  # (the CLI opens the store on every rank)
recording[0] = True
cfg = make_config({}, ["model.params.hidden=[16]", "train.epochs=1", "train.batch_size=64", "evaluate.attacks=[]"])
rec = run_experiment(cfg, store, progress=False)
recording[0] = False
out = {
    "run": {"id": rec.id, "hash": cfg.hash(), "status": rec.status, "metrics": rec.metrics},
    "audit": events,
    "full": {"weights": weights(full), "history": full.history, "summary": full.summary()},
    "resumed": {"weights": weights(resumed), "history": resumed.history, "from": resumed.resumed_from_epoch},
}
(root / "out").mkdir(exist_ok=True)
(root / "out" / f"rank{rank}.json").write_text(json.dumps(out))
'''


def _flat(weights: dict[str, list[float]]) -> torch.Tensor:
    return torch.cat([torch.tensor(v, dtype=torch.float64) for _, v in sorted(weights.items())])


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run the child script under torchrun with 2 CPU ranks (gloo); returns each rank's
    output and the folder it ran in."""
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("this PyTorch build has no torch.distributed gloo backend (needed for 2 CPU ranks)")
    root = tmp_path_factory.mktemp("ddp")
    script = root / "child.py"
    script.write_text(CHILD)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(script), str(root), str(REPO)]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    outs = [json.loads((root / "out" / f"rank{r}.json").read_text()) for r in (0, 1)]
    return {"root": root, "ranks": outs}


def test_two_ranks_match_one_process(two_ranks: dict[str, Any], tmp_path: Path) -> None:
    one = train(tmp_path / "ck")
    ref = _flat({k: v.flatten().tolist() for k, v in one.model.state_dict().items()})
    rank0, rank1 = two_ranks["ranks"]
    got = _flat(rank0["full"]["weights"])
    diff = float((got - ref).abs().max())
    print(f"max |w_2ranks - w_1process| = {diff:.3g}")
    assert diff <= WEIGHT_ATOL, f"2 ranks vs 1 process: max |diff| {diff:.3g} > {WEIGHT_ATOL}"
    # ... but not trivially: the weights moved far from their initialisation
    torch.manual_seed(0)
    init = _flat({k: v.flatten().tolist() for k, v in Net(dropout=0.0).state_dict().items()})
    assert float((ref - init).abs().max()) > 1000 * WEIGHT_ATOL
    # both ranks end with the same weights, bit for bit, though rank 1 started elsewhere
    assert rank0["full"]["weights"] == rank1["full"]["weights"]
    # the epoch records are the global ones: validation counts exactly, losses to rounding
    for h1, h2 in zip(one.history, rank0["full"]["history"], strict=True):
        assert h2["val_accuracy"] == h1["val_accuracy"]
        assert h2["train_accuracy"] == pytest.approx(h1["train_accuracy"], rel=1e-6)
        assert h2["train_loss"] == pytest.approx(h1["train_loss"], rel=1e-5)
    assert rank0["full"]["summary"]["best_epoch"] == one.summary()["best_epoch"]
    assert rank0["full"]["history"] == rank1["full"]["history"]


def test_resume_after_interrupt_equals_uninterrupted(two_ranks: dict[str, Any]) -> None:
    for rank in two_ranks["ranks"]:
        assert rank["resumed"]["from"] == 1
        assert rank["resumed"]["weights"] == rank["full"]["weights"]
        strip = [{k: v for k, v in h.items() if k not in ("seconds", "samples_per_s")} for h in rank["resumed"]["history"]]
        full = [{k: v for k, v in h.items() if k not in ("seconds", "samples_per_s")} for h in rank["full"]["history"]]
        assert strip == full


def test_only_rank_0_writes(two_ranks: dict[str, Any]) -> None:
    root: Path = two_ranks["root"]
    rank0, rank1 = two_ranks["ranks"]
    assert rank1["audit"] == []
    written = {Path(p).relative_to(root).parts[0] for _, p in rank0["audit"]}
    assert written == {"ck-full", "ck-resume", "results"}  # the audit does see rank 0's writes
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    run = rank0["run"]["id"]
    assert files == [
        "child.py", "ck-full/best.pt", "ck-full/last.pt", "ck-resume/best.pt", "ck-resume/last.pt",
        "out/rank0.json", "out/rank1.json", f"results/artifacts/{run}/.lock",
        f"results/artifacts/{run}/model.safetensors", f"results/artifacts/{run}/records.npz",
        f"results/artifacts/{run}/train/last.pt", "results/results.db",
    ]


def test_runner_stores_one_run_from_rank_0(two_ranks: dict[str, Any]) -> None:
    rank0, rank1 = two_ranks["ranks"]
    assert rank0["run"]["status"] == "done" and rank0["run"]["id"] == rank0["run"]["hash"]
    # rank 1 trained alongside, then returned the row rank 0 stored
    assert rank1["run"] == rank0["run"]
    history = rank0["run"]["metrics"]["history"]
    assert len(history) == 1 and history[0]["train_accuracy"] > 0.5


def test_shard_splits_a_batch_into_contiguous_parts() -> None:
    for n in range(0, 12):
        for size in (1, 2, 3, 5):
            parts = [distributed.shard(n, r, size) for r in range(size)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
            lengths = [hi - lo for lo, hi in parts]
            assert max(lengths) - min(lengths) <= 1 and lengths == sorted(lengths, reverse=True)
    assert [distributed.shard(5, r, 2) for r in (0, 1)] == [(0, 3), (3, 5)]


def test_world_reads_torchrun_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert distributed.world() == distributed.World(0, 1, 0) and distributed.is_main()
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    w = distributed.world()
    assert (w.rank, w.size, w.local_rank, w.is_main, w.distributed) == (3, 4, 1, False, True)
    assert distributed.device_for(torch.device("cuda"), w) == torch.device("cuda", 1)
    assert distributed.device_for(torch.device("cpu"), w) == torch.device("cpu")
    # ranks draw their own random numbers; one process keeps the single-process seeds
    seeds = {distributed.rank_seed("objective", 0, 2, distributed.World(r, 4, r)) for r in range(4)}
    assert len(seeds) == 4
    assert distributed.rank_seed("objective", 0, 2, distributed.World()) == distributed.derive_seed("objective", 0, 2)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ConfigError, match="RANK=4 and WORLD_SIZE=4"):
        distributed.world()


def test_too_few_rows_per_rank_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    t = Trainer(Net(), ERM("ce"), epochs=1, batch_size=3)
    with pytest.raises(ConfigError, match="batch_size .* at least 4"):
        t.fit(blobs(n=30))
