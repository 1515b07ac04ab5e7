"""Conformal prediction sets, plain and provably robust (RSCP+ with PTT).

Split conformal prediction (Vovk et al. 2005; Lei et al. 2018; the form used here is
Angelopoulos & Bates 2021, "A Gentle Introduction to Conformal Prediction", Sec. 1):
with non-conformity scores ``S(x, y)`` (large = unlikely label) of ``n`` calibration
points, the threshold ``tau`` is the ``ceil((1 - alpha)(n + 1))``-th smallest
calibration score (the empirical quantile at level ``(1 - alpha)(1 + 1/n)``) and the set
``C(x) = {y : S(x, y) <= tau}`` covers the true label of an exchangeable test point with
probability ``>= 1 - alpha`` (and ``< 1 - alpha + 1/(n + 1)`` when scores have no ties).

An adversary who may move the test input by an L2 distance ``delta`` breaks that
guarantee. RSCP+ (Yan, Romano & Weng 2024, "Provably Robust Conformal Prediction with
Improved Efficiency", ICLR; official code ``Trustworthy-ML-Lab/Provably-Robust-
Conformal-Prediction``, ``code/RSCP_exp.py`` and ``code/utils.py``) restores it:

- the *smoothed score* ``S~(x, y) = E_eps S(x + eps, y)``, ``eps ~ N(0, sigma^2 I)``, is
  such that ``Phi^-1(S~(x, y))`` is ``1/sigma``-Lipschitz in ``x`` for scores in
  ``[0, 1]`` (Salman et al. 2019's Lipschitz lemma for smoothed soft classifiers,
  as used by Gendler et al. 2022, "Adversarially Robust Conformal Prediction" (RSCP));
- it is estimated by Monte Carlo, ``S^(x, y) = (1/n_s) sum_i S(x + eps_i, y)``, and
  RSCP+ accounts for the estimation error with a bound ``b`` that holds with probability
  ``>= 1 - beta``: Hoeffding's ``b = sqrt(ln(1/beta) / (2 n_s))`` or the empirical
  Bernstein bound of Maurer & Pontil (2009), ``sqrt(2 V ln(2/beta) / n_s) +
  7 ln(2/beta) / (3 (n_s - 1))`` with ``V`` the sample variance of the ``n_s`` scores;
- calibration takes the plain split-conformal threshold of the *uncorrected* smoothed
  calibration scores at the stricter level ``alpha - 2 beta``, i.e. the quantile at
  ``(1 - alpha + 2 beta)(1 + 1/n)`` (paper Sec. 3);
- the prediction set is (paper Sec. 3) ::

      C+(x~) = {y : Phi^-1(max(S^(x~, y) - b, 0)) - delta/sigma
                    <= Phi^-1(min(tau + b_hoef, 1))}

  and covers the label of the clean point with probability ``>= 1 - alpha`` for every
  ``x~`` with ``||x~ - x||_2 <= delta``: the threshold side uses Hoeffding's bound
  always, the test side Hoeffding's or (option) Bernstein's, exactly as the official
  ``prediction`` function does (its "RSCP+" method uses Bernstein on the test side; the
  paper's main text states Hoeffding on both sides; both are valid).

PTT, the post-training transformation (paper Sec. 4): the base score
is replaced by ``sigmoid(T (Q(S) - b))`` where ``Q(s) = #{ref <= s} / n_ref`` is the
rank of ``s`` among base scores of a holdout set at its true labels (one noise draw of
scale ``sigma`` per holdout point, as the official code does). Both maps are monotone,
so validity is untouched; they make the smoothed true-label scores sharper, which
shrinks the sets. Defaults ``T = 400``, ``b = 0.9`` and 500 holdout points are the
official ``RSCP_exp.py`` arguments (``--T 400 --bias 0.9 --n-quantile 500``; the
``sigmoid_score`` class itself defaults to ``T = 10, bias = 0.5``). The transform is applied to every noisy base score *before*
averaging, as in the official ``get_scores``.

Defaults (official ``RSCP_exp.py``): ``alpha = 0.1``, ``delta = 0.125``,
``sigma = 2 delta`` (``--ratio 2``), ``n_s = 256``, ``beta = 0.001``.

Deviations from the official code (each deliberate, each listed):

- **Quantile.** The official ``calibration`` uses ``scipy.stats.mstats.mquantiles``
  (an interpolating quantile with ``alphap = betap = 0.4``) at level
  ``(1 - alpha')(1 + 1/n)``; here the threshold is the exact
  ``ceil((1 - alpha')(n + 1))``-th order statistic, which is what the finite-sample
  guarantee proves, and a calibration set too small for it is an error instead of a
  silently clipped level.
- **Randomness.** Every draw (noise, APS's ``U``, splits) comes from a
  ``torch.Generator``; the official code reseeds the global RNG with the point's index,
  so that the attack and the evaluation see the *same* noise. Here the evaluation draws
  fresh noise, independent of the attack, as the guarantee assumes.
- **Non-randomised APS.** ``randomized=False`` gives Romano et al.'s generalised
  inverse quantile ``sum_{j: pi_j >= pi_y} pi_j`` (the label's own mass included, i.e.
  ``U = 1``); the official ``u=None`` branch subtracts the label's whole mass (``U = 0``).
  The randomised score is ``rho(y) + U pi_y`` (Romano et al. 2020); the
  official ``cumsum - U pi_y`` is the same law with ``U`` replaced by ``1 - U``. One
  ``U`` per point, shared by its noise copies and its classes, as in ``get_scores``.
- **Calibration data.** The official script adds the 500 holdout points to every
  calibration set of the non-PTT scores (and uses them as PTT's reference otherwise);
  :func:`evaluate_conformal` does the same when given ``holdout``.
- **Attack.** The official script attacks with SmoothAdv's PGD on the cross-entropy of
  the smoothed classifier (Salman et al. 2019; 20 steps of ``2 delta / 20``, no clipping
  to ``[0, 1]``). :func:`conformal_attack` attacks the conformal objective itself (the
  true label's score, with expectation over the noise for RSCP+) with the same steps and
  step size, and keeps inputs in the model's box.
- **Noise copies are not clipped** to ``[0, 1]`` (neither in the official code; clipping
  would break the Gaussian Lipschitz argument).

>>> from robustlab.certify.conformal import RSCPPlus, coverage, mean_set_size
>>> cp = RSCPPlus("aps", alpha=0.1, delta=0.125)
>>> cp.calibrate(model, x_cal, y_cal, generator=torch.Generator().manual_seed(0))
>>> sets = cp.predict_sets(x_test, generator=torch.Generator().manual_seed(1))
>>> coverage(sets, y_test), mean_set_size(sets)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from robustlab.attacks.engine import eval_mode, model_device
from robustlab.attacks.threat import ThreatModel, draw
from robustlab.certify.stats import check_alpha, check_sigma
from robustlab.errors import ConfigError, InvalidInputError
from robustlab.seeding import derive_seed
from robustlab.validation import (
    check_bool,
    check_choice,
    check_float,
    check_inputs,
    check_int,
    check_labels,
)

SCORES = ("aps", "hps")
_SCORE_ALIASES = {"thr": "hps", "lac": "hps"}
BOUNDS = ("hoeffding", "bernstein")

# Official RSCP_exp.py defaults.
DEFAULT_ALPHA = 0.1
DEFAULT_DELTA = 0.125
DEFAULT_N_S = 256
DEFAULT_BETA = 0.001
DEFAULT_PTT_T = 400.0
DEFAULT_PTT_BIAS = 0.9

# Tolerance for ceil((1 - alpha)(n + 1)) so that 0.9 * 20 = 18.000000000000004 gives 18.
_CEIL_TOL = 1e-9


# -- functional core ---------------------------------------------------------------------


def hps_scores(probs: torch.Tensor) -> torch.Tensor:
    """HPS / THR / LAC score of every class: ``S(x, y) = 1 - pi_y(x)`` (Sadinle, Lei &
    Wasserman 2019; official ``class_probability_score``). ``probs``: ``(N, K)``."""
    return 1.0 - probs


def aps_scores(probs: torch.Tensor, u: torch.Tensor | float | None = None) -> torch.Tensor:
    """APS score of every class (Romano, Sesia & Candès 2020, "Classification with
    Valid and Adaptive Coverage", NeurIPS): ``S(x, y; u) = rho(y) + u * pi_y`` where
    ``rho(y)`` is the total probability of the classes ranked above ``y`` (descending
    probability; ties by class index, the official ``rankdata(..., 'ordinal')``).

    ``u``: per-row ``(N,)`` uniforms (randomised APS), a number, or ``None`` for the
    non-randomised score (``u = 1``: the label's own mass included). Differentiable in
    ``probs`` (used by :func:`conformal_attack`). Returns ``(N, K)`` scores in ``[0, 1]``.
    """
    p_sorted, order = torch.sort(probs, dim=1, descending=True, stable=True)
    above = torch.cumsum(p_sorted, dim=1) - p_sorted  # rho of each sorted position
    if u is None:
        uu: torch.Tensor | float = 1.0
    elif isinstance(u, torch.Tensor):
        uu = u.to(probs.dtype).reshape(-1, 1)
    else:
        uu = float(u)
    sorted_scores = (above + uu * p_sorted).clamp(0.0, 1.0)
    return torch.empty_like(probs).scatter(1, order, sorted_scores)


def quantile_index(n: int, alpha: float) -> int:
    """The 1-based order statistic ``k = ceil((1 - alpha)(n + 1))`` of split conformal
    (the quantile at level ``(1 - alpha)(1 + 1/n)``); a ConfigError when ``k > n``, naming
    the smallest ``n`` that works (:func:`min_calibration_size`)."""
    k = math.ceil((1.0 - alpha) * (n + 1) - _CEIL_TOL)
    if k > n:
        raise ConfigError(
            f"a calibration set of {n} points is too small for a conformal quantile at "
            f"alpha={alpha:g} (it needs the {k}-th smallest of {n} scores); use at least "
            f"{min_calibration_size(alpha)} calibration points or a larger alpha."
        )
    return max(k, 1)


def min_calibration_size(alpha: float) -> int:
    """The smallest ``n`` with ``ceil((1 - alpha)(n + 1)) <= n``."""
    n = max(1, math.floor((1.0 - alpha) / alpha) - 1)
    while math.ceil((1.0 - alpha) * (n + 1) - _CEIL_TOL) > n:
        n += 1
    return n


def conformal_threshold(cal_scores: torch.Tensor, alpha: float) -> float:
    """Split-conformal threshold: the ``ceil((1 - alpha)(n + 1))``-th smallest of the
    ``n`` calibration scores (at their true labels)."""
    s = cal_scores.reshape(-1).double()
    k = quantile_index(len(s), alpha)
    return float(torch.sort(s).values[k - 1])


def hoeffding_bound(n_s: int, beta: float) -> float:
    """Hoeffding's one-sided deviation of a mean of ``n_s`` values in ``[0, 1]`` at
    confidence ``1 - beta``: ``sqrt(ln(1/beta) / (2 n_s))`` (RSCP+ Sec. 3; official
    ``bound_hoef``)."""
    return math.sqrt(math.log(1.0 / beta) / (2.0 * n_s))


def bernstein_bound(samples: torch.Tensor, beta: float) -> torch.Tensor:
    """Empirical Bernstein bound (Maurer & Pontil 2009, Theorem 4; official
    ``calculate_Bern_bound``) of means over dim 0 of ``samples`` in ``[0, 1]``:
    ``sqrt(2 V t / n) + 7 t / (3 (n - 1))``, ``t = ln(2/beta)``, ``V`` the unbiased
    sample variance. Needs ``n >= 2``."""
    n = samples.shape[0]
    var = samples.double().var(dim=0, unbiased=True).clamp_min(0.0)
    t = math.log(2.0 / beta)
    return torch.sqrt(2.0 * var * t / n) + 7.0 * t / (3.0 * (n - 1))


def _bernstein_from_sums(s1: torch.Tensor, s2: torch.Tensor, n: int, beta: float) -> torch.Tensor:
    """:func:`bernstein_bound` from running sums ``s1 = sum x`` and ``s2 = sum x^2``."""
    var = ((s2 - s1 * s1 / n) / (n - 1)).clamp_min(0.0)
    t = math.log(2.0 / beta)
    return torch.sqrt(2.0 * var * t / n) + 7.0 * t / (3.0 * (n - 1))


def coverage(sets: torch.Tensor, y: torch.Tensor) -> float:
    """Share of rows of the boolean ``(N, K)`` ``sets`` that contain their label ``y``."""
    _check_sets(sets)
    check_labels(y, sets.shape[1], n=len(sets))
    if len(sets) == 0:
        raise InvalidInputError("coverage got no sets; pass at least one row.")
    return float(sets.gather(1, y.to(sets.device)[:, None]).float().mean())


def mean_set_size(sets: torch.Tensor) -> float:
    """Mean number of labels per prediction set (``sets``: boolean ``(N, K)``)."""
    _check_sets(sets)
    if len(sets) == 0:
        raise InvalidInputError("mean_set_size got no sets; pass at least one row.")
    return float(sets.float().sum(1).mean())


def _check_sets(sets: torch.Tensor) -> None:
    if not isinstance(sets, torch.Tensor) or sets.dtype != torch.bool or sets.dim() != 2:
        raise InvalidInputError(
            "sets must be a boolean tensor of shape (N, num_classes), as predict_sets returns."
        )


# -- model evaluation ------------------------------------------------------------------


@dataclass(frozen=True)
class ScoreTable:
    """Scores of every class of ``N`` points: ``scores`` ``(N, K)`` (base scores for split
    conformal, smoothed estimates ``S^`` for RSCP+) and, for RSCP+, the Monte-Carlo bound
    ``bound`` ``(N, K)`` (a constant Hoeffding bound or per-entry Bernstein bounds)."""

    scores: torch.Tensor
    bound: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.scores)

    def rows(self, idx: torch.Tensor) -> ScoreTable:
        return ScoreTable(self.scores[idx], None if self.bound is None else self.bound[idx])


def _check_score_name(score: str) -> str:
    key = _SCORE_ALIASES.get(str(score).lower(), str(score).lower()) if isinstance(score, str) else score
    return str(check_choice(key, "score", SCORES))


def _check_x(x: Any, name: str) -> torch.Tensor:
    check_inputs(x, name=name)
    if len(x) == 0:
        raise InvalidInputError(f"{name} is empty; pass at least one point.")
    return x  # type: ignore[no-any-return]


# -- split conformal -------------------------------------------------------------------


class SplitConformal:
    """Plain (non-robust) split conformal classification (Vovk et al. 2005; Papadopoulos
    et al. 2002; Romano et al. 2020 for APS): threshold = the ``ceil((1 - alpha)(n + 1))``-
    th smallest calibration score, set = ``{y : S(x, y) <= tau}``. Guarantees coverage
    ``>= 1 - alpha`` on exchangeable clean data only.

    Parameters
    ----------
    score: ``"aps"`` (default; the official RSCP/RSCP+ experiments report APS and HPS) or
        ``"hps"`` (alias ``"thr"``: ``1 - softmax_y``).
    alpha: miscoverage level in (0, 1); default 0.1.
    randomized: randomised APS with ``U ~ Uniform[0, 1)`` per point (default True).
    batch_size: inputs per model call (bounds memory).

    After :meth:`calibrate`: ``threshold_``, ``n_cal_``.
    """

    robust = False

    def __init__(
        self,
        score: str = "aps",
        alpha: float = DEFAULT_ALPHA,
        *,
        randomized: bool = True,
        batch_size: int = 1024,
    ) -> None:
        self.score = _check_score_name(score)
        self.alpha = check_alpha(alpha)
        self.randomized = check_bool(randomized, "randomized")
        self.batch_size = check_int(batch_size, "batch_size", minimum=1)
        self.threshold_: float | None = None
        self.n_cal_: int | None = None
        self.model_: nn.Module | None = None

    # -- introspection -------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        """The constructor's parameters (round-trips: ``type(cp)(**cp.get_params())``)."""
        return {"score": self.score, "alpha": self.alpha, "randomized": self.randomized,
                "batch_size": self.batch_size}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # -- scores --------------------------------------------------------------------
    @property
    def calibration_alpha(self) -> float:
        """The level of the calibration quantile (``alpha``; RSCP+: ``alpha - 2 beta``)."""
        return self.alpha

    def _uniforms(self, n: int, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor | None:
        if self.score != "aps" or not self.randomized:
            return None
        return draw((n,), like, generator).double()

    def base_scores(self, probs: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
        """The base score ``S`` of every class from softmax probabilities ``(N, K)``."""
        if self.score == "hps":
            return hps_scores(probs)
        return aps_scores(probs, u)

    def score_table(
        self, model: nn.Module, x: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> ScoreTable:
        """``S(x, k)`` for every point and class (model in eval mode, no gradients,
        ``batch_size`` inputs per call; APS's ``U`` drawn from ``generator``)."""
        _check_x(x, "x")
        u = self._uniforms(len(x), x, generator)
        dev = (model_device(model) or x.device)
        out = []
        with torch.no_grad(), eval_mode(model):
            for i in range(0, len(x), self.batch_size):
                probs = torch.softmax(model(x[i : i + self.batch_size].to(dev)).double(), dim=1).cpu()
                out.append(self.base_scores(probs, None if u is None else u[i : i + self.batch_size].cpu()))
        return ScoreTable(torch.cat(out))

    # -- calibration ---------------------------------------------------------------
    def threshold_from(self, true_scores: torch.Tensor) -> float:
        """The conformal threshold of calibration scores at their true labels."""
        return conformal_threshold(true_scores, self.calibration_alpha)

    def _check_cal_size(self, n: int) -> None:
        quantile_index(n, self.calibration_alpha)

    def calibrate(
        self,
        model: nn.Module | torch.Tensor,
        x_cal: torch.Tensor | None = None,
        y_cal: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        holdout: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> SplitConformal:
        """Set ``threshold_`` from the calibration points ``(x_cal, y_cal)``.

        ``model`` is a classifier returning logits, or a precomputed ``(n_cal, K)`` score
        table (then ``x_cal`` must be None; for RSCP+ the smoothed estimates ``S^``, with
        the Hoeffding bound). ``holdout`` is only used by RSCP+ with PTT. Returns self.
        """
        if y_cal is None:
            raise InvalidInputError("calibrate needs the calibration labels y_cal.")
        if isinstance(model, torch.Tensor):
            if x_cal is not None:
                raise InvalidInputError(
                    "calibrate got a score table and x_cal; pass either a model with x_cal or "
                    "a precomputed (n_cal, K) score table with x_cal=None."
                )
            table = self._table_from_scores(model)
            self.model_ = None
        else:
            if not isinstance(model, nn.Module):
                raise InvalidInputError(
                    f"calibrate needs an nn.Module or a score tensor, got {type(model).__name__}."
                )
            if x_cal is None:
                raise InvalidInputError("calibrate got a model but no x_cal; pass the calibration inputs.")
            _check_x(x_cal, "x_cal")
            self._check_cal_size(len(x_cal))
            self._prepare(model, holdout, generator)
            table = self.score_table(model, x_cal, generator=generator)
            self.model_ = model
        check_labels(y_cal, table.scores.shape[1], n=len(table), name="y_cal")
        self._check_cal_size(len(table))
        true = table.scores.gather(1, y_cal.cpu()[:, None]).squeeze(1)
        self.threshold_ = self.threshold_from(true)
        self.n_cal_ = len(table)
        return self

    def _prepare(
        self,
        model: nn.Module,
        holdout: tuple[torch.Tensor, torch.Tensor] | None,
        generator: torch.Generator | None,
    ) -> None:
        """Hook for what must be fitted before the scores (RSCP+'s PTT reference)."""
        if holdout is not None:
            raise ConfigError(f"{type(self).__name__} uses no holdout set; drop holdout=.")

    def _table_from_scores(self, scores: torch.Tensor) -> ScoreTable:
        if not torch.is_floating_point(scores) or scores.dim() != 2 or len(scores) == 0:
            raise InvalidInputError(
                f"a score table must be a float tensor (N, num_classes), got {tuple(scores.shape)}."
            )
        if not bool(torch.isfinite(scores).all()):
            raise InvalidInputError("the score table contains NaN or inf; recompute the scores.")
        return ScoreTable(scores.detach().double().cpu())

    # -- prediction ----------------------------------------------------------------
    def sets_from(self, table: ScoreTable, threshold: float) -> torch.Tensor:
        """Prediction sets ``{y : S(x, y) <= threshold}`` from a score table."""
        return table.scores <= threshold

    def predict_sets(
        self,
        x: torch.Tensor | None = None,
        *,
        scores: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Boolean ``(N, K)`` prediction sets of ``x`` (with the calibrated model) or of a
        precomputed score table ``scores``."""
        if self.threshold_ is None:
            raise ConfigError(f"{type(self).__name__} is not calibrated; call calibrate(...) first.")
        if (x is None) == (scores is None):
            raise InvalidInputError("predict_sets needs exactly one of x or scores=.")
        if scores is not None:
            table = self._table_from_scores(scores)
        else:
            if self.model_ is None:
                raise ConfigError(
                    "this predictor was calibrated on a score table; pass scores=... to predict_sets."
                )
            table = self.score_table(self.model_, x, generator=generator)  # type: ignore[arg-type]
        return self.sets_from(table, self.threshold_)

    # -- attack objective ----------------------------------------------------------
    def attack_objective(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """Per-sample differentiable score of the true label that :func:`conformal_attack`
        maximises: the base score ``S(x, y)`` (APS with ``U = 1/2``, its mean)."""
        probs = torch.softmax(model(x).double(), dim=1)
        scores = hps_scores(probs) if self.score == "hps" else aps_scores(probs, 0.5)
        return scores.gather(1, y[:, None]).squeeze(1)


# -- RSCP+ -----------------------------------------------------------------------------


class RSCPPlus(SplitConformal):
    """RSCP+ (Yan, Romano & Weng 2024, ICLR, Sec. 3): conformal sets that
    cover the clean label with probability ``>= 1 - alpha`` for *every* test input moved
    by at most ``delta`` in L2, from Monte-Carlo smoothed scores (see the module
    docstring for the formulas and every deviation from the official code).

    Parameters (defaults from the official ``RSCP_exp.py``)
    ----------
    score: base score, ``"aps"`` or ``"hps"`` (both in ``[0, 1]``, as the Gaussian-CDF
        argument requires).
    alpha: miscoverage level, default 0.1.
    delta: L2 radius of the adversary in robustlab's ``[0, 1]`` input space, default 0.125.
    sigma: smoothing noise, default ``2 * delta`` (``--ratio 2``).
    n_s: noise samples per point, default 256.
    beta: failure probability of each Monte-Carlo bound, default 0.001; must be
        ``< alpha / 2`` (calibration is at ``alpha - 2 beta``).
    bound: test-side bound, ``"hoeffding"`` (default; the paper) or ``"bernstein"``
        (the official code's "RSCP+" rows); the threshold side is always Hoeffding.
    ptt: apply the post-training transformation (needs ``holdout=`` in calibrate).
    ptt_temperature, ptt_bias: PTT's sigmoid, defaults 400 and 0.9 (official arguments).
    randomized: randomised APS (one ``U`` per point).
    batch_size: model inputs per call (noise copies included); memory is bounded by it.
    """

    robust = True

    def __init__(
        self,
        score: str = "aps",
        alpha: float = DEFAULT_ALPHA,
        *,
        delta: float = DEFAULT_DELTA,
        sigma: float | None = None,
        n_s: int = DEFAULT_N_S,
        beta: float = DEFAULT_BETA,
        bound: str = "hoeffding",
        ptt: bool = False,
        ptt_temperature: float = DEFAULT_PTT_T,
        ptt_bias: float = DEFAULT_PTT_BIAS,
        randomized: bool = True,
        batch_size: int = 1024,
    ) -> None:
        super().__init__(score, alpha, randomized=randomized, batch_size=batch_size)
        self.delta = check_float(delta, "delta", low=0.0)
        self.sigma = check_sigma(2.0 * self.delta if sigma is None else sigma)
        if sigma is None and self.delta == 0:
            raise ConfigError("delta=0 gives the default sigma = 2 * delta = 0; pass sigma > 0 explicitly.")
        self.n_s = check_int(n_s, "n_s", minimum=1)
        self.beta = check_float(beta, "beta", low=0.0, high=1.0, low_open=True, high_open=True)
        if self.beta >= self.alpha / 2:
            raise ConfigError(
                f"beta={self.beta:g} must be smaller than alpha/2={self.alpha / 2:g} (RSCP+ "
                f"calibrates at alpha - 2*beta); use a smaller beta such as 0.001."
            )
        self.bound = check_choice(bound, "bound", BOUNDS)
        if self.bound == "bernstein" and self.n_s < 2:
            raise ConfigError("the Bernstein bound needs n_s >= 2 (a sample variance); raise n_s.")
        self.ptt = check_bool(ptt, "ptt")
        self.ptt_temperature = check_float(ptt_temperature, "ptt_temperature", low=0.0, low_open=True)
        self.ptt_bias = check_float(ptt_bias, "ptt_bias")
        self.reference_: torch.Tensor | None = None

    def get_params(self) -> dict[str, Any]:
        return {**super().get_params(), "delta": self.delta, "sigma": self.sigma, "n_s": self.n_s,
                "beta": self.beta, "bound": self.bound, "ptt": self.ptt,
                "ptt_temperature": self.ptt_temperature, "ptt_bias": self.ptt_bias}

    @property
    def calibration_alpha(self) -> float:
        return self.alpha - 2.0 * self.beta

    @property
    def hoeffding(self) -> float:
        """Hoeffding's ``b`` for ``n_s`` samples at ``beta``."""
        return hoeffding_bound(self.n_s, self.beta)

    # -- PTT -----------------------------------------------------------------------
    def fit_reference(
        self,
        model: nn.Module,
        x_ref: torch.Tensor,
        y_ref: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> RSCPPlus:
        """PTT's ranking reference: base scores at the true labels of holdout points, one
        noise draw of scale ``sigma`` each (official ``get_scores(..., 1, sigma, base=True)``)."""
        _check_x(x_ref, "x_ref")
        u = self._uniforms(len(x_ref), x_ref, generator)
        dev = (model_device(model) or x_ref.device)
        out = []
        with torch.no_grad(), eval_mode(model):
            for i in range(0, len(x_ref), self.batch_size):
                xb = x_ref[i : i + self.batch_size]
                noisy = xb + self.sigma * draw(xb.shape, xb, generator, normal=True).to(xb.dtype)
                probs = torch.softmax(model(noisy.to(dev)).double(), dim=1).cpu()
                out.append(self.base_scores(probs, None if u is None else u[i : i + self.batch_size].cpu()))
        table = torch.cat(out)
        check_labels(y_ref, table.shape[1], n=len(table), name="y_ref")
        self.reference_ = torch.sort(table.gather(1, y_ref.cpu()[:, None]).squeeze(1)).values
        return self

    def transform(self, scores: torch.Tensor) -> torch.Tensor:
        """PTT (paper Sec. 4): ``sigmoid(T * (Q(s) - b))`` with ``Q(s)`` the share
        of reference scores ``<= s``. Identity when ``ptt`` is off."""
        if not self.ptt:
            return scores
        if self.reference_ is None:
            raise ConfigError("PTT needs its reference scores; pass holdout=(x, y) to calibrate.")
        ref = self.reference_.to(scores.device, scores.dtype)
        ranks = torch.searchsorted(ref, scores.contiguous(), right=True).to(scores.dtype) / len(ref)
        return torch.sigmoid(self.ptt_temperature * (ranks - self.ptt_bias))

    def _prepare(
        self,
        model: nn.Module,
        holdout: tuple[torch.Tensor, torch.Tensor] | None,
        generator: torch.Generator | None,
    ) -> None:
        if not self.ptt:
            if holdout is not None:
                raise ConfigError(
                    "holdout= is PTT's reference set and ptt=False; add the points to the "
                    "calibration set instead (or set ptt=True)."
                )
            return
        if holdout is None:
            raise ConfigError("ptt=True needs holdout=(x_ref, y_ref) for its ranking (500 points officially).")
        self.fit_reference(model, holdout[0], holdout[1], generator=generator)

    # -- smoothed scores -----------------------------------------------------------
    def score_table(
        self, model: nn.Module, x: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> ScoreTable:
        """Smoothed scores ``S^(x, k) = mean_i S(x + eps_i, k)`` (PTT applied to each
        noisy score first) and their bounds. Noise copies are evaluated
        ``batch_size`` at a time (``max(1, batch_size // n_s)`` points per chunk), model in
        eval mode, no gradients. Draws: APS's ``U`` for all points, then the noise chunk by
        chunk, all from ``generator``."""
        _check_x(x, "x")
        if self.ptt and self.reference_ is None:
            raise ConfigError("PTT needs its reference scores; pass holdout=(x, y) to calibrate.")
        u = self._uniforms(len(x), x, generator)
        dev = (model_device(model) or x.device)
        per_chunk = max(1, self.batch_size // self.n_s)
        means, bounds = [], []
        with torch.no_grad(), eval_mode(model):
            for i in range(0, len(x), per_chunk):
                xb = x[i : i + per_chunk]
                m = len(xb)
                ub = None if u is None else u[i : i + per_chunk].cpu()
                s1: torch.Tensor | None = None
                s2: torch.Tensor | None = None
                done = 0
                while done < self.n_s:
                    reps = min(self.n_s - done, max(1, self.batch_size // m))
                    rep_x = xb.unsqueeze(1).expand(m, reps, *xb.shape[1:]).reshape(m * reps, *xb.shape[1:])
                    noise = draw(rep_x.shape, rep_x, generator, normal=True).to(rep_x.dtype)
                    probs = torch.softmax(model((rep_x + self.sigma * noise).to(dev)).double(), dim=1).cpu()
                    uu = None if ub is None else ub.repeat_interleave(reps)
                    sc = self.transform(self.base_scores(probs, uu)).reshape(m, reps, -1)
                    a, b = sc.sum(1), (sc * sc).sum(1)
                    s1 = a if s1 is None else s1 + a
                    s2 = b if s2 is None else s2 + b
                    done += reps
                assert s1 is not None and s2 is not None
                means.append(s1 / self.n_s)
                if self.bound == "bernstein":
                    bounds.append(_bernstein_from_sums(s1, s2, self.n_s, self.beta))
        mean = torch.cat(means).clamp(0.0, 1.0)
        if self.bound == "bernstein":
            return ScoreTable(mean, torch.cat(bounds))
        return ScoreTable(mean, torch.full_like(mean, self.hoeffding))

    def _table_from_scores(self, scores: torch.Tensor) -> ScoreTable:
        if self.bound != "hoeffding":
            raise ConfigError(
                "a precomputed score table has no per-point variance; use bound='hoeffding' "
                "with score tables (or pass the model)."
            )
        if self.ptt:
            raise ConfigError("PTT transforms each noisy score; pass the model, not a score table.")
        table = super()._table_from_scores(scores)
        if float(table.scores.min()) < 0 or float(table.scores.max()) > 1:
            raise InvalidInputError(
                "RSCP+ needs smoothed scores in [0, 1] (its Gaussian-CDF bound); use APS or HPS scores."
            )
        return ScoreTable(table.scores, torch.full_like(table.scores, self.hoeffding))

    def sets_from(self, table: ScoreTable, threshold: float) -> torch.Tensor:
        """RSCP+'s set: ``Phi^-1(max(S^ - b, 0)) - delta/sigma <= Phi^-1(min(tau + b_hoef, 1))``."""
        bound = table.bound if table.bound is not None else torch.full_like(table.scores, self.hoeffding)
        lhs = torch.special.ndtri((table.scores - bound).clamp_min(0.0)) - self.delta / self.sigma
        rhs = torch.special.ndtri(torch.tensor(min(threshold + self.hoeffding, 1.0), dtype=torch.float64))
        return lhs <= rhs

    def attack_objective(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None,
        samples: int = 32,
    ) -> torch.Tensor:
        """The smoothed base score of the true label, estimated with ``samples`` fresh noise
        draws per call (expectation over transformation); PTT is not applied (it is
        monotone and its rank step has zero gradient almost everywhere)."""
        m = len(x)
        rep = x.unsqueeze(1).expand(m, samples, *x.shape[1:]).reshape(m * samples, *x.shape[1:])
        noise = draw(rep.shape, rep, generator, normal=True).to(rep.dtype)
        probs = torch.softmax(model(rep + self.sigma * noise).double(), dim=1)
        scores = hps_scores(probs) if self.score == "hps" else aps_scores(probs, 0.5)
        yy = y.repeat_interleave(samples)
        return scores.gather(1, yy[:, None]).reshape(m, samples).mean(1)


# -- attack ----------------------------------------------------------------------------


def conformal_attack(
    predictor: SplitConformal,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    delta: float | None = None,
    steps: int = 20,
    step_size: float | None = None,
    eot_samples: int = 32,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """An L2 attack on the conformal objective: PGD with normalised L2 steps that
    *maximises the true label's score* inside the ball of radius ``delta`` (default: the
    predictor's ``delta``, else 0.125), so that ``y`` leaves the prediction set.

    Split conformal: ascent on the base score ``S(x', y)`` directly. RSCP+: ascent on the
    smoothed base score, each step's gradient averaged over ``eot_samples`` fresh noise
    draws (expectation over transformation; Athalye et al. 2018; Salman et al. 2019's
    SmoothAdv uses the same estimator on the cross-entropy). APS is attacked at
    ``U = 1/2``. Steps: ``x <- Proj(x + step_size * g / ||g||_2)`` from ``x`` (no random
    start), ``steps = 20`` and ``step_size = 2 * delta / steps`` as the official RSCP+ attack
    (SmoothAdv's ``PGD_L2``); returns the final iterate, kept in the model's input box.
    Model in eval mode with frozen parameters (both restored).
    """
    _check_x(x, "x")
    eps = check_float(
        getattr(predictor, "delta", DEFAULT_DELTA) if delta is None else delta, "delta", low=0.0
    )
    steps = check_int(steps, "steps", minimum=1)
    alpha = 2.0 * eps / steps if step_size is None else check_float(step_size, "step_size", low=0.0, low_open=True)
    eot_samples = check_int(eot_samples, "eot_samples", minimum=1)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    threat = ThreatModel("l2", eps)
    bounds = getattr(model, "input_bounds", (0.0, 1.0))
    bounds = (float(bounds[0]), float(bounds[1]))
    dev = (model_device(model) or x.device)
    objective: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    if isinstance(predictor, RSCPPlus):
        def objective(xa: torch.Tensor, ya: torch.Tensor) -> torch.Tensor:
            return predictor.attack_objective(model, xa, ya, generator, samples=eot_samples)
    else:
        def objective(xa: torch.Tensor, ya: torch.Tensor) -> torch.Tensor:
            return predictor.attack_objective(model, xa, ya, generator)

    flags = [(p, p.requires_grad) for p in model.parameters()]
    out = []
    with eval_mode(model):
        for p, _ in flags:
            p.requires_grad_(False)
        try:
            for i in range(0, len(x), batch_size):
                x0 = x[i : i + batch_size].to(dev)
                yb = y[i : i + batch_size].to(dev)
                xa = x0.clone()
                for _ in range(steps):
                    xa.requires_grad_(True)
                    with torch.enable_grad():
                        (grad,) = torch.autograd.grad(objective(xa, yb).sum(), xa)
                    xa = threat.project(xa.detach() + alpha * threat.ascent_direction(grad), x0, bounds)
                out.append(xa.detach().to(x.device))
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)
    return torch.cat(out)


# -- evaluation over random splits -----------------------------------------------------


@dataclass(frozen=True)
class ConformalEvaluation:
    """Coverage and set size over ``n_splits`` random calibration/test splits: means,
    standard deviations (over splits) and per-split values; the ``attacked_*`` fields are
    None when no attacked inputs were given."""

    method: str
    n_splits: int
    n_cal: int
    n_test: int
    coverage_mean: float
    coverage_std: float
    size_mean: float
    size_std: float
    coverages: tuple[float, ...]
    sizes: tuple[float, ...]
    attacked_coverage_mean: float | None = None
    attacked_coverage_std: float | None = None
    attacked_size_mean: float | None = None
    attacked_size_std: float | None = None


def _mean_std(v: list[float]) -> tuple[float, float]:
    t = torch.tensor(v, dtype=torch.float64)
    return float(t.mean()), float(t.std(unbiased=True)) if len(v) > 1 else 0.0


def evaluate_conformal(
    predictor: SplitConformal,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    n_cal: int,
    n_splits: int = 20,
    seed: int = 0,
    x_attacked: torch.Tensor | None = None,
    holdout: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> ConformalEvaluation:
    """Repeat random calibration/test splits of ``(x, y)`` and report coverage and mean
    set size (and, with ``x_attacked`` — attacked copies of ``x``, row for row — coverage
    and size on the attacked test points; calibration is always clean).

    As the official ``RSCP_exp.py``: scores of all points are computed once and shared
    by the splits (``n_splits`` default 20 here, 50 officially, half/half there); with
    ``holdout`` and PTT the holdout is PTT's reference, without PTT its points join every
    calibration set. Seeded: the scores' noise from ``derive_seed(seed, "conformal",
    "scores")``, split ``r`` from ``derive_seed(seed, "conformal", "split", r)``. The
    predictor passed in is not modified.
    """
    _check_x(x, "x")
    n_cal = check_int(n_cal, "n_cal", minimum=1)
    n_splits = check_int(n_splits, "n_splits", minimum=1)
    seed = check_int(seed, "seed", minimum=0)
    if n_cal >= len(x):
        raise ConfigError(f"n_cal={n_cal} leaves no test points among {len(x)}; use n_cal < {len(x)}.")
    if x_attacked is not None and x_attacked.shape != x.shape:
        raise InvalidInputError(
            f"x_attacked has shape {tuple(x_attacked.shape)} but x has {tuple(x.shape)}; pass one "
            f"attacked copy per point."
        )
    cp = copy.copy(predictor)
    gen = torch.Generator().manual_seed(derive_seed(seed, "conformal", "scores"))
    extra: torch.Tensor | None = None
    if holdout is not None and isinstance(cp, RSCPPlus) and cp.ptt:
        cp._prepare(model, holdout, gen)
    elif isinstance(cp, RSCPPlus) and cp.ptt:
        raise ConfigError("ptt=True needs holdout=(x_ref, y_ref) for its ranking.")
    table = cp.score_table(model, x, generator=gen)
    check_labels(y, table.scores.shape[1], n=len(x))
    yc = y.cpu()
    true = table.scores.gather(1, yc[:, None]).squeeze(1)
    if holdout is not None and not (isinstance(cp, RSCPPlus) and cp.ptt):
        h_table = cp.score_table(model, holdout[0], generator=gen)
        check_labels(holdout[1], h_table.scores.shape[1], n=len(h_table), name="holdout labels")
        extra = h_table.scores.gather(1, holdout[1].cpu()[:, None]).squeeze(1)
    cp._check_cal_size(n_cal + (0 if extra is None else len(extra)))
    adv = None if x_attacked is None else cp.score_table(model, x_attacked, generator=gen)
    covs, sizes, acovs, asizes = [], [], [], []
    for r in range(n_splits):
        g = torch.Generator().manual_seed(derive_seed(seed, "conformal", "split", r))
        perm = torch.randperm(len(x), generator=g)
        cal, test = perm[:n_cal], perm[n_cal:]
        cal_scores = true[cal] if extra is None else torch.cat([true[cal], extra])
        tau = cp.threshold_from(cal_scores)
        sets = cp.sets_from(table.rows(test), tau)
        covs.append(coverage(sets, yc[test]))
        sizes.append(mean_set_size(sets))
        if adv is not None:
            asets = cp.sets_from(adv.rows(test), tau)
            acovs.append(coverage(asets, yc[test]))
            asizes.append(mean_set_size(asets))
    cm, cs = _mean_std(covs)
    sm, ss = _mean_std(sizes)
    kw: dict[str, Any] = {}
    if adv is not None:
        kw["attacked_coverage_mean"], kw["attacked_coverage_std"] = _mean_std(acovs)
        kw["attacked_size_mean"], kw["attacked_size_std"] = _mean_std(asizes)
    return ConformalEvaluation(
        method=repr(predictor), n_splits=n_splits, n_cal=n_cal + (0 if extra is None else len(extra)),
        n_test=len(x) - n_cal, coverage_mean=cm, coverage_std=cs, size_mean=sm, size_std=ss,
        coverages=tuple(covs), sizes=tuple(sizes), **kw,
    )


__all__ = [
    "BOUNDS",
    "SCORES",
    "ConformalEvaluation",
    "RSCPPlus",
    "ScoreTable",
    "SplitConformal",
    "aps_scores",
    "bernstein_bound",
    "conformal_attack",
    "conformal_threshold",
    "coverage",
    "evaluate_conformal",
    "hoeffding_bound",
    "hps_scores",
    "mean_set_size",
    "min_calibration_size",
    "quantile_index",
]
