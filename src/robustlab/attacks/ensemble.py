"""Attack ensembles run on the still-robust points only: ``standard``, ``fast``, ``rand``.

An ensemble is itself an :class:`~robustlab.attacks.Attack`: the template removes the
clean-misclassified points, then the members run one after the other, each on the
points that no earlier member broke; a point is non-robust as soon as one member breaks
it. Every member's output is projected and re-checked in full precision before the
next member starts. Every member starts from the generator's state at the start of the
ensemble's call (the reference code reseeds its global RNG before each attack), so a
member's random draws do not depend on how many numbers earlier members consumed; with
the same seed, the APGD members then draw the same random starts as the reference's.

The protocols are written down and versioned; the version string is stored with every
result (``AttackResult.info["protocol"]``, and the reports built on it).

``standard`` — ``PROTOCOL = "robustlab-standard/1"``: AutoAttack's ``version="standard"``
(Croce & Hein 2020; the version table of fra31/auto-attack ``autoattack.py``):

=========  ===========================================================================
norm       members (in order)
=========  ===========================================================================
linf, l2   apgd-ce (100 it., 1 restart); apgd-t (100 it., 9 targets, 1 restart);
           fab-t (9 targets); square (5000 queries, p_init 0.8, no schedule rescaling)
l1         apgd-ce (100 it., 5 restarts, large-eps schedule); apgd-t (100 it.,
           5 targets, large-eps schedule); fab-t (9 targets); square (5000 queries)
=========  ===========================================================================

Target counts are capped at ``classes - 1`` (every wrong class is then attacked; the
reference would warn and fail), noted in ``info["notes"]``;
a member whose loss needs more classes than the model has (APGD-T needs 4), that does
not support the norm, or that is not registered, is skipped and listed in
``info["skipped"]`` (the audit turns this into an ``incomplete-protocol`` flag).

``fast`` — ``FAST_PROTOCOL = "robustlab-fast/2"``: apgd-ce (100 it.), then apgd-t with
9 targets but 40 iterations per target, then square with 2000 queries (rescaled
schedule); for L1, apgd-ce and apgd-t (5 targets, 40 it.) with the large-eps schedule and
no square (L-inf/L2 only). No FAB-T: after APGD-T it broke no point on the benchmark
models. About a quarter of ``standard``'s gradient evaluations; Square adds forward
passes only. Measured against ``standard`` by ``benchmarks/attacks`` (MNIST, eps 0.3:
PGD-AT model 38.0% vs 37.8%, ERM 0% vs 0%). Version 1 (apgd-ce then ``pma`` with 3
targets and 50 iterations) was 2.2 points weaker than ``standard`` on the PGD-AT model.

``rand`` — ``RAND_PROTOCOL = "robustlab-rand/1"``: AutoAttack's ``version="rand"`` for
randomised models: apgd-ce and apgd-dlr, each with EOT over 20 samples, 1 restart.

Per-point records: ``info["broken_by"]`` (index of the member that first broke a point;
-1 robust; -2 not attacked because misclassified when clean), ``info["stages"]``
(member labels), ``info["stage_forwards"]``, ``info["stage_backwards"]``,
``info["stage_seconds"]``, ``info["stage_black_box"]`` (the members' ``black_box``
attribute). With several eps in one call, points broken at a smaller eps keep the member
that broke them there. Per-row records of the members (e.g. FAB's ``min_norm``) are
scattered into the ensemble's rows: a later member overwrites the rows it attacked,
rows broken before any recording member ran hold NaN, clean-misclassified rows the
member's fill value; members' own ``info`` dicts are kept in ``info["stage_info"]``
when any member wrote one.

Progress: after each stage of each call (each eps), one line goes to the
``robustlab.progress`` logger (:mod:`robustlab.progress`), e.g.
``standard linf eps=0.1: stage 2/4 apgd-t on 58 of 100 points, 12 broken, 46 robust, 2.1 s``:
the stage ran on the 58 points still robust out of the 100 of the caller's batch, broke
12 of them (``info["stage_broken"]``) and left 46 robust. Logging never changes results.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch

from robustlab.attacks.base import Attack, attacks
from robustlab.attacks.engine import ActiveSet, AttackContext, is_success
from robustlab.attacks.threat import ThreatModel
from robustlab.errors import ConfigError
from robustlab.progress import format_seconds
from robustlab.progress import log as progress_log

PROTOCOL = "robustlab-standard/1"
FAST_PROTOCOL = "robustlab-fast/2"
RAND_PROTOCOL = "robustlab-rand/1"
CUSTOM_PROTOCOL = "robustlab-custom/1"

MemberSpec = tuple[str, dict[str, Any]]

# parameter names the members of other families may use for the same quantity
_TARGET_NAMES = ("targets", "n_target_classes", "n_targets", "num_targets")
_QUERY_NAMES = ("queries", "n_queries", "max_queries", "num_queries")


def is_black_box(atk: Attack) -> bool:
    """Whether a member uses only forward passes (its class's ``Attack.black_box``)."""
    return bool(getattr(atk, "black_box", False))


def standard_members(norm: str) -> list[MemberSpec]:
    """The members of ``robustlab-standard/1`` for ``norm`` (see the module docstring)."""
    if norm == "l1":
        return [
            ("apgd-ce", {"steps": 100, "restarts": 5, "large_eps": True}),
            ("apgd-t", {"steps": 100, "restarts": 1, "targets": 5, "large_eps": True}),
            ("fab-t", {"targets": 9}),
            ("square", {"queries": 5000, "p_init": 0.8, "resc_schedule": False}),
        ]
    return [
        ("apgd-ce", {"steps": 100, "restarts": 1}),
        ("apgd-t", {"steps": 100, "restarts": 1, "targets": 9}),
        ("fab-t", {"targets": 9}),
        ("square", {"queries": 5000, "p_init": 0.8, "resc_schedule": False}),
    ]


def fast_members(norm: str) -> list[MemberSpec]:
    """The members of ``robustlab-fast/2`` for ``norm`` (see the module docstring)."""
    if norm == "l1":
        return [
            ("apgd-ce", {"steps": 100, "restarts": 1, "large_eps": True}),
            ("apgd-t", {"steps": 40, "restarts": 1, "targets": 5, "large_eps": True}),
        ]
    return [
        ("apgd-ce", {"steps": 100, "restarts": 1}),
        ("apgd-t", {"steps": 40, "restarts": 1, "targets": 9}),
        ("square", {"queries": 2000, "p_init": 0.8, "resc_schedule": True}),
    ]


def rand_members(norm: str) -> list[MemberSpec]:
    """The members of ``robustlab-rand/1``."""
    return [
        ("eot", {"attack": "apgd-ce", "samples": 20, "params": {"steps": 100}}),
        ("eot", {"attack": "apgd-dlr", "samples": 20, "params": {"steps": 100}}),
    ]


def _normalise_member(m: Any) -> MemberSpec | Attack:
    if isinstance(m, Attack):
        return m
    if isinstance(m, str):
        return (m, {})
    if isinstance(m, Mapping) and "name" in m:
        return (str(m["name"]), dict(m.get("params", {}) or {}))
    if isinstance(m, Sequence) and len(m) == 2 and isinstance(m[0], str) and isinstance(m[1], Mapping):
        return (m[0], dict(m[1]))
    raise ConfigError(
        f"cannot read ensemble member {m!r}; write a name ('apgd-ce'), a pair "
        f"('apgd-t', {{'targets': 3}}), a mapping {{name: ..., params: ...}} or an Attack."
    )


def _adapt_params(
    factory: Any, params: dict[str, Any], num_classes: int | None
) -> tuple[dict[str, Any], list[str], list[str]]:
    """Map the protocol's parameter names onto the member's own, and cap target counts
    at ``num_classes - 1`` (every wrong class is then attacked). Returns the params,
    the parameters the member does not accept (``notes``) and the caps applied."""
    try:
        accepted = set(inspect.signature(factory.__init__ if inspect.isclass(factory) else factory).parameters)
    except (TypeError, ValueError):
        return params, [], []
    out: dict[str, Any] = {}
    notes: list[str] = []
    caps: list[str] = []
    for key, val in params.items():
        names = _TARGET_NAMES if key in _TARGET_NAMES else _QUERY_NAMES if key in _QUERY_NAMES else (key,)
        chosen = key if key in accepted else next((n for n in names if n in accepted), None)
        if chosen is None:
            notes.append(f"parameter {key}={val!r} not accepted; member default used")
            continue
        if key in _TARGET_NAMES and num_classes is not None and isinstance(val, int) and val > num_classes - 1:
            caps.append(f"{chosen} capped at {num_classes - 1} (classes - 1)")
            val = num_classes - 1
        out[chosen] = val
    return out, notes, caps


class Ensemble(Attack):
    """Run ``members`` one after the other on the points still robust (AutoAttack's
    evaluation protocol, Croce & Hein 2020, Sec. 4). Untargeted only.

    Parameters
    ----------
    members: the member attacks, in order: registry names, ``(name, params)`` pairs,
        ``{"name": ..., "params": ...}`` mappings or :class:`Attack` objects. For the
        registered protocols (``standard``, ``fast``, ``rand``) leave it ``None``; giving
        members makes the run a custom protocol (recorded as ``robustlab-custom/1``).
    """

    norms = ("linf", "l2", "l1")
    targeted_ok = False
    version: ClassVar[str] = "custom"

    def __init__(self, members: Sequence[Any] | None = None) -> None:
        if members is not None:
            if isinstance(members, (str, bytes)) or not isinstance(members, Sequence) or not len(members):
                raise ConfigError("members must be a non-empty list of attacks, e.g. ['apgd-ce', 'apgd-t'].")
            self._members: list[MemberSpec | Attack] | None = [_normalise_member(m) for m in members]
        elif self.version == "custom":
            raise ConfigError("the 'ensemble' attack needs members=[...]; or use 'standard' or 'fast'.")
        else:
            self._members = None
        self.members = members

    @property
    def protocol(self) -> str:
        if self._members is not None:
            return CUSTOM_PROTOCOL
        return {"standard": PROTOCOL, "fast": FAST_PROTOCOL, "rand": RAND_PROTOCOL}[self.version]

    def get_params(self) -> dict[str, Any]:
        if self._members is None:
            return {"members": None}
        out: list[Any] = []
        for m in self._members:
            if isinstance(m, Attack):
                out.append([getattr(type(m), "registry_name", type(m).__name__), m.get_params()])
            else:
                out.append([m[0], dict(m[1])])
        return {"members": out}

    def member_specs(self, norm: str) -> list[MemberSpec | Attack]:
        """The members run for ``norm`` (protocol table or the given list)."""
        if self._members is not None:
            return list(self._members)
        table = {"standard": standard_members, "fast": fast_members, "rand": rand_members}[self.version]
        return list(table(norm))

    def build(
        self, norm: str, num_classes: int | None
    ) -> tuple[list[tuple[str, Attack]], list[dict[str, str]], list[str]]:
        """Instantiate the members for ``norm`` and ``num_classes``; returns
        ``([(label, attack), ...], skipped, notes)``: ``skipped`` lists members that cannot
        run or protocol parameters a member does not accept; ``notes`` the target counts
        capped at ``classes - 1``."""
        built: list[tuple[str, Attack]] = []
        skipped: list[dict[str, str]] = []
        all_caps: list[str] = []
        seen: dict[str, int] = {}
        for spec in self.member_specs(norm):
            if isinstance(spec, Attack):
                name, atk = getattr(type(spec), "registry_name", type(spec).__name__), spec
                notes: list[str] = []
                caps: list[str] = []
            else:
                name, params = spec
                if name not in attacks:
                    skipped.append({"member": name, "reason": "not registered in this installation"})
                    continue
                factory = attacks.get(name)
                params, notes, caps = _adapt_params(factory, params, num_classes)
                atk = attacks.create(name, **params)
            if norm not in atk.norms:
                skipped.append({"member": name, "reason": f"does not support {norm}"})
                continue
            need = atk.required_classes(False)
            if num_classes is not None and num_classes < need:
                skipped.append({"member": name, "reason": f"needs >= {need} classes, the model has {num_classes}"})
                continue
            seen[name] = seen.get(name, 0) + 1
            label = name if seen[name] == 1 else f"{name}#{seen[name]}"
            for note in notes:
                skipped.append({"member": label, "reason": note})
            all_caps += [f"{label}: {c}" for c in caps]
            built.append((label, atk))
        if not built:
            raise ConfigError(
                f"no member of the {self.protocol} ensemble can run here "
                f"({'; '.join(s['member'] + ': ' + s['reason'] for s in skipped)})."
            )
        return built, skipped, all_caps

    def required_classes(self, targeted: bool) -> int:
        return 2

    def _progress_name(self) -> str:
        """How progress lines name this ensemble: its registry name (``standard``...)."""
        return str(getattr(type(self), "registry_name", type(self).__name__))

    def needs_clean_logits(self) -> bool:
        return True

    def perturb(
        self,
        ctx: AttackContext,
        x: torch.Tensor,
        y: torch.Tensor,
        threat: ThreatModel,
        target: torch.Tensor | None,
    ) -> torch.Tensor:
        built, skipped, notes = self.build(threat.norm, ctx.num_classes)
        broken_by = torch.full((len(x),), -1, dtype=torch.long, device=x.device)
        x_adv = x.clone()
        clean_all = ctx.clean_logits
        own_info, own_rows = ctx.info, ctx.row_info
        # per-row records of the members (ctx.record_rows), scattered into the ensemble's rows
        member_rows: dict[str, tuple[torch.Tensor, float]] = {}
        member_info: list[dict[str, Any]] = []
        fw, bw, secs, hits = [], [], [], []
        # every member starts from the same generator state (the reference reseeds before
        # each attack), so its draws do not depend on what earlier members consumed
        g_state = None if ctx.generator is None else ctx.generator.get_state()
        try:
            for j, (label, atk) in enumerate(built):
                act = ActiveSet(broken_by < 0)  # the points no earlier member broke
                f0, b0, t0 = ctx.forwards, ctx.backwards, time.perf_counter()
                n_hit = 0
                ctx.info, ctx.row_info = {}, {}
                if ctx.generator is not None and g_state is not None:
                    ctx.generator.set_state(g_state)
                if act:
                    ctx.clean_logits = act.gather(clean_all)
                    xs, ys = act.gather(x), act.gather(y)
                    xa = atk.perturb(ctx, xs, ys, threat, None)
                    _scatter_rows(member_rows, ctx.row_info, act.rows, len(x))
                    xa = threat.project(xa.detach().to(x.dtype), xs, ctx.bounds)
                    succ = is_success(ctx.logits(xa, exact=True), ys, None)
                    if j == 0:
                        act.scatter(x_adv, xa)  # unbroken points keep the first member's best effort
                    act.scatter(x_adv, xa, succ)
                    act.scatter(broken_by, j, succ)
                    n_hit = int(succ.sum())
                member_info.append(ctx.info)
                fw.append(ctx.forwards - f0)
                bw.append(ctx.backwards - b0)
                secs.append(time.perf_counter() - t0)
                hits.append(n_hit)
                progress_log.info(
                    "%s %s: stage %d/%d %s on %d of %d points, %d broken, %d robust, %s",
                    self._progress_name(), threat, j + 1, len(built), label, len(act),
                    len(x) if ctx.points is None else ctx.points, n_hit, len(act) - n_hit,
                    format_seconds(secs[-1]),
                )
        finally:
            ctx.clean_logits = clean_all
            ctx.info, ctx.row_info = own_info, own_rows
        for key, (full, fill) in member_rows.items():
            ctx.record_rows(key, full, fill=fill)
        ctx.record_rows("broken_by", broken_by, fill=-2)
        if any(member_info):
            ctx.info["stage_info"] = member_info
        ctx.info.update(
            {
                "protocol": self.protocol,
                "stages": [label for label, _ in built],
                "stage_black_box": [is_black_box(atk) for _, atk in built],
                "stage_forwards": fw,
                "stage_backwards": bw,
                "stage_seconds": secs,
                "stage_broken": hits,
                "skipped": skipped,
                "notes": notes,
            }
        )
        return x_adv


def _scatter_rows(
    merged: dict[str, tuple[torch.Tensor, float]],
    recorded: dict[str, tuple[torch.Tensor, float]],
    rows: torch.Tensor,
    n: int,
) -> None:
    """Put a member's per-row records (one value per row it attacked) into ensemble-wide
    tensors of length ``n``. Rows that no member recording the key attacked hold NaN
    (floating records; integer/bool records hold the member's fill); a later member
    overwrites the rows it attacked. The member's fill goes on to the template, for the
    rows the ensemble itself did not attack (misclassified when clean)."""
    for key, (vals, fill) in recorded.items():
        if key in merged:
            full, fill = merged[key]
        else:
            blank = float("nan") if vals.dtype.is_floating_point else fill
            full = torch.full((n,), blank, dtype=vals.dtype, device=rows.device)
        full[rows] = vals.to(full.device, full.dtype)
        merged[key] = (full, fill)


attacks.add("ensemble", Ensemble)


@attacks.register("standard")
class StandardEnsemble(Ensemble):
    """AutoAttack's standard evaluation (Croce & Hein 2020), protocol
    ``robustlab-standard/1``: APGD-CE -> APGD-T -> FAB-T -> Square on the still-robust
    points (see :mod:`robustlab.attacks.ensemble` for the per-norm table)."""

    version = "standard"


@attacks.register("fast")
class FastEnsemble(Ensemble):
    """A cheaper ensemble, protocol ``robustlab-fast/2``: APGD-CE (100 it.), APGD-T (9
    targets, 40 it.), Square (2000 queries); about a quarter of ``standard``'s gradient
    evaluations (see :mod:`robustlab.attacks.ensemble`)."""

    version = "fast"


@attacks.register("rand")
class RandEnsemble(Ensemble):
    """AutoAttack's ``rand`` version for randomised models, protocol ``robustlab-rand/1``:
    APGD-CE and APGD-DLR, each with EOT over 20 samples."""

    version = "rand"
