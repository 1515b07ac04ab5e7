"""Adversarial training and accuracy disparity on a class-imbalanced Gaussian mixture.

Reproduces the synthetic experiment of Hu, Wu, Zhang & Zhao (2023), "Understanding the
Impact of Adversarial Robustness on Accuracy Disparity" (ICML 2023, arXiv:2211.15762;
code github.com/Accuracy-Disparity/AT-on-AD): linear classifiers on a two-class Gaussian
mixture with class-imbalance ratio R, trained with standard training and with
adversarial training under L-inf and L2 budgets; per-class accuracy measured on
*balanced* test data. Claim checked: the accuracy gap between the majority and the
minority class grows with the adversarial budget eps and with R.

Setting (what we took from the official code, and what we chose)
-------------------------------------------------------------------
From the official ``train_syn.py`` / ``process_data.py``: d = 100 features, a linear model
(``nn.Linear(100, 2)`` + cross-entropy, which for two classes is logistic regression on
the logit difference), 1000 training samples of the majority class and 1000 / R of the
minority class for R in {1, 2, 5, 10}, a balanced test set, five seeds, L-inf budgets
{0.5, 0.75, 1.0} and L2 budgets {2.5, 3.75, 5.0}; adversarial examples by one signed /
normalised gradient step without clipping, which for a linear model *is* the exact worst
case, used here in closed form: the adversarial margin of ``(w, b)`` on ``(x, y)`` is
``y (w.x + b) - eps ||w||_*`` (dual norm: L1 for L-inf, L2 for L2).

Chosen here (the released data files are empty placeholders in the repository and the
mixture parameters are not in the code): class 0 (majority) ~ N(+mu 1, sigma^2 I),
class 1 (minority) ~ N(-mu 1, sigma^2 I) with mu = 1.25, sigma = 6.25 (Bayes accuracy of
the balanced problem Phi(mu sqrt(d) / sigma) = Phi(2) = 97.7%); equal variances.

Exact population quantities
----------------------------
For any linear classifier the per-class test accuracy on the *distribution* is exact:
``acc_0 = Phi((w.eta + b) / (sigma ||w||))``, ``acc_1 = Phi((w.eta - b) / (sigma ||w||))``
with ``eta = mu 1``; we report these (no test-sampling noise) next to the accuracy on a
sampled balanced test set of 10,000 + 10,000 points. For this mixture the minimiser of
the *population* adversarial logistic loss is known in closed form: shifting every point
by ``eps`` towards the boundary keeps the logistic model well specified with mean
``mu' = mu - eps`` (L-inf) or ``mu - eps / sqrt(d)`` (L2), so ``w = 2 mu' / sigma^2 * 1``,
``b = log R`` (prior log-odds), and the gap is
``Phi(a + delta) - Phi(a - delta)``, ``a = mu sqrt(d) / sigma``,
``delta = sigma log R / (2 mu' sqrt(d))``: it grows with R and with eps (mu' shrinks).
The "theory gap" column is this value.

Deviations from the official code: full-batch L-BFGS to the minimum of the empirical
(adversarial) loss instead of Adam for 500 epochs over a learning-rate grid with
validation-loss model selection; no validation split; the mixture parameters above.

Run (one thread, about a minute)::

    python benchmarks/disparity/gaussian_mixture.py            # table + results/gaussian_mixture.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from robustlab.evaluate.metrics import disparity

D = 100
MU = 1.25
SIGMA = 6.25
N_MAJORITY = 1000
RATIOS = (1, 2, 5, 10)
BUDGETS: dict[str, tuple[float, ...]] = {"linf": (0.5, 0.75, 1.0), "l2": (2.5, 3.75, 5.0)}
SEEDS = (2, 22, 42, 62, 82)
N_TEST = 10_000  # per class


def sample(
    n_per_class: tuple[int, int], mu: float, sigma: float, d: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_per_class[c]`` points of class ``c``: class 0 ~ N(+mu 1, sigma^2 I), class 1 ~
    N(-mu 1, sigma^2 I); float64, in a seeded random order."""
    n0, n1 = n_per_class
    y = torch.cat([torch.zeros(n0, dtype=torch.long), torch.ones(n1, dtype=torch.long)])
    sign = 1.0 - 2.0 * y.double()  # +1 for class 0, -1 for class 1
    x = sign[:, None] * mu + sigma * torch.randn(n0 + n1, d, generator=generator, dtype=torch.float64)
    perm = torch.randperm(n0 + n1, generator=generator)
    return x[perm], y[perm]


