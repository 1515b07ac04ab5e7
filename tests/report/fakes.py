"""Fake results-store rows (the shape of RunRecord.to_dict()) for the report tests."""

from __future__ import annotations

from typing import Any

EPS = (0.05, 0.1, 0.2)
MODELS = ("mlp", "mnist_net")
RATES = (0.0, 0.2, 0.4)
# actual flip rates differ from the nominal ones, so a test can tell which one was used
FLIPS = {0.0: None, 0.2: 0.183, 0.4: 0.357}


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
            else [
                {"attack": "pgd", "norm": "linf", "eps": e, "accuracy": round(clean * (1 - 2 * e), 4),
                 "forwards": 100, "backwards": 100, "params": {"steps": 20}, "num_points": 360}
                for e in EPS
            ],
            "eval_seconds": 0.5,
            "train_seconds": 1.25 + i,
            "history": history(extra_history),
            "resumed_from_epoch": 0,
            "noise": None if rate == 0 else {"kind": "symmetric", "rate": rate, "flip_rate": flip},
            "data": {"train": "digits (sklearn 8x8), 1437 train", "num_train": 1437, "num_val": 0, "num_test": 360},
            "final_train_accuracy_noisy_labels": 0.9,
            **(metrics_extra or {}),
        }
    return {
        "id": rid,
        "name": name,
        "suite": "fake",
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


def suite_rows() -> list[dict[str, Any]]:
    """2 models x noise rates 0, 0.2, 0.4 (PGD at 3 eps), a failed run, a run with audit
    flags and a per-attack breakdown, and a history with extra per-epoch keys."""
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
        {"attack": "standard", "norm": "linf", "eps": 8 / 255, "accuracy": 0.41, "num_points": 100,
         "flags": [FLAG_TEXT], "per_attack": {"apgd-ce": 0.47, "apgd-t": 0.43, "square": 0.41}},
    ]
    rows.append(row(i, "mlp", 0.0, name="<script>alert(1)</script>", robust=flagged, extra_history=True))
    return rows
