"""Make the golden numbers of ``tests/attacks/test_golden.py`` with the reference AutoAttack.

Run once, from the repository root, in robustlab's environment::

    python benchmarks/attacks/make_golden.py [--peers-python PATH] [--dry-run]

1. The fixed model: robustlab's ``mlp`` (one hidden layer of 64 ReLU units) on
   scikit-learn's 8x8 ``load_digits`` images scaled to [0, 1], shape (1, 8, 8). If
   ``tests/attacks/data/golden_digits_mlp.safetensors`` exists it is used as is;
   otherwise the model is trained here (Adam, full batch, seeded) on the digits that
   are not golden points and saved there with ``robustlab.models.save_model``.
2. The golden points: the last ``N`` digits of a seeded permutation (numpy
   ``RandomState(SEED)``); their indices and a sha256 of their pixels go into the JSON.
3. The reference numbers, computed in the peers' environment (the one
   ``benchmarks/attacks/run.py`` creates; this script re-runs itself there with
   ``--reference``, handing over the zoo config and a plain ``state_dict``):
   pyautoattack's ``AutoAttack(norm="Linf", eps=EPS, version="standard", seed=SEED)``,
   each attack of the standard version alone (``run_standard_evaluation_individual``:
   APGD-CE, APGD-T, FAB-T, Square with the standard version's settings) and the whole
   ensemble (``run_standard_evaluation``), float32 on the CPU, one thread, all points in
   one batch. Robust points = points the model still classifies correctly on the
   returned inputs. Written to ``tests/attacks/data/golden_digits.json`` with the
   versions and settings used.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(HERE))

from robustlab import models  # noqa: E402

DATA = REPO / "tests" / "attacks" / "data"
WEIGHTS = DATA / "golden_digits_mlp.safetensors"
NUMBERS = DATA / "golden_digits.json"
SEED = 0
N_POINTS = 200
EPS = 0.08
HIDDEN = [64]
ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")


def golden_data() -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
    """All digits as (N, 1, 8, 8) in [0, 1], labels, and the train / golden indices."""
    d = load_digits()
    x = torch.from_numpy((d.images / 16.0).astype(np.float32)).unsqueeze(1)
    y = torch.from_numpy(d.target.astype(np.int64))
    perm = np.random.RandomState(SEED).permutation(len(x))
    return x, y, perm[:-N_POINTS], perm[-N_POINTS:]


def pixels_sha256(images: np.ndarray) -> str:
    """sha256 of the 0..16 grey levels of ``images`` as uint8 (what the test re-checks)."""
    return hashlib.sha256(np.round(images * 16).astype(np.uint8).tobytes()).hexdigest()


def train_model(x: torch.Tensor, y: torch.Tensor) -> torch.nn.Module:
    torch.manual_seed(SEED)
    model = models.create("mlp", num_classes=10, in_channels=1, input_size=(8, 8), hidden=HIDDEN)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(300):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def reference(job_path: str, out_path: str) -> None:
    """The peers' side: the reference AutoAttack's numbers on the golden points."""
    import pyautoattack
    from peers import load_shared_model
    from pyautoattack import AutoAttack

    job = json.loads(Path(job_path).read_text())
    torch.set_num_threads(1)
    model = load_shared_model(job["model"])
    x, y, _, gold_idx = golden_data()
    xg, yg = x[gold_idx], y[gold_idx]
    logging.getLogger("auto-attack").setLevel(logging.WARNING)
    aa = AutoAttack(model, norm="Linf", eps=EPS, version="standard", seed=SEED)
    indiv = aa.run_standard_evaluation_individual(xg, yg, batch_size=N_POINTS)
    robust: dict[str, int] = {}
    with torch.no_grad():
        for name in ATTACKS:
            x_adv = indiv[name][0]
            assert float((x_adv - xg).abs().max()) <= EPS + 1e-6
            robust[name] = int((model(x_adv).argmax(1) == yg).sum())
        aa = AutoAttack(model, norm="Linf", eps=EPS, version="standard", seed=SEED)
        x_adv, _ = aa.run_standard_evaluation(xg, yg, batch_size=N_POINTS)
        robust["standard"] = int((model(x_adv).argmax(1) == yg).sum())
    out = {"robust": robust, "pyautoattack": pyautoattack.__version__, "torch": torch.__version__}
    Path(out_path).write_text(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="print the numbers, write nothing")
    ap.add_argument("--peers-python", default=None, help="an existing peers' interpreter")
    ap.add_argument("--reference", nargs=2, metavar=("JOB", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.reference:
        reference(*args.reference)
        return
    import subprocess
    import tempfile

    from run import peer_python, share_model  # robustlab's side (benchmarks/attacks/run.py)

    torch.set_num_threads(1)
    x, y, train_idx, gold_idx = golden_data()
    if WEIGHTS.exists():
        model = models.load_model(WEIGHTS).eval()
        made = "loaded"
    else:
        model = train_model(x[train_idx], y[train_idx])
        made = "trained"
        if not args.dry_run:
            DATA.mkdir(parents=True, exist_ok=True)
            models.save_model(model, WEIGHTS)
    xg, yg = x[gold_idx], y[gold_idx]
    with torch.no_grad():
        clean = model(xg).argmax(1) == yg
    py = peer_python(args.peers_python)
    with tempfile.TemporaryDirectory() as tmp:
        job = {"model": share_model(model, Path(tmp), "golden")}
        (Path(tmp) / "job.json").write_text(json.dumps(job))
        env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
        subprocess.run([py, __file__, "--reference", f"{tmp}/job.json", f"{tmp}/out.json"], check=True, env=env)
        ref = json.loads((Path(tmp) / "out.json").read_text())
    robust = ref["robust"]
    out = {
        "what": "robust points (of n) under the reference AutoAttack, per attack alone and for the "
                "standard ensemble",
        "made_by": "python benchmarks/attacks/make_golden.py (reference numbers computed in the peers' "
                   "environment)",
        "reference": f"pyautoattack {ref['pyautoattack']} (fra31/auto-attack, packaged), "
                     f"AutoAttack(norm='Linf', eps={EPS}, version='standard', seed={SEED}); "
                     f"each attack alone via run_standard_evaluation_individual, the ensemble via "
                     f"run_standard_evaluation; batch_size={N_POINTS}; float32 CPU, 1 thread",
        "torch": ref["torch"],
        "model": {"file": WEIGHTS.name, "zoo": "mlp", "hidden": HIDDEN, "input": [1, 8, 8],
                  "trained": "Adam lr 1e-2, 300 full-batch steps of cross-entropy on the non-golden digits, "
                             f"torch.manual_seed({SEED})"},
        "data": {"source": "sklearn.datasets.load_digits, images / 16 as (1, 8, 8)",
                 "indices": [int(i) for i in gold_idx], "pixels_sha256": pixels_sha256(xg.numpy()),
                 "selection": f"last {N_POINTS} of numpy RandomState({SEED}).permutation(1797)"},
        "norm": "linf",
        "eps": EPS,
        "n": N_POINTS,
        "clean": int(clean.sum()),
        "robust": robust,
    }
    print(f"model {made}; clean {out['clean']}/{N_POINTS}; robust {robust}")
    if not args.dry_run:
        NUMBERS.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
