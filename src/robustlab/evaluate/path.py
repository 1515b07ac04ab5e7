"""THE evaluation path: one function measures a model on points.

>>> from robustlab import evaluate
>>> ev = evaluate.evaluate(model, x, y, [evaluate.Measurement("pgd", "linf", [0.05, 0.1], {"steps": 20}),
...                                      evaluate.Measurement("standard", "linf", [0.1], subset=100)])
>>> ev.clean["clean_accuracy"], [(r.attack, r.eps, r.accuracy, r.num_points) for r in ev.rows]

Every way of measuring a model goes through :func:`evaluate`: the CLI's ``evaluate`` and
``attack`` commands and a config's evaluation step (via :func:`evaluate_model` and
``experiments.evaluate_weights``), :func:`attack_report` (one attack, full detail),
:func:`robust_accuracy` (one attack, the per-sample mask) and the Trainer's robust
validation. They all return or store the same row type,
:class:`~robustlab.evaluate.results.ResultRow`.

The protocol, written once:

- **points**: a measurement with ``subset=N`` runs on the first ``N`` points of a fixed
  permutation of the points seeded by ``seed`` (indices kept in increasing order), the
  same ``N`` points for every measurement of a call; ``subset=None`` runs on all points.
  Each row says how many points it measured and which (``point_set``);
- **randomness**: each measurement draws from its own generator seeded by
  ``derive_seed("attack", seed, attack, norm)`` (or from the ``generator`` passed in,
  shared in order), never from the global RNG;
- **budgets**: all eps of a measurement run in one pass in increasing order; a point
  broken at a smaller eps is not attacked again (its adversarial example lies in every
  larger ball);
- **batches**: ``batch_size="auto"`` is memory-aware on CUDA (512 on CPU); a CUDA
  out-of-memory error halves the batch and retries it;
- **audit**: after the attack, :func:`robustlab.attacks.audit` inspects the model and the
  results on the first ``audit_points`` measured points (``audit=True``: all checks,
  ``"cheap"``: no extra attacks, ``False``: none); ``non-monotone-eps`` is added across
  the budgets of each measurement;
- **threads**: on CPU the work runs under :func:`robustlab.threads.thread_budget`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from robustlab.attacks import Attack, AttackResult, Flag, ThreatModel, attacks
from robustlab.attacks import create as create_attack
from robustlab.attacks.audit import audit as run_audit
from robustlab.attacks.audit import check_monotone
from robustlab.attacks.engine import model_device
from robustlab.attacks.threat import parse_eps
from robustlab.certify.base import Certification, Certifier, certifiers
from robustlab.corruptions import Corruption
from robustlab.corruptions import get as get_corruption
from robustlab.errors import ConfigError, InvalidInputError
from robustlab.evaluate.metrics import (
    auto_batch_size,
    ece_of,
    per_class_accuracy,
    predict_logits,
    reliability,
    reliability_of,
    stage_accuracies,
)
from robustlab.evaluate.results import (
    AttackReport,
    EpsResult,
    Evaluation,
    ResultRow,
    RobustEvaluation,
    jsonable,
    point_set_id,
)
from robustlab.evaluate.shifts import check_severities, corruption_rows
from robustlab.progress import Progress, format_seconds
from robustlab.seeding import derive_seed
from robustlab.threads import thread_budget
from robustlab.validation import check_device, check_int, check_labels, check_subset

AUDIT_MODES: tuple[bool | str, ...] = (True, False, "cheap")
#: the kinds of measurement: an attack (robust accuracy, an upper bound), a certifier
#: (certified accuracy, a lower bound), a corruption (accuracy at severities 1..5) or a
#: detector (AUROC against shifted inputs at each level)
KINDS: tuple[str, ...] = ("attack", "certify", "corruption", "detect")
#: integer per-point records of points a measurement did not cover (-1 is an abstention)
NOT_MEASURED = -2


@dataclass
class Measurement:
    """One attack at one or several eps: ``Measurement("pgd", "linf", [0.05, 0.1], {"steps": 20})``,
    or one certificate at one or several radii:
    ``Measurement("smoothing", "l2", [0, 0.25, 0.5], {"sigma": 0.25, "n": 10_000}, kind="certify")``.

    ``attack``: a registry name (``robustlab ls attacks``; for ``kind="certify"``,
    ``robustlab ls certifiers``) or an :class:`Attack` (a :class:`Certifier`);
    ``params``: its parameters (with a name only); ``eps``: numbers or fractions such
    as ``"8/255"``; ``subset``: measure on N points of the call's fixed seeded
    permutation (None: all points); ``audit``: ``True``, ``"cheap"`` or ``False``.
    """

    attack: str | Attack | Certifier = "standard"
    norm: str = "linf"
    eps: Sequence[float | str] = (8 / 255,)
    params: dict[str, Any] = field(default_factory=dict)
    subset: int | None = None
    audit: bool | str = True
    kind: str = "attack"

    def build(self) -> tuple[str, Any, list[Any]]:
        """Check the measurement and build its attack (certifier, corruption) and threat
        models (severities) without doing any work."""
        if self.kind not in KINDS:
            raise ConfigError(f"unknown measurement kind {self.kind!r}; robustlab measures {', '.join(map(repr, KINDS))}.")
        if self.audit not in AUDIT_MODES:
            raise ConfigError(f"audit must be True, False or 'cheap', got {self.audit!r}.")
        check_subset(self.subset)
        if self.kind == "certify":
            return self._build_certifier()
        if self.kind == "corruption":
            return self._build_corruption()
        if self.kind == "detect":
            return self._build_detector()
        if isinstance(self.attack, str):
            atk = create_attack(self.attack, **dict(self.params))
            name = attacks.canonical(self.attack)
        elif isinstance(self.attack, Attack):
            if self.params:
                raise ConfigError("attack parameters go with an attack name, not with an Attack object.")
            atk = self.attack
            name = getattr(type(atk), "registry_name", type(atk).__name__)
        else:
            raise ConfigError(f"attack must be a registry name or an Attack, got {self.attack!r}.")
        threats = as_threats(self.eps, self.norm)
        return name, atk, threats

    def _build_corruption(self) -> tuple[str, Corruption, list[int]]:
        if not isinstance(self.attack, str):
            raise ConfigError(f"a corruption measurement names a corruption (e.g. 'fog'), got {self.attack!r}.")
        if self.norm not in ("severity", "linf"):  # "linf" is the dataclass default
            raise ConfigError(f"a corruption measurement is over severities (norm='severity'), not {self.norm!r}.")
        if set(self.params) - {"params"}:
            raise ConfigError(f"a corruption measurement takes params={{'params': <its own table>}} only, "
                              f"got {sorted(self.params)}.")
        entry = get_corruption(self.attack)
        return entry.name, entry, check_severities(list(self.eps))

    def _build_detector(self) -> tuple[str, Any, list[float]]:
        from robustlab.detect import Detector, detectors
        from robustlab.detect.shifts import parse_shift

        params = dict(self.params)
        params.pop("shift_params", None)
        det: Detector
        if isinstance(self.attack, Detector):
            if params:
                raise ConfigError("detector parameters go with a detector name, not with a Detector object.")
            det, name = self.attack, self.attack.name
        elif isinstance(self.attack, str):
            det, name = detectors.create(self.attack, **params), detectors.canonical(self.attack)
        else:
            raise ConfigError(f"a detect measurement names a detector (e.g. 'mahalanobis'), got {self.attack!r}.")
        parse_shift(self.norm)
        levels = sorted({float(parse_eps(v)) for v in self.eps})
        if not levels:
            raise ConfigError("a detect measurement needs at least one level (eps=[...]).")
        return name, det, levels

    def _build_certifier(self) -> tuple[str, Certifier, list[ThreatModel]]:
        if isinstance(self.attack, Certifier):
            if self.params:
                raise ConfigError("certifier parameters go with a certifier name, not with a Certifier object.")
            cert, name = self.attack, getattr(type(self.attack), "registry_name", type(self.attack).__name__)
        elif isinstance(self.attack, str):
            cert = certifiers.create(self.attack, **dict(self.params))
            name = certifiers.canonical(self.attack)
        else:
            raise ConfigError(f"a certify measurement names a certifier (e.g. 'smoothing'), got {self.attack!r}.")
        threats = sorted({t.eps: t for t in as_threats(self.eps, self.norm)}.values(), key=lambda t: t.eps)
        cert.check(threats[0].norm, [t.eps for t in threats])
        return name, cert, threats


#: the name the experiments and older code use for a measurement
EvaluationSpec = Measurement


def as_threats(threats_or_eps: Any, norm: str | None = None) -> list[ThreatModel]:
    """Read a ThreatModel, a list of them, or eps value(s) (numbers or fractions like
    ``"8/255"``, with ``norm``, default ``"linf"``) into a list of threat models."""
    if isinstance(threats_or_eps, ThreatModel):
        items: list[Any] = [threats_or_eps]
    elif isinstance(threats_or_eps, (int, float, str)) and not isinstance(threats_or_eps, bool):
        items = [threats_or_eps]
    elif isinstance(threats_or_eps, Sequence) and len(threats_or_eps):
        items = list(threats_or_eps)
    else:
        raise ConfigError(
            f"give a ThreatModel, a list of them, or eps values (with norm=); got {threats_or_eps!r}."
        )
    out = []
    for it in items:
        if isinstance(it, ThreatModel):
            if norm is not None and ThreatModel(norm, 0).norm != it.norm:
                raise ConfigError(f"norm={norm!r} contradicts the threat model {it}.")
            out.append(it)
        else:
            out.append(ThreatModel(norm or "linf", parse_eps(it)))
    if len({t.norm for t in out}) > 1:
        raise ConfigError("one measurement covers one norm; give one measurement per norm.")
    return out


def _batch_size(batch_size: int | str, model: nn.Module, x: torch.Tensor) -> int:
    if batch_size == "auto":
        return auto_batch_size(model, x)
    if isinstance(batch_size, str):
        raise ConfigError(f"batch_size must be a positive integer or 'auto', got {batch_size!r}.")
    return check_int(batch_size, "batch_size", minimum=1)


def run_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threats: Sequence[ThreatModel],
    attack: Attack,
    *,
    batch_size: int,
    generator: torch.Generator,
    amp: bool = False,
    progress: Progress | None = None,
    pin_batch: bool = False,
) -> list[list[AttackResult]]:
    """Run ``attack`` over ``(x, y)`` in batches for every threat model of one norm.

    Batches go to the model's device; results come back on CPU, one list per batch
    (each a list with one :class:`AttackResult` per threat). On a CUDA out-of-memory
    error the batch size is halved and the batch retried, unless ``pin_batch`` (a sharded
    evaluation, whose results must not depend on the memory of the device): then the
    error says to choose a smaller batch size.
    """
    dev = model_device(model) or x.device
    bs = batch_size
    out: list[list[AttackResult]] = []
    i = 0
    while i < len(x):
        xb, yb = x[i : i + bs].to(dev), y[i : i + bs].to(dev)
        try:
            res = attack(model, xb, yb, list(threats), generator=generator, amp=amp)
        except torch.cuda.OutOfMemoryError:
            if pin_batch:
                torch.cuda.empty_cache()
                raise ConfigError(
                    f"the device ran out of memory at the pinned batch size {bs}; pass a smaller --batch-size "
                    f"(batch_size=) that divides the chunk size (halving it would change the results)."
                ) from None
            if bs == 1:
                raise
            bs = max(1, bs // 2)
            torch.cuda.empty_cache()
            continue
        for r in res:
            r.x_adv, r.success, r.clean_correct = r.x_adv.cpu(), r.success.cpu(), r.clean_correct.cpu()
            r.info = {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in r.info.items()}
        out.append(res)
        i += len(xb)
        if progress is not None:
            progress.advance(len(xb))
    return out


def _measure(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    name: str,
    atk: Attack,
    threats: list[ThreatModel],
    *,
    batch_size: int,
    generator: torch.Generator,
    amp: bool,
    audit: bool | str,
    audit_points: int,
    audit_seed: int,
    keep_adversarials: bool,
    num_classes: int,
    progress: Progress | None,
    per_sample: bool = False,
    pin_batch: bool = False,
) -> AttackReport:
    """One attack measurement on ``(x, y)`` at every budget, audited: the work behind
    every row. ``per_sample``: also keep, per eps, which stage broke each point and the
    confidence and prediction on its attacked input (what a sharded evaluation merges)."""
    dev = model_device(model) or x.device
    t0 = time.perf_counter()
    batches = run_attack(model, x, y, threats, atk, batch_size=batch_size, generator=generator, amp=amp,
                         progress=progress, pin_batch=pin_batch)
    seconds = time.perf_counter() - t0
    y_cpu = y.detach().cpu().long()
    results: list[EpsResult] = []
    robust_masks: dict[float, torch.Tensor] = {}
    advs: dict[float, torch.Tensor] | None = {} if keep_adversarials else None
    clean_correct = torch.zeros(0, dtype=torch.bool)
    protocol = getattr(atk, "protocol", name)
    skipped: list[dict[str, str]] = []
    stages: list[str] = []
    black_box: list[bool] = []
    broken_totals: list[int] = []
    largest = max(t.eps for t in threats)
    kept_broken: dict[float, torch.Tensor] = {}
    kept_conf: dict[float, torch.Tensor] = {}
    kept_pred: dict[float, torch.Tensor] = {}
    for k, t in enumerate(threats):
        rs = [b[k] for b in batches]
        robust = torch.cat([r.robust for r in rs])
        clean_correct = torch.cat([r.clean_correct for r in rs])
        info0 = rs[0].info
        stages = list(info0.get("stages", []))
        black_box = list(info0.get("stage_black_box", [False] * len(stages)))
        skipped = list(info0.get("skipped", skipped))
        protocol = info0.get("protocol", protocol)
        broken = torch.cat([r.info["broken_by"] for r in rs]) if "broken_by" in info0 else None
        robust_masks[t.eps] = robust
        x_adv = torch.cat([r.x_adv for r in rs])
        if advs is not None:
            advs[t.eps] = x_adv
        # calibration on the attacked inputs (one forward pass per budget)
        adv_probs = predict_logits(model, x_adv, batch_size=batch_size).float().softmax(1).cpu()
        if per_sample:
            kept_conf[t.eps], kept_pred[t.eps] = adv_probs.max(1)
            if broken is not None:
                kept_broken[t.eps] = broken
        sf: dict[str, int] = {}
        sb: dict[str, int] = {}
        ss: dict[str, float] = {}
        for r in rs:
            for j, s in enumerate(r.info.get("stages", [])):
                sf[s] = sf.get(s, 0) + int(r.info["stage_forwards"][j])
                sb[s] = sb.get(s, 0) + int(r.info["stage_backwards"][j])
                ss[s] = ss.get(s, 0.0) + float(r.info["stage_seconds"][j])
        if broken is not None and stages and t.eps == largest:
            broken_totals = [int(((broken == j) & clean_correct).sum()) for j in range(len(stages))]
        results.append(eps_result(
            t.eps, robust, clean_correct, broken, stages, name, y_cpu, num_classes,
            forwards=sum(r.forwards for r in rs), backwards=sum(r.backwards for r in rs),
            seconds=sum(r.seconds for r in rs), stage_forwards=sf, stage_backwards=sb, stage_seconds=ss,
            diagram=reliability(adv_probs, y_cpu),
        ))
    clean_acc = int(clean_correct.sum()) / len(clean_correct)
    clean_pc = per_class_accuracy(torch.where(clean_correct, y_cpu, -1), y_cpu, num_classes)
    t1 = time.perf_counter()
    flags: list[Flag] = []
    if audit:
        params = atk.get_params()
        flags = run_audit(
            model,
            x[:audit_points].to(dev),
            y[:audit_points].to(dev),
            threats,
            robust_accuracy=[r.robust_accuracy for r in results],
            stages=stages,
            stage_black_box=black_box,
            stage_broken=broken_totals,
            skipped=skipped,
            num_points=len(x),
            protocol=str(protocol),
            attack=name if name in attacks else "apgd-ce",
            params={k: v for k, v in params.items() if k != "members"},
            seed=audit_seed,
            subset=audit_points,
            expensive=audit is True,
        )
    for flag in check_monotone([r.eps for r in results], [r.robust_accuracy for r in results]):
        if flag.code not in {f.code for f in flags}:
            flags.append(flag)
    return AttackReport(
        attack=name,
        protocol=str(protocol),
        params=jsonable(atk.get_params()),
        norm=threats[0].norm,
        num_points=len(x),
        num_classes=num_classes,
        clean_accuracy=clean_acc,
        clean_per_class=clean_pc,
        results=results,
        flags=flags,
        skipped=skipped,
        device=str(dev),
        amp=amp,
        batch_size=batch_size,
        seed=audit_seed,
        seconds=seconds,
        audit_seconds=time.perf_counter() - t1,
        stages=stages or [name],
        robust=robust_masks,
        clean_correct=clean_correct,
        x_adv=advs,
        broken_by=kept_broken if per_sample else None,
        adv_confidence=kept_conf if per_sample else None,
        adv_pred=kept_pred if per_sample else None,
    )


def eps_result(
    eps: float, robust: torch.Tensor, clean_correct: torch.Tensor, broken: torch.Tensor | None, stages: list[str],
    name: str, y: torch.Tensor, num_classes: int, *, forwards: int, backwards: int, seconds: float,
    stage_forwards: dict[str, int], stage_backwards: dict[str, int], stage_seconds: dict[str, float],
    diagram: dict[str, list[Any]] | None,
) -> EpsResult:
    """The numbers of one budget from its per-sample arrays (``robust``, ``clean_correct``,
    ``broken``: the stage that broke each point, -1 for none) and its counts; written once
    for :func:`evaluate` and the merge of a sharded evaluation."""
    return EpsResult(
        eps=eps,
        robust_accuracy=int(robust.sum()) / len(robust),
        per_attack=stage_accuracies(clean_correct, robust, broken, stages, name),
        per_class=per_class_accuracy(torch.where(robust, y, -1), y, num_classes),
        forwards=forwards,
        backwards=backwards,
        seconds=seconds,
        stage_forwards=stage_forwards,
        stage_backwards=stage_backwards,
        stage_seconds=stage_seconds,
        reliability=diagram,
    )


def subset_indices(n: int, subset: int | None, seed: int) -> torch.Tensor:
    """The points a measurement with ``subset`` runs on: the first ``subset`` of a
    permutation of ``range(n)`` seeded by ``seed``, in increasing order (all if None)."""
    if subset is None or subset >= n:
        return torch.arange(n)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed("subset", seed)))
    return order[:subset].sort().values


def _check_points(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise InvalidInputError("x and y must be torch tensors (inputs in [0, 1] and integer labels).")
    if len(x) == 0:
        raise InvalidInputError(
            "there are no points to evaluate (x is empty); pass at least one input, or a larger subset."
        )
    if len(y) != len(x):
        raise InvalidInputError(f"x has {len(x)} points but y has {len(y)} labels; they must match.")


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    measurements: Sequence[Measurement] = (),
    *,
    seed: int = 0,
    generator: torch.Generator | None = None,
    batch_size: int | str = "auto",
    amp: bool = False,
    device: str | torch.device | None = None,
    threads: int | str | None = None,
    audit_points: int = 128,
    keep_adversarials: bool = False,
    num_classes: int | None = None,
    clean: bool = True,
    progress: bool | None = None,
    reference: tuple[torch.Tensor, torch.Tensor] | None = None,
    chunk_size: int | None = None,
) -> Evaluation:
    """Measure ``model`` on ``(x, y)``: clean accuracy, calibration and per-class accuracy,
    then every measurement (see the module docstring for the protocol).

    ``chunk_size``: evaluate in chunks of that many points in this process, with the
    canonical chunk-seeded protocol of :func:`robustlab.evaluate.sharded.evaluate_sharded`
    (which also runs the chunks in a process pool or on Ray, with the same numbers); None
    (default): the unsharded protocol above.

    Returns an :class:`~robustlab.evaluate.results.Evaluation`: ``clean`` metrics, one
    :class:`~robustlab.evaluate.results.ResultRow` per measurement and eps, the full
    report of each measurement and per-sample records. ``device`` moves the model there
    first (default: where it is). ``clean=False`` skips the clean metrics (the rows still
    count clean-misclassified points as not robust). ``progress``: a bar on a terminal
    (None: when stderr is one); one log line per measurement either way. ``reference``:
    in-distribution training points ``(x_train, y_train)`` that detectors (measurements of
    kind ``"detect"``) are fitted on; required by them, unused otherwise.
    """
    _check_points(model, x, y)
    if batch_size != "auto":
        _batch_size(batch_size, model, x)
    if device is not None:
        model.to(check_device(device))
    if chunk_size is not None:
        if generator is not None or keep_adversarials or reference is not None:
            raise ConfigError("a chunked evaluation seeds each chunk itself and keeps no adversarial examples in "
                              "memory: drop generator=, keep_adversarials= and reference= (or chunk_size=).")
        from robustlab.evaluate.sharded import evaluate_sharded
        from robustlab.threads import parse_threads

        # every chunk runs on a fixed thread count (1 unless threads= says otherwise), as in a pool
        return evaluate_sharded(model, (x, y), measurements, chunk_size=chunk_size, seed=seed,
                                batch_size=batch_size, amp=amp, audit_points=audit_points,
                                num_classes=num_classes, clean=clean, progress=progress,
                                threads_per_worker=parse_threads(threads) or 1)
    built = [m.build() for m in measurements]
    if reference is None and any(m.kind == "detect" for m in measurements):
        raise ConfigError(
            "detect measurements fit their detector on in-distribution training points: pass "
            "reference=(x_train, y_train) to evaluate()."
        )
    t_start = time.perf_counter()
    n = len(x)
    k = int(num_classes or getattr(model, "num_classes", 0) or 0)
    logits: torch.Tensor | None = None
    if clean or not k:
        logits = predict_logits(model, x, batch_size=batch_size if isinstance(batch_size, int) else 1024)
        k = k or int(logits.shape[1])
    check_labels(y, k, n=n)
    y = y.detach().long()
    clean_metrics: dict[str, Any] = {"num_test": n}
    records: dict[str, np.ndarray] = {"index": np.arange(n), "label": y.cpu().numpy()}
    if clean and logits is not None:
        conf, pred = logits.softmax(1).max(1)
        clean_metrics.update(clean_summary(pred, conf, y, k))
        records["pred"] = pred.cpu().numpy()
        records["confidence"] = conf.cpu().numpy()
    rows: list[ResultRow] = []
    reports: list[AttackReport] = []
    certifications: list[Certification] = []
    detections: list[Any] = []
    attack_seconds: list[dict[str, Any]] = []
    dev = model_device(model) or x.device
    plans = []
    for m, (name, atk, threats) in zip(measurements, built, strict=True):
        idx = subset_indices(n, m.subset, seed)
        plans.append((m, name, atk, threats, idx))
    def _work(m: Measurement, levels: list[Any], idx: torch.Tensor) -> int:
        if m.kind == "corruption":
            return len(idx) * len(levels)
        if m.kind == "detect":
            return len(reference[0]) + len(idx) * (1 + len(levels)) if reference is not None else 0
        return len(idx)

    total_points = sum(_work(p[0], p[3], p[4]) for p in plans)
    used_threads: int | None = None
    if plans:
        bs = _batch_size(batch_size, model, x)
        with thread_budget(model, x[:bs].to(dev), threads=threads) as used_threads, \
                Progress("evaluating", total=total_points, show=progress, unit="pt") as bar:
            for m, name, atk, threats, idx in plans:
                if m.kind == "corruption":
                    t0 = time.perf_counter()
                    new = corruption_rows(model, x[idx], y[idx], name, threats, idx, n=n, seed=seed, num_classes=k,
                                          batch_size=bs, params=m.params.get("params"), subset=m.subset,
                                          records=records, progress=bar)
                    rows.extend(new)
                    secs = time.perf_counter() - t0
                    attack_seconds.append({"attack": name, "norm": "severity", "seconds": secs, "audit_seconds": 0.0})
                    if progress is not False:
                        accs = ", ".join(f"s{int(r.eps)} {100 * r.accuracy:.1f}%" for r in new)
                        bar.note(f"{name} on {len(idx)} of {n} points: {accs} ({format_seconds(secs)})")
                    continue
                if m.kind == "detect":
                    assert reference is not None
                    det = atk.run(model, x[idx], y[idx], m.norm, threats, reference=reference, num_classes=k,
                                  seed=derive_seed("detect", seed, name, m.norm), batch_size=bs, progress=bar,
                                  shift_params=dict(m.params.get("shift_params") or {}))
                    detections.append(det)
                    new = _detect_rows(m, name, det, idx, n, records)
                    rows.extend(new)
                    attack_seconds.append({"attack": name, "norm": m.norm, "seconds": det.seconds,
                                           "audit_seconds": 0.0})
                    if progress is not False:
                        aucs = ", ".join(f"{r.eps:g}: AUROC {100 * r.accuracy:.1f}%" for r in new)
                        bar.note(f"{name} vs {m.norm} on {len(idx)} of {n} points: {aucs} "
                                 f"({format_seconds(det.seconds)})")
                    continue
                if isinstance(atk, Certifier):
                    # certifiers size their own batches of noisy copies ("auto"), not by the point count
                    cert = atk.run(model, x[idx], y[idx], threats, num_classes=k, indices=idx,
                                   seed=derive_seed("certify", seed, name), batch_size=batch_size, progress=bar)
                    certifications.append(cert)
                    rows.extend(_certify_rows(m, name, atk, threats, cert, y[idx], idx, n, k, records))
                    attack_seconds.append({"attack": name, "norm": threats[0].norm, "seconds": cert.seconds,
                                           "audit_seconds": 0.0})
                    if progress is not False:
                        accs = ", ".join(f"r={t.eps:.4g} {100 * rows[-len(threats) + j].accuracy:.1f}%"
                                         for j, t in enumerate(threats))
                        bar.note(f"{name} {threats[0].norm} on {len(idx)} of {n} points: certified {accs} "
                                 f"({format_seconds(cert.seconds)})")
                    continue
                seed_m = derive_seed("attack", seed, name, threats[0].norm)
                gen = generator if generator is not None else torch.Generator(device=dev).manual_seed(seed_m)
                rep = _measure(
                    model, x[idx], y[idx], name, atk, threats, batch_size=bs, generator=gen, amp=amp,
                    audit=m.audit, audit_points=audit_points, audit_seed=seed_m,
                    keep_adversarials=keep_adversarials, num_classes=k, progress=bar,
                )
                rep.seed = None if generator is not None else seed
                reports.append(rep)
                attack_seconds.append({"attack": name, "norm": rep.norm, "seconds": rep.seconds,
                                       "audit_seconds": rep.audit_seconds})
                rows.extend(attack_rows(m, name, rep, idx, n, records))
                accs = ", ".join(f"eps={r.eps:.4g} {100 * r.robust_accuracy:.1f}%" for r in rep.results)
                if progress is not False:
                    bar.note(f"{name} {rep.norm} on {len(idx)} of {n} points: robust {accs} "
                             f"({format_seconds(rep.seconds + rep.audit_seconds)})")
    _flag_non_monotone(rows)
    return Evaluation(
        clean=clean_metrics,
        rows=rows,
        reports=reports,
        records=records,
        certifications=certifications,
        detections=detections,
        seconds=time.perf_counter() - t_start,
        attack_seconds=attack_seconds,
        threads=used_threads,
    )


def clean_summary(pred: torch.Tensor, conf: torch.Tensor, y: torch.Tensor, num_classes: int) -> dict[str, Any]:
    """Clean accuracy, ECE, per-class accuracy and the reliability diagram from each point's
    prediction and confidence (the top softmax probability)."""
    yd = y.to(pred.device)
    diagram = reliability_of(conf, pred == yd)
    return {
        "clean_accuracy": float((pred == yd).float().mean()),
        "ece": ece_of(diagram),
        "per_class_accuracy": per_class_accuracy(pred, yd, num_classes),
        "reliability": diagram,
    }


def attack_rows(m: Measurement, name: str, rep: AttackReport, idx: torch.Tensor, n: int,
                records: dict[str, np.ndarray]) -> list[ResultRow]:
    """One row of kind ``attack`` per budget of a measurement's report and the per-point
    records ``robust/<attack>/<norm>/<eps>`` (1 robust, 0 not, -1 not measured)."""
    pset = point_set_id(idx, n)
    flags, codes = rep.flag_strings(), [f.code for f in rep.flags]
    rows = []
    for r in rep.results:
        rows.append(
            ResultRow(
                attack=name, norm=rep.norm, eps=r.eps, accuracy=r.robust_accuracy,
                num_points=len(idx), num_total=n, point_set=pset, protocol=rep.protocol,
                params=rep.params, stages=list(rep.stages), per_attack=dict(r.per_attack),
                per_class=r.per_class, forwards=r.forwards, backwards=r.backwards,
                subset=m.subset, flags=list(flags), flag_codes=list(codes),
                extra=({"ece": ece_of(r.reliability), "reliability": r.reliability}
                       if r.reliability is not None else {}),
            )
        )
        rec = np.full(n, -1, dtype=np.int8)
        rec[idx.numpy()] = rep.robust[r.eps].numpy().astype(np.int8)
        records[f"robust/{name}/{rep.norm}/{r.eps:g}"] = rec
    return rows


def _certify_rows(
    m: Measurement, name: str, cert: Certifier, threats: list[ThreatModel], res: Certification,
    y: torch.Tensor, idx: torch.Tensor, n: int, num_classes: int, records: dict[str, np.ndarray],
) -> list[ResultRow]:
    """One row of kind ``certify`` per radius (``accuracy``: certified accuracy) and the
    per-point records ``certify/<name>/<norm>/[sigma=<sigma>/]<record>`` (randomized
    smoothing: ``predict`` and ``radius`` per noise level; bounds: ``verified/<eps>``; points
    not measured hold NaN, or :data:`NOT_MEASURED` in integer records)."""
    y_cpu = y.detach().cpu().long()
    params = jsonable(cert.get_params())
    pset = point_set_id(idx, n)
    clean_acc = int((res.predict == y_cpu).sum()) / len(y_cpu)
    rows = []
    for t in threats:
        mask = res.certified[t.eps]
        acc = int(mask.sum()) / len(mask)
        rows.append(ResultRow(
            attack=name, norm=t.norm, eps=t.eps, accuracy=acc, num_points=len(idx), num_total=n, point_set=pset,
            protocol=cert.protocol or name, params=params, stages=[name], per_attack={"clean": clean_acc, name: acc},
            per_class=per_class_accuracy(torch.where(mask, y_cpu, -1), y_cpu, num_classes),
            forwards=res.forwards, backwards=0, subset=m.subset, kind="certify",
            extra=dict(res.extra.get(t.eps, {})),
        ))
    tag = f"sigma={params['sigma']:g}/" if isinstance(params.get("sigma"), (int, float)) else ""
    for key, values in res.records.items():
        arr = np.asarray(values)
        floating = arr.dtype.kind == "f"
        full = np.full(n, np.nan if floating else NOT_MEASURED, dtype=np.float64 if floating else np.int64)
        full[idx.numpy()] = arr
        records[f"certify/{name}/{threats[0].norm}/{tag}{key}"] = full
    return rows


def _detect_rows(m: Measurement, name: str, det: Any, idx: torch.Tensor, n: int,
                 records: dict[str, np.ndarray]) -> list[ResultRow]:
    """One row of kind ``detect`` per level (``accuracy``: the AUROC; ``extra``: every
    detection metric) and the per-point in-distribution scores
    ``detect/<detector>/<shift>/score`` (NaN where not measured)."""
    pset = point_set_id(idx, n)
    params = jsonable({**det.params, **({"shift_params": m.params["shift_params"]}
                                        if m.params.get("shift_params") else {})})
    rows = []
    for level in det.levels:
        met = dict(det.metrics[level])
        rows.append(ResultRow(
            attack=name, norm=det.shift, eps=float(level), accuracy=float(met["auroc"]), num_points=len(idx),
            num_total=n, point_set=pset, protocol=f"detect-{name}", params=params, stages=[name], per_attack={},
            per_class=[], forwards=int(met.get("num_in", 0) + met.get("num_out", 0)), backwards=0,
            subset=m.subset, kind="detect", extra=met,
        ))
    full = np.full(n, np.nan)
    full[idx.numpy()] = det.scores_in
    records[f"detect/{name}/{det.shift}/score"] = full
    return rows


def _flag_non_monotone(rows: list[ResultRow]) -> None:
    """``non-monotone-eps`` on every row of an attack, norm and point set whose robust
    accuracy rises with eps across measurements (within one measurement it cannot).
    Certificate rows are left out: different certifier settings are different models."""
    groups: dict[tuple[str, str, str], list[ResultRow]] = {}
    for r in rows:
        if r.kind != "attack":
            continue
        groups.setdefault((r.attack, r.norm, r.point_set), []).append(r)
    for group in groups.values():
        for flag in check_monotone([r.eps for r in group], [r.accuracy for r in group]):
            for r in group:
                r.add_flag(flag)


# -- thin callers ----------------------------------------------------------------------------
def attack_report(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threats_or_eps: Any,
    attack: str | Attack | Certifier = "standard",
    *,
    norm: str | None = None,
    batch_size: int | str = "auto",
    generator: torch.Generator | None = None,
    seed: int = 0,
    amp: bool = False,
    audit: bool | str = True,
    audit_points: int = 128,
    keep_adversarials: bool = False,
    threads: int | str | None = None,
    progress: bool | None = None,
    **attack_params: Any,
) -> AttackReport:
    """Evaluate ``model`` on ``(x, y)`` with ``attack`` at every budget, and audit it:
    :func:`evaluate` with one measurement, returning its full report.

    >>> rep = evaluate.attack_report(model, x, y, ["2/255", "4/255", "8/255"], norm="linf")
    >>> rep.results[-1].robust_accuracy        # at 8/255, the standard ensemble
    >>> rep.results[-1].per_attack             # {"clean": .., "apgd-ce": .., "apgd-t": .., ...}
    >>> [str(f) for f in rep.flags]            # audit findings, e.g. "zero-grad: 12.5% of ..."

    ``threats_or_eps``: a :class:`ThreatModel`, a list of them (one norm), or eps values
    (``0.03``, ``"8/255"`` or a list) with ``norm`` (default ``"linf"``). ``attack``: a
    registry name (default ``"standard"``, AutoAttack's protocol) with
    ``attack_params``, or an :class:`Attack`. The rest as in :func:`evaluate`.
    """
    threats = as_threats(threats_or_eps, norm)
    m = Measurement(attack, threats[0].norm, [t.eps for t in threats], dict(attack_params), None, audit)
    ev = evaluate(model, x, y, [m], seed=seed, generator=generator, batch_size=batch_size, amp=amp,
                  threads=threads, audit_points=audit_points, keep_adversarials=keep_adversarials,
                  clean=False, progress=progress)
    return ev.reports[0]


def robust_accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel | Sequence[ThreatModel],
    attack: str | Attack | Certifier = "standard",
    *,
    batch_size: int | str = 512,
    generator: torch.Generator | None = None,
    seed: int = 0,
    keep_adversarials: bool = False,
    amp: bool = False,
    threads: int | str | None = None,
    progress: bool | None = False,
    **attack_params: Any,
) -> Any:
    """Robust accuracy of ``model`` on ``(x, y)`` under ``attack`` within ``threat``:
    :func:`evaluate` with one measurement and no audit.

    >>> res = evaluate.robust_accuracy(model, x, y, ThreatModel("linf", 0.1))  # the standard ensemble
    >>> res.accuracy, res.robust  # a float and the per-sample mask

    A sample counts as robust iff the model classifies it correctly *and* the attack does
    not change that. ``threat`` may be a list of threat models of one norm: then a list
    of :class:`RobustEvaluation` comes back, computed in one pass.
    """
    single = isinstance(threat, ThreatModel)
    rep = attack_report(model, x, y, threat, attack, batch_size=batch_size, generator=generator, seed=seed,
                        amp=amp, audit=False, keep_adversarials=keep_adversarials, threads=threads,
                        progress=progress, **attack_params)
    evals = [rep.evaluation(k) for k in range(len(rep.results))]
    return evals[0] if single else evals


__all__ = [
    "EvaluationSpec",
    "Measurement",
    "RobustEvaluation",
    "as_threats",
    "attack_report",
    "evaluate",
    "robust_accuracy",
    "run_attack",
    "subset_indices",
]
