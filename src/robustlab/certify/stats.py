"""The statistics of randomized-smoothing certificates, in one place.

Cohen, Rosenfeld & Kolter (2019), "Certified Adversarial Robustness via Randomized
Smoothing" (ICML), Theorem 1 and Algorithms PREDICT / CERTIFY:

- a class whose probability under noise is at least ``p_A > 1/2`` is certified in the L2
  ball of radius ``sigma * Phi^-1(p_A)`` (Theorem 1 with ``p_B = 1 - p_A``);
- CERTIFY lower-bounds ``p_A`` by the one-sided Clopper--Pearson bound at level
  ``alpha``: ``Beta.ppf(alpha, k, n - k + 1)`` (0 when ``k = 0``), which is the
  reference's ``proportion_confint(k, n, alpha=2 * alpha, method="beta")[0]``;
- PREDICT returns the top class when the two-sided binomial test of its count against
  the runner-up's at ``p = 1/2`` has p-value at most ``alpha`` (``scipy.stats.binomtest``;
  the reference called the removed ``scipy.stats.binom_test``).

The largest radius ``n`` samples can certify is ``sigma * Phi^-1(alpha ** (1 / n))``
(all ``n`` samples on one class) and a certificate needs ``alpha ** (1 / n) >= 1/2``,
i.e. ``n >= log2(1 / alpha)``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from robustlab.errors import ConfigError
from robustlab.validation import check_float, check_int


def check_alpha(alpha: float, name: str = "alpha") -> float:
    """``alpha`` as a float strictly inside (0, 1), else a :class:`ConfigError`."""
    a = check_float(alpha, name)
    if not 0.0 < a < 1.0:
        raise ConfigError(f"{name} must lie strictly between 0 and 1 (e.g. 0.001), got {alpha!r}.")
    return a


def check_sigma(sigma: float) -> float:
    """``sigma`` as a positive finite float, else a :class:`ConfigError`."""
    s = check_float(sigma, "sigma")
    if not (s > 0.0 and math.isfinite(s)):
        raise ConfigError(f"sigma (the noise level) must be positive, e.g. 0.25; got {sigma!r}.")
    return s


def lower_confidence_bound(k: int | np.ndarray, n: int, alpha: float) -> np.ndarray:
    """One-sided ``(1 - alpha)`` Clopper--Pearson lower bound on a binomial proportion
    from ``k`` successes in ``n`` trials: ``Beta.ppf(alpha, k, n - k + 1)``, 0 at ``k = 0``."""
    k_arr = np.asarray(k, dtype=np.float64)
    safe = np.maximum(k_arr, 1.0)
    out = stats.beta.ppf(alpha, safe, n - safe + 1.0)
    return np.where(k_arr > 0, out, 0.0)


def radius(p_lower: float | np.ndarray, sigma: float) -> np.ndarray:
    """Theorem 1's radius ``sigma * Phi^-1(p_lower)`` (negative below 1/2: abstain)."""
    p = np.clip(np.asarray(p_lower, dtype=np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore"):
        return sigma * stats.norm.ppf(p)


def min_samples(alpha: float) -> int:
    """The smallest ``n`` with which CERTIFY can return a certificate at ``alpha``: the
    least ``n`` with ``alpha ** (1 / n) >= 1/2``."""
    n = max(1, math.ceil(math.log2(1.0 / alpha)))
    while float(lower_confidence_bound(n, n, alpha)) < 0.5:
        n += 1
    return n


def max_radius(n: int, alpha: float, sigma: float) -> float:
    """The ceiling ``sigma * Phi^-1(alpha ** (1 / n))``: no CERTIFY with ``n`` samples at
    ``alpha`` certifies a larger radius (all samples on one class)."""
    return float(radius(alpha ** (1.0 / n), sigma))


def check_budget(n: int, alpha: float, *, name: str = "n") -> None:
    """Raise a :class:`ConfigError` when ``n`` samples can never certify at ``alpha``."""
    need = min_samples(alpha)
    if n < need:
        raise ConfigError(
            f"{name}={n} samples can never give a certificate at alpha={alpha:g} (the Clopper-Pearson "
            f"bound stays below 1/2); use {name} >= {need}."
        )


def check_radii(radii: list[float], n: int, alpha: float, sigma: float) -> None:
    """Raise a :class:`ConfigError` for radii beyond what ``n`` samples can certify."""
    ceiling = max_radius(n, alpha, sigma)
    over = [r for r in radii if r > ceiling]
    if over:
        raise ConfigError(
            f"radius {max(over):g} lies beyond the largest radius n={n} samples can certify at "
            f"alpha={alpha:g}, sigma={sigma:g} (sigma * Phi^-1(alpha^(1/n)) = {ceiling:.4f}); use smaller "
            f"radii, a larger sigma or a larger n."
        )


def binomial_p_value(n_a: int, n_b: int) -> float:
    """Two-sided p-value of ``n_a`` successes in ``n_a + n_b`` trials at ``p = 1/2``
    (``scipy.stats.binomtest``); 1 when there are no trials."""
    if n_a + n_b == 0:
        return 1.0
    return float(stats.binomtest(int(n_a), int(n_a + n_b), 0.5).pvalue)


def accuracy_lower_bound(hits: int, total: int, *, alpha: float, gamma: float = 0.001) -> float:
    """A lower bound, holding with probability at least ``1 - gamma``, on the certified
    accuracy of the *distribution* from ``hits`` correct certificates among ``total``
    test points, each certificate wrong with probability at most ``alpha``.

    Two corrections, ``gamma/2`` each (union bound): (1) the number of wrong certificates
    is stochastically dominated by ``Binomial(total, alpha)`` (the certificates of
    different points use independent noise), so with probability ``1 - gamma/2`` at most
    ``q = Binomial(total, alpha).ppf(1 - gamma/2)`` of the hits are false; (2) the
    remaining ``hits - q`` true certificates of an i.i.d. test set lower-bound the
    population rate by the one-sided Clopper--Pearson bound at ``gamma/2``. Cohen et al.
    report the plain test-set fraction ("approximate certified accuracy"); this bound is
    the conservative version of it.
    """
    check_int(total, "total", minimum=1)
    q = int(stats.binom.ppf(1.0 - gamma / 2.0, total, alpha))
    true_hits = max(int(hits) - q, 0)
    return float(lower_confidence_bound(true_hits, total, gamma / 2.0))
