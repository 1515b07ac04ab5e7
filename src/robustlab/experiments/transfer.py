"""Stored transfer-attack evaluations: :func:`transfer_weights` crafts an attack on saved
source models and scores it on saved target models (``robustlab transfer``), through
:func:`robustlab.evaluate.transfer.transfer_matrix`, and stores the matrix as a run of the
suite ``evaluations`` (``metrics["transfer"]``), which the report shows as a table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from robustlab.errors import ConfigError
from robustlab.experiments.config import config_hash
from robustlab.experiments.store import ResultsStore, RunRecord


def transfer_weights(
    sources: Mapping[str, str | Path | Sequence[str | Path]],
    targets: Mapping[str, str | Path],
    store: ResultsStore,
    *,
    data: str = "digits",
    split: str = "test",
    root: str | None = None,
    attack: str = "mi-fgsm",
    norm: str = "linf",
    eps: float | str = 0.1,
    subset: int | None = None,
    attack_params: dict[str, Any] | None = None,
    factory: str | None = None,
    seed: int = 0,
    force: bool = False,
) -> tuple[RunRecord, Any]:
    """Craft ``attack`` at ``eps`` on each source (a weights file, or a list of them: an
    ensemble of surrogates) and score it on every target (weights files), on ``subset``
    points of ``data``/``split`` (the evaluation path's seeded subset). Stored as one run
    keyed by the weights' tensor hashes and the settings; a rerun is a no-op. Returns the
    run and the :class:`~robustlab.evaluate.transfer.TransferMatrix` (None when reused).
    Every file and name is checked before anything is stored."""
    from robustlab import data as data_mod
    from robustlab.attacks import ThreatModel
    from robustlab.attacks.threat import parse_eps
    from robustlab.evaluate.path import subset_indices
    from robustlab.evaluate.transfer import transfer_matrix
    from robustlab.experiments.runner import execute_run
    from robustlab.models import load_model, weights_sha256

    if not sources or not targets:
        raise ConfigError("name at least one source and one target (--source NAME=weights, --target NAME=weights).")
    threat = ThreatModel(norm, parse_eps(eps))
    params = dict(attack_params or {})

    def load(path: str | Path) -> tuple[Any, str]:
        net = load_model(path, factory=factory).eval()
        return net, weights_sha256(net)

    src_models: dict[str, Any] = {}
    src_keys: dict[str, Any] = {}
    for name, spec in sources.items():
        paths = [spec] if isinstance(spec, (str, Path)) else list(spec)
        loaded = [load(p) for p in paths]
        src_models[name] = loaded[0][0] if len(loaded) == 1 else [m for m, _ in loaded]
        src_keys[name] = [h for _, h in loaded]
    tgt_models: dict[str, Any] = {}
    tgt_keys: dict[str, str] = {}
    for name, path in targets.items():
        tgt_models[name], tgt_keys[name] = load(path)
    ds = data_mod.load(data, split, root=root, seed=seed)
    idx = subset_indices(len(ds), subset, seed)
    config = {
        "kind": "transfer",
        "seed": seed,
        "data": {"name": data, "split": split, "root": root, "subset": subset},
        "sources": src_keys,
        "targets": tgt_keys,
        "attack": {"name": attack, "norm": threat.norm, "eps": threat.eps, "params": params},
    }
    name = f"transfer {attack} {threat.norm} eps={threat.eps:g}: {', '.join(sources)} -> {', '.join(targets)} on {data}/{split}"
    box: list[Any] = []

    def work(art: Path) -> dict[str, Any]:
        m = transfer_matrix(src_models, tgt_models, ds.x[idx], ds.y[idx], attack, threat, seed=seed, **params)
        box.append(m)
        return {"transfer": m.to_dict(), "num_test": len(ds), "data": {"test": ds.description, "num_test": len(ds)}}

    record = execute_run(store, config_hash(config), name, config, work, suite="evaluations", force=force)
    return record, (box[0] if box else None)


__all__ = ["transfer_weights"]
