"""Fake results-store rows (the shape of RunRecord.to_dict()) for the report tests.

Robust rows follow the evaluation path's contract (``evaluate/results.py:ResultRow``):
kind, attack, norm, eps, accuracy, num_points, num_total, subset, point_set, protocol,
params, stages (run order), per_attack (``clean`` first), per_class, forwards, backwards,
flags, flag_codes. ``legacy=True`` gives the older shape without the newer keys.
"""

from __future__ import annotations

from typing import Any

EPS = (0.05, 0.1, 0.2)
MODELS = ("mlp", "mnist_net")
RATES = (0.0, 0.2, 0.4)
# actual flip rates differ from the nominal ones, so a test can tell which one was used
FLIPS = {0.0: None, 0.2: 0.183, 0.4: 0.357}
NUM_TEST = 360
FULL_SET = "0f1e2d3c4b5a"  # point-set id of all 360 test points
SUBSET_100 = "5e7a1c2b9d00"  # point-set id of a fixed 100-point subset


def robust_row(
    attack: str,
    eps: float,
    accuracy: float,
    *,
    clean: float,
    norm: str = "linf",
    n: int = NUM_TEST,
    point_set: str | None = None,
    stages: list[str] | None = None,
    per_attack: dict[str, float] | None = None,
    flags: list[str] | None = None,
    legacy: bool = False,
) -> dict[str, Any]:
    """One ``metrics["robust"]`` row (``legacy``: only the keys older stores had)."""
    if legacy:
        return {"attack": attack, "norm": norm, "eps": eps, "accuracy": accuracy, "forwards": 100,
                "backwards": 100, "params": {"steps": 20}, "num_points": n}
    stages = stages if stages is not None else [attack]
    return {
        "kind": "attack", "attack": attack, "norm": norm, "eps": eps, "accuracy": accuracy,
        "num_points": n, "num_total": NUM_TEST, "subset": None if n == NUM_TEST else n,
        "point_set": point_set or (FULL_SET if n == NUM_TEST else SUBSET_100),
        "protocol": "robustlab-standard/1" if attack == "standard" else attack, "params": {"steps": 20},
        "stages": stages,
        "per_attack": per_attack if per_attack is not None else {"clean": clean, attack: accuracy},
        "per_class": [accuracy] * 10, "forwards": 100, "backwards": 100,
        "flags": list(flags or []), "flag_codes": [f.split(":")[0] for f in flags or []],
    }


def config(model: str, rate: float, *, name: str = "", kind: str = "symmetric") -> dict[str, Any]:
    return {
        "name": name,
        "seed": 0,
        "data": {"name": "digits", "root": None, "download": False, "options": {}, "val_fraction": 0.0},
        "noise": None if rate == 0 else {"kind": kind, "rate": rate, "exact": False, "options": {}},
        "model": {"name": model, "params": {}},
        "train": {"objective": "erm", "loss": {"name": "ce", "params": {}}, "epochs": 3},
        "evaluate": {"attacks": [{"name": "pgd", "norm": "linf", "eps": list(EPS)}]},
    }


def history(extra: bool = False) -> list[dict[str, Any]]:
    out = []
    for e in range(1, 4):
        h = {"epoch": e, "lr": 0.05 / e, "seconds": 0.1, "train_loss": 2.0 / e,
             "train_accuracy": 0.3 * e, "samples_per_s": 1000.0}
        if extra:
            h["done_entropy"] = 1.5 - 0.1 * e
            h["robust_val_accuracy"] = 0.1 * e
            h["note"] = "text is not a curve"
        out.append(h)
    return out


def row(
    i: int,
    model: str,
    rate: float,
    *,
    name: str | None = None,
    status: str = "done",
    clean: float | None = None,
    robust: list[dict[str, Any]] | None = None,
    extra_history: bool = False,
    metrics_extra: dict[str, Any] | None = None,
    legacy: bool = False,
    suite: str = "fake",
) -> dict[str, Any]:
    rid = f"{i:02d}" + "abcdef0123456789" * 4
    name = name if name is not None else f"{model}/sym-{rate:g}"
    clean = clean if clean is not None else round(0.95 - 0.3 * rate - (0.05 if model == "mlp" else 0.0), 4)
    metrics = None
    if status == "done":
        flip = FLIPS[rate]
        metrics = {
            "clean_accuracy": clean,
            "ece": 0.01 + rate / 10,
            "per_class_accuracy": [clean] * 10,
            "num_test": 360,
            "robust": robust
            if robust is not None
            else [robust_row("pgd", e, round(clean * (1 - 2 * e), 4), clean=clean, legacy=legacy) for e in EPS],
            "eval_seconds": 0.5,
            "train_seconds": 1.25 + i,
            "history": history(extra_history),
            "resumed_from_epoch": 0,
            "noise": None if rate == 0 else {"kind": "symmetric", "rate": rate, "flip_rate": flip},
            "data": {"train": "digits (sklearn 8x8), 1437 train", "num_train": 1437, "num_val": 0, "num_test": 360},
            "final_train_accuracy_noisy_labels": 0.9,
            "training": {"best_epoch": None, "stopped_early": False, "stop_reason": None, "flags": []},
            **(metrics_extra or {}),
        }
    return {
        "id": rid,
        "name": name,
        "suite": suite,
        "status": status,
        "config": config(model, rate, name=name),
        "metrics": metrics,
        "error": None if status == "done" else "RuntimeError: out of memory\n  Traceback line",
        "attempts": 1,
        "created_at": f"2024-01-01T00:00:{i:02d}Z",
        "started_at": f"2024-01-01T00:00:{i:02d}Z",
        "finished_at": f"2024-01-01T00:01:{i:02d}Z",
        "duration_s": 10.0 + i if status == "done" else None,
        "versions": {"robustlab": "0.1.0", "torch": "2.13.0", "python": "3.11"},
        "git_sha": "0123456789abcdef",
    }