def dual_norm(w: torch.Tensor, norm: str) -> torch.Tensor:
    """``||w||_*`` for the threat ``norm``: L1 for ``"linf"``, L2 for ``"l2"``."""
    if norm == "linf":
        return w.abs().sum()
    if norm == "l2":
        return w.norm()
    raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")


def adversarial_margin(
    x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float, norm: str
) -> torch.Tensor:
    """Worst-case margin of the linear classifier ``sign(w.x + b)`` (class 0 positive) over
    perturbations of size ``eps``: ``s (w.x + b) - eps ||w||_*``, ``s = +1/-1`` for class 0/1."""
    s = 1.0 - 2.0 * y.to(x.dtype)
    margin = s * (x @ w + b)
    return margin - eps * dual_norm(w, norm) if eps > 0 else margin


def train_linear(
    x: torch.Tensor, y: torch.Tensor, eps: float = 0.0, norm: str = "linf", *, max_iter: int = 500
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise the mean logistic loss ``log(1 + exp(-margin))`` of the worst-case margin
    (adversarial training with the exact inner maximisation; ``eps = 0``: standard
    training) over ``(w, b)`` with full-batch L-BFGS from zero. Returns ``(w, b)``."""
    w = torch.zeros(x.shape[1], dtype=x.dtype, requires_grad=True)
    b = torch.zeros((), dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-10, tolerance_change=1e-14,
        history_size=20, line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.softplus(-adversarial_margin(x, y, w, b, eps, norm)).mean()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def _phi(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def population_accuracy(
    w: torch.Tensor, b: torch.Tensor, mu: float, sigma: float, eps: float = 0.0, norm: str = "linf"
) -> list[float]:
    """Exact per-class (robust, for ``eps > 0``) accuracy of ``sign(w.x + b)`` on the mixture:
    class 0 ``Phi((w.eta + b - eps ||w||_*) / (sigma ||w||))``, class 1 the same with ``-b``."""
    we = float(w.sum()) * mu
    scale = sigma * float(w.norm())
    pen = eps * float(dual_norm(w, norm)) if eps > 0 else 0.0
    return [_phi((we + float(b) - pen) / scale), _phi((we - float(b) - pen) / scale)]


def theory_gap(ratio: float, eps: float, norm: str, mu: float = MU, sigma: float = SIGMA, d: int = D) -> float:
    """Gap of the population minimiser of the adversarial logistic loss (module docstring)."""
    mu_eff = mu - (eps if norm == "linf" else eps / math.sqrt(d))
    if mu_eff <= 0:
        return float("nan")
    a = mu * math.sqrt(d) / sigma
    delta = sigma * math.log(ratio) / (2 * mu_eff * math.sqrt(d))
    return _phi(a + delta) - _phi(a - delta)


def run(seeds: tuple[int, ...] = SEEDS) -> list[dict[str, Any]]:
    """One row per (norm, eps, R, seed); eps = 0 rows (standard training) appear once per norm."""
    rows: list[dict[str, Any]] = []
    for ratio in RATIOS:
        for seed in seeds:
            g = torch.Generator().manual_seed(seed)
            x, y = sample((N_MAJORITY, N_MAJORITY // ratio), MU, SIGMA, D, g)
            xt, yt = sample((N_TEST, N_TEST), MU, SIGMA, D, torch.Generator().manual_seed(10_000 + seed))
            for norm, budgets in BUDGETS.items():
                for eps in (0.0, *budgets):
                    w, b = train_linear(x, y, eps, norm)
                    pred = (xt @ w + b < 0).long()
                    sampled = [float((pred[yt == c] == c).double().mean()) for c in (0, 1)]
                    exact = population_accuracy(w, b, MU, SIGMA)
                    robust = population_accuracy(w, b, MU, SIGMA, eps, norm)
                    rows.append({
                        "norm": norm, "eps": eps, "R": ratio, "seed": seed,
                        "per_class": exact, "per_class_sampled_test": sampled,
                        "robust_per_class": robust, **{k: v for k, v in disparity(exact).items()},
                        "w_mean": float(w.mean()), "b": float(b),
                    })
    return rows


def _mean(rows: list[dict[str, Any]], key: str, i: int) -> float:
    return sum(r[key][i] for r in rows) / len(rows)


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean (and standard error) over seeds per (norm, eps, R), plus the theory gap and the
    change of the gap relative to standard training ("diff" in the official analysis)."""
    keys = sorted({(r["norm"], r["eps"], r["R"]) for r in rows}, key=lambda k: (k[0] != "linf", k[2], k[1]))
    out = []
    for norm, eps, ratio in keys:
        sel = [r for r in rows if (r["norm"], r["eps"], r["R"]) == (norm, eps, ratio)]
        std = [r for r in rows if (r["norm"], r["eps"], r["R"]) == (norm, 0.0, ratio)]
        gaps = torch.tensor([r["gap"] for r in sel], dtype=torch.float64)
        diffs = torch.tensor([r["gap"] - s["gap"] for r, s in zip(sel, std, strict=True)], dtype=torch.float64)
        n = len(sel)
        out.append({
            "norm": norm, "eps": eps, "R": ratio, "seeds": n,
            "acc_majority": _mean(sel, "per_class", 0), "acc_minority": _mean(sel, "per_class", 1),
            "acc_majority_sampled": _mean(sel, "per_class_sampled_test", 0),
            "acc_minority_sampled": _mean(sel, "per_class_sampled_test", 1),
            "worst": sum(r["worst"] for r in sel) / n,
            "gap": float(gaps.mean()), "gap_se": float(gaps.std() / math.sqrt(n)) if n > 1 else 0.0,
            "diff_vs_standard": float(diffs.mean()),
            "theory_gap": theory_gap(ratio, eps, norm),
            "robust_minority": _mean(sel, "robust_per_class", 1),
        })
    return out


def check_claim(summary: list[dict[str, Any]]) -> dict[str, bool]:
    """The qualitative claim, on the seed means: for each norm, (a) the gap grows with eps at
    every R > 1, (b) the gap grows with R at every eps, (c) adversarial training widens the
    gap more the larger R (diff_vs_standard increasing in R at every eps > 0)."""
    res: dict[str, bool] = {}
    gap = {(s["norm"], s["eps"], s["R"]): s["gap"] for s in summary}
    diff = {(s["norm"], s["eps"], s["R"]): s["diff_vs_standard"] for s in summary}
    for norm, budgets in BUDGETS.items():
        eps_all = (0.0, *budgets)
        res[f"{norm}: gap grows with eps (R>1)"] = all(
            gap[(norm, e1, r)] < gap[(norm, e2, r)]
            for r in RATIOS[1:] for e1, e2 in zip(eps_all, eps_all[1:], strict=False)
        )
        res[f"{norm}: gap grows with R"] = all(
            gap[(norm, e, r1)] < gap[(norm, e, r2)]
            for e in eps_all for r1, r2 in zip(RATIOS, RATIOS[1:], strict=False)
        )
        res[f"{norm}: AT widens the gap more for larger R"] = all(
            diff[(norm, e, r1)] < diff[(norm, e, r2)]
            for e in budgets for r1, r2 in zip(RATIOS, RATIOS[1:], strict=False)
        )
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=len(SEEDS), help="how many of the five seeds")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gaussian_mixture.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    rows = run(SEEDS[: args.seeds])
    summary = summarise(rows)
    claim = check_claim(summary)
    elapsed = time.perf_counter() - t0

    print(f"d={D} mu={MU} sigma={SIGMA} n_majority={N_MAJORITY} seeds={args.seeds}; exact per-class "
          f"accuracy on the distribution (sampled balanced test set of {N_TEST}+{N_TEST} in brackets)")
    print(f"{'norm':5} {'eps':>5} {'R':>3} | {'acc maj':>15} {'acc min':>15} | {'gap':>13} {'theory':>6} "
          f"{'AT-std':>7} | {'rob min':>7}")
    for s in summary:
        print(
            f"{s['norm']:5} {s['eps']:5.2f} {s['R']:3d} | "
            f"{s['acc_majority']:.3f} ({s['acc_majority_sampled']:.3f}) {s['acc_minority']:.3f} "
            f"({s['acc_minority_sampled']:.3f}) | {s['gap']:.3f}±{s['gap_se']:.3f} {s['theory_gap']:6.3f} "
            f"{s['diff_vs_standard']:+7.3f} | {s['robust_minority']:7.3f}"
        )
    for k, v in claim.items():
        print(f"claim {k}: {'REPRODUCED' if v else 'NOT reproduced'}")
    print(f"{elapsed:.1f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "setting": {"d": D, "mu": MU, "sigma": SIGMA, "n_majority": N_MAJORITY, "ratios": RATIOS,
                    "budgets": BUDGETS, "seeds": SEEDS[: args.seeds], "n_test_per_class": N_TEST,
                    "torch": torch.__version__, "threads": torch.get_num_threads()},
        "claim": claim, "summary": summary, "rows": rows, "seconds": elapsed,
    }
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
