"""The detector template: registry, :class:`Detector`, :class:`Detection` and ``run``.

A detector scores inputs so that HIGHER means MORE in-distribution. It is built with its
parameters only (``detectors.create("mahalanobis", magnitude=0.001)``), fitted on
in-distribution training points with :meth:`Detector.fit`, and applied with
:meth:`Detector.score`. :meth:`Detector.run` is the one-call measurement used by the
evaluation path: fit on the reference split, score the in points and the shifted points
at every level, and return a :class:`Detection`.

Subclasses implement :meth:`Detector.forward_score` (the logits and the detector score of
one batch, differentiable in the input, which is what adaptive attacks use) and, when
they learn anything from data, :meth:`Detector._fit`. Work runs under
:func:`robustlab.attacks.engine.eval_mode` on the model's device, in batches; no global
random state is read or written.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np
import torch
from torch import nn

from robustlab.attacks.engine import eval_mode, model_bounds, model_device
from robustlab.detect.metrics import detection_metrics, threshold_at_tpr
from robustlab.errors import ConfigError, InvalidInputError, RobustlabError
from robustlab.progress import Progress
from robustlab.registry import Registry
from robustlab.seeding import derive_seed
from robustlab.validation import check_inputs, check_int, check_labels

if TYPE_CHECKING:
    from robustlab.detect.shifts import ShiftedInputs

detectors: Registry[Detector] = Registry("detector")

#: The share of in-distribution points a detector accepts at its operating threshold.
OPERATING_TPR = 0.95


class DetectorNotFittedError(RobustlabError):
    """A detector that needs fitting was asked to score before :meth:`Detector.fit`."""


class TooFewSamplesError(InvalidInputError):
    """A covariance estimated from fewer samples than feature dimensions."""


def _num_classes(model: nn.Module, logits: torch.Tensor) -> int:
    if logits.dim() != 2:
        raise InvalidInputError(
            f"the model returned outputs of shape {tuple(logits.shape)}; detectors need "
            f"logits of shape (N, num_classes)."
        )
    return int(logits.shape[1])


_D = TypeVar("_D", bound="Detector")


class Detector:
    """Base class of every detector (scikit-learn style: the constructor stores
    parameters, :meth:`fit` learns, :meth:`score` applies).

    Class attributes: ``requires_fit`` (whether :meth:`score` needs :meth:`fit` first).
    After :meth:`fit`, ``num_classes_`` holds the number of logits of the fitted model.
    """

    requires_fit: ClassVar[bool] = False
    registry_name: ClassVar[str] = "detector"

    # -- introspection -------------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        """The constructor's parameters (what ``detectors.create(name, **params)`` takes)."""
        sig = inspect.signature(type(self).__init__)
        return {n: getattr(self, n) for n in sig.parameters if n != "self" and hasattr(self, n)}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"

    @property
    def name(self) -> str:
        return str(getattr(type(self), "registry_name", type(self).__name__))

    @property
    def fitted(self) -> bool:
        return bool(getattr(self, "fitted_", False))

    # -- what subclasses implement -------------------------------------------------------------
    def forward_score(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits (N, K), score (N,))`` of one batch on the model's device, differentiable
        with respect to ``x`` (no input preprocessing)."""
        raise NotImplementedError

    def attack_score(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The logits at ``x`` and a differentiable surrogate of :meth:`score` for adaptive
        attacks. Default: :meth:`forward_score` (exact for detectors without input
        preprocessing); Mahalanobis overrides it with a straight-through estimate."""
        return self.forward_score(model, x)

    def _score_batch(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The score of one batch (no gradient kept). Default: :meth:`forward_score`."""
        with torch.no_grad():
            return self.forward_score(model, x)[1]

    def _fit(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        batch_size: int,
        generator: torch.Generator | None,
    ) -> None:
        """Learn from in-distribution points (default: nothing to learn)."""

    # -- public API ----------------------------------------------------------------------
    def fit(
        self: _D,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        batch_size: int = 256,
        generator: torch.Generator | None = None,
    ) -> _D:
        """Fit on in-distribution training points ``x`` (in the model's input box, usually
        ``[0, 1]``) with labels ``y``; returns ``self``. Refitting starts from scratch.

        ``generator``: for detectors that draw random numbers while fitting (none of the
        built-in ones does; they are deterministic functions of the data)."""
        batch_size = check_int(batch_size, "batch_size", minimum=1)
        check_inputs(x, bounds=model_bounds(model))
        with eval_mode(model):
            logits = self._logits(model, x[: min(len(x), 2)])
        k = _num_classes(model, logits)
        check_labels(y, k, n=len(x))
        self.num_classes_ = k
        self._reset()
        with eval_mode(model):
            self._fit(model, x, y.long(), batch_size=batch_size, generator=generator)
        self.fitted_ = True
        return self

    def _reset(self) -> None:
        """Forget what an earlier :meth:`fit` learned (subclasses extend)."""

    def score(self, model: nn.Module, x: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
        """Scores ``(N,)`` on ``x``'s device (float32 for msp/energy, float64 for
        mahalanobis); HIGHER means MORE in-distribution. Detectors without anything to
        learn (msp, energy) score without :meth:`fit`."""
        batch_size = check_int(batch_size, "batch_size", minimum=1)
        self._check_fitted()
        check_inputs(x, bounds=model_bounds(model))
        dev = model_device(model) or x.device
        out = []
        with eval_mode(model):
            for i in range(0, len(x), batch_size):
                out.append(self._score_batch(model, x[i : i + batch_size].to(dev)).detach())
        if not out:
            return torch.zeros(0, device=x.device)
        return torch.cat(out).to(x.device)

    def _check_fitted(self) -> None:
        if self.requires_fit and not self.fitted:
            raise DetectorNotFittedError(
                f"detector {self.name!r} is not fitted; call .fit(model, x_train, y_train) "
                f"on in-distribution training points first."
            )

    @staticmethod
    def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        dev = model_device(model) or x.device
        with torch.no_grad():
            return model(x.to(dev))

    def measure(
        self,
        model: nn.Module,
        shifted: ShiftedInputs,
        scores_in: np.ndarray,
        *,
        batch_size: int = 256,
    ) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
        """Metrics of one level: ``(metrics, out scores, in-point mask)`` given the shifted
        inputs (:func:`~robustlab.detect.shifts.shifted_inputs`) and the scores of the clean
        points they came from (see :meth:`run` for the protocol)."""
        scores_in = np.asarray(scores_in, dtype=np.float64)
        if shifted.success is None:
            s_out = self.score(model, shifted.x, batch_size=batch_size).double().cpu().numpy()
            m = detection_metrics(scores_in, s_out)
            m.update(num_in=float(len(scores_in)), num_out=float(len(s_out)))
            return {k: float(v) for k, v in m.items()}, s_out, np.ones(len(scores_in), dtype=bool)
        assert shifted.clean_correct is not None
        correct = shifted.clean_correct.cpu().numpy().astype(bool)
        ok = shifted.success.cpu().numpy().astype(bool) & correct
        x_ok = shifted.x[torch.from_numpy(ok).to(shifted.x.device)]
        s_adv = self.score(model, x_ok, batch_size=batch_size).double().cpu().numpy()
        m = detection_metrics(scores_in[ok], s_adv)
        n_att = int(correct.sum())
        tau = threshold_at_tpr(scores_in[correct], OPERATING_TPR) if n_att else float("nan")
        m.update(
            num_in=float(ok.sum()),
            num_out=float(len(s_adv)),
            num_attacked=float(n_att),
            attack_success=float(ok.sum()) / n_att if n_att else float("nan"),
            undetected_success=float((s_adv >= tau).sum()) / n_att if n_att else float("nan"),
            threshold=tau,
        )
        return {k: float(v) for k, v in m.items()}, s_adv, ok

    # -- the one-call measurement ------------------------------------------------------------
    def run(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        shift: str,
        levels: Sequence[float],
        *,
        reference: tuple[torch.Tensor, torch.Tensor] | None = None,
        num_classes: int | None = None,
        seed: int = 0,
        batch_size: int = 256,
        progress: Progress | None = None,
        shift_params: dict[str, Any] | None = None,
    ) -> Detection:
        """Fit on ``reference``, then measure how well the detector separates the points
        ``x`` from ``shift``-ed inputs at every level.

        ``reference=(x_fit, y_fit)``: the in-distribution training split the detector is
        fitted on (required: fitting on the evaluated points would flatter it).
        ``shift``: ``"uniform"``, ``"gaussian"``, ``"corruption/<name>"``,
        ``"adversarial/<norm>"``, ``"adaptive/<norm>"`` (see
        :func:`robustlab.detect.shifts.shifted_inputs`); ``levels``: noise std / severity /
        eps per level. ``shift_params``: extra keywords for ``shifted_inputs`` (``attack``,
        ``attack_params``, ``lam``, ``kappa``, ...). ``seed`` seeds every random draw
        (one generator per level, derived from ``seed``, the shift and the level).
        ``progress``: advanced by the number of points done (fit, in-scores, each level).
        ``num_classes``: when given, ``y`` is checked against it.

        Noise and corruption levels compare the scores on all of ``x`` with the scores on
        all shifted points. Adversarial and adaptive levels follow Lee et al. (2018, Sec.
        3.2): the in points are the clean points the model classifies correctly *whose
        attack succeeded*, the out points their adversarial examples. There the metrics
        also hold ``attack_success`` (successful attacks / correctly classified points)
        and ``undetected_success`` (successful attacks whose adversarial example is
        accepted at the threshold keeping 95% of the correctly classified clean points,
        over the correctly classified points): the number to read for an adaptive attack.
        """
        from robustlab.detect.shifts import parse_shift, shifted_inputs

        parse_shift(shift)  # unknown shifts fail before any work
        if reference is None:
            raise ConfigError(
                f"Detector.run needs reference=(x_train, y_train): detector {self.name!r} is "
                f"fitted on in-distribution training points, not on the points it is measured on."
            )
        if not isinstance(reference, (tuple, list)) or len(reference) != 2:
            raise ConfigError(
                f"reference must be a pair (x_train, y_train), got {type(reference).__name__}."
            )
        levels = [float(v) for v in levels]
        if not levels:
            raise ConfigError("run needs at least one level (e.g. levels=[0.1, 0.3]).")
        batch_size = check_int(batch_size, "batch_size", minimum=1)
        check_inputs(x, bounds=model_bounds(model))
        if num_classes is not None:
            check_labels(y, int(num_classes), n=len(x))
        params = dict(shift_params or {})
        t0 = time.perf_counter()
        x_fit, y_fit = reference
        self.fit(model, x_fit, y_fit, batch_size=batch_size,
                 generator=torch.Generator().manual_seed(derive_seed(seed, "detect-fit")))
        if progress is not None:
            progress.advance(len(x_fit))
        scores_in = self.score(model, x, batch_size=batch_size).double().cpu().numpy()
        if progress is not None:
            progress.advance(len(x))
        metrics: dict[float, dict[str, float]] = {}
        scores_out: dict[float, np.ndarray] = {}
        selected: dict[float, np.ndarray] = {}
        for level in levels:
            gen = torch.Generator().manual_seed(derive_seed(seed, "detect-shift", shift, level))
            shifted = shifted_inputs(shift, model, x, y, level, generator=gen, detector=self,
                                     batch_size=batch_size, **params)
            m, s_out, sel = self.measure(model, shifted, scores_in, batch_size=batch_size)
            metrics[level] = m
            scores_out[level] = s_out
            selected[level] = sel
            if progress is not None:
                progress.advance(len(x))
        return Detection(
            detector=self.name,
            shift=shift,
            params=self.get_params(),
            levels=levels,
            metrics=metrics,
            scores_in=scores_in,
            scores_out=scores_out,
            seconds=time.perf_counter() - t0,
            selected=selected,
        )


@dataclass
class Detection:
    """What :meth:`Detector.run` returns.

    ``metrics[level]``: ``auroc``, ``aupr_in``, ``aupr_out``, ``tnr_at_95_tpr``,
    ``num_in``, ``num_out``; for adversarial/adaptive shifts also ``num_attacked``,
    ``attack_success``, ``undetected_success`` and ``threshold`` (the detector's
    operating threshold: it keeps 95% of the correctly classified clean points).
    ``scores_in``: the scores of all clean points ``x``; ``scores_out[level]``: the scores
    of the out points of that level (adversarial: the successful adversarial examples
    only). ``selected[level]``: which of ``x`` were the in points at that level (all of
    them for noise and corruptions; the successfully attacked ones for adversarial
    shifts), so ``scores_in[selected[level]]`` are the in scores behind the metrics.
    """

    detector: str
    shift: str
    params: dict[str, Any]
    levels: list[float]
    metrics: dict[float, dict[str, float]]
    scores_in: np.ndarray
    scores_out: dict[float, np.ndarray]
    seconds: float
    selected: dict[float, np.ndarray] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no per-point arrays)."""
        return {
            "detector": self.detector,
            "shift": self.shift,
            "params": {k: (v if isinstance(v, (int, float, str, bool, type(None))) else repr(v))
                       for k, v in self.params.items()},
            "levels": list(self.levels),
            "metrics": {str(k): dict(v) for k, v in self.metrics.items()},
            "seconds": self.seconds,
        }


def create(name: str, /, **params: Any) -> Detector:
    """Build a registered detector: ``create("mahalanobis", magnitude=0.001)``."""
    return detectors.create(name, **params)


def available(pattern: str = "*") -> list[str]:
    """Names of the registered detectors matching ``pattern``."""
    return detectors.available(pattern)


__all__ = [
    "OPERATING_TPR",
    "Detection",
    "Detector",
    "DetectorNotFittedError",
    "TooFewSamplesError",
    "available",
    "create",
    "detectors",
]