FLAG_TEXT = "randomized: outputs change between identical forward passes"
TRAIN_FLAG = "training-at-chance: training accuracy stayed at chance level (10.4%) after 3 epochs"
STANDARD_STAGES = ["apgd-ce", "apgd-t", "fab-t", "square"]


def suite_rows() -> list[dict[str, Any]]:
    """2 models x noise rates 0, 0.2, 0.4 (PGD at 3 eps on all 360 test points), a failed
    run, a run with audit flags, training flags and the standard ensemble on a 100-point
    subset (per-attack breakdown stored alphabetically, as older stores did), and a
    history with extra per-epoch keys."""
    rows = []
    i = 0
    for m in MODELS:
        for r in RATES:
            rows.append(row(i, m, r, metrics_extra={"best_epoch": 2, "test_accuracy_best": 0.8,
                                                   "test_accuracy_last": 0.7} if r > 0 else None))
            i += 1
    rows.append(row(i, "mlp", 0.4, name="failed run", status="failed"))
    i += 1
    flagged = [
        robust_row("standard", 8 / 255, 0.41, clean=0.9, n=100, stages=STANDARD_STAGES, flags=[FLAG_TEXT],
                   per_attack={"apgd-ce": 0.47, "apgd-t": 0.43, "clean": 0.9, "fab-t": 0.43, "square": 0.41}),
    ]
    r = row(i, "mlp", 0.0, name="<script>alert(1)</script>", robust=flagged, extra_history=True)
    r["metrics"]["training"]["flags"] = [TRAIN_FLAG]
    rows.append(r)
    return rows


def evaluation_row(
    i: int,
    *,
    weights_of: dict[str, Any] | None,
    name: str = "model.safetensors standard linf on digits/test",
    provenance: bool = True,
) -> dict[str, Any]:
    """A stored evaluation of saved weights (suite ``evaluations``). ``weights_of``: the
    training run the weights came from (a :func:`row` dict), or None for weights of
    unknown origin; ``provenance=False`` for an older store without it."""
    sha = f"{i:02d}" + "feedface" * 8
    clean = 0.81
    metrics: dict[str, Any] = {
        "clean_accuracy": clean,
        "per_class_accuracy": [clean] * 10,
        "num_test": NUM_TEST,
        "robust": [robust_row("standard", 0.1, 0.33, clean=0.8, n=100, stages=STANDARD_STAGES,
                              per_attack={"clean": 0.8, "apgd-ce": 0.4, "apgd-t": 0.35, "fab-t": 0.35,
                                          "square": 0.33})],
        "data": {"test": "digits test", "num_test": NUM_TEST},
    }
    if provenance:
        if weights_of is None:
            metrics["provenance"] = {"weights_sha256": sha, "run_id": None, "run_name": None, "training": None}
        else:
            cfg = weights_of["config"]
            metrics["provenance"] = {
                "weights_sha256": sha, "run_id": weights_of["id"], "run_name": weights_of["name"],
                "training": {"dataset": cfg["data"]["name"], "model": cfg["model"]["name"],
                             "objective": cfg["train"]["objective"], "loss": cfg["train"]["loss"]["name"],
                             "noise": None if cfg["noise"] is None else
                             {"kind": cfg["noise"]["kind"], "rate": cfg["noise"]["rate"]}},
            }
    return {
        "id": f"e{i:02d}" + "0123456789abcdef" * 4,
        "name": name,
        "suite": "evaluations",
        "status": "done",
        "config": {"kind": "evaluation", "seed": 0, "data": {"name": "digits", "split": "test", "root": None},
                   "model": {"name": "mlp", "weights_sha256": sha},
                   "evaluate": {"attack": "standard", "norm": "linf", "eps": [0.1], "params": {},
                                "subset": 100, "amp": False, "audit": True}},
        "metrics": metrics,
        "error": None,
        "attempts": 1,
        "created_at": f"2024-01-02T00:00:{i:02d}Z",
        "started_at": f"2024-01-02T00:00:{i:02d}Z",
        "finished_at": f"2024-01-02T00:01:{i:02d}Z",
        "duration_s": 3.0,
        "versions": {"robustlab": "0.1.0", "torch": "2.13.0", "python": "3.11"},
        "git_sha": "0123456789abcdef",
    }
