"""Randomized smoothing: certified L2 robustness with high probability.

Cohen, Rosenfeld & Kolter (2019), "Certified Adversarial Robustness via Randomized
Smoothing" (ICML). The smoothed classifier ``g(x) = argmax_c P(f(x + e) = c)``, ``e ~
N(0, sigma^2 I)``, is constant on the L2 ball of radius ``sigma * Phi^-1(p_A)`` around
``x`` when its top class has probability at least ``p_A > 1/2`` (Theorem 1).
:class:`Smooth` implements the paper's Monte Carlo algorithms PREDICT and CERTIFY
(Sec. 3.2, "Pseudocode for certification and prediction"); the statistics live in
:mod:`robustlab.certify.stats`.

>>> smooth = Smooth(model, num_classes=10, sigma=0.25)
>>> pred, radius = smooth.certify(x, n0=100, n=100_000, alpha=0.001, generator=torch.Generator().manual_seed(0))
>>> result = certify_dataset(model, x, y, sigma=0.25, n=10_000)
>>> result.certified_accuracy(0.5), result.write_tsv("certify.tsv")

Differences from the reference code (``locuslab/smoothing``), each deliberate:

- **input space**: noise is added to robustlab's ``[0, 1]`` inputs and normalisation is a
  layer inside the model, so radii are in pixel space (the reference placed the
  normalisation layer first, as robustlab does; several derived checkpoints did not);
- **many images at once**: the noisy copies of several images share forward batches,
  each image keeps its own counts (the reference certifies one image at a time);
- **noise streams**: image ``i``'s noise is drawn in blocks of :data:`NOISE_BLOCK`
  samples, block ``j`` of stream ``s`` from a generator seeded with ``derive_seed(seed_i,
  s, j)``, so an image's counts do not depend on the batch size or on which other images
  share its batches, the selection (``n0``) and estimation (``n``) samples are
  independent streams, and a dataset's certificates are a function of (seed, point
  index) alone (the reference used the global RNG);
- **the binomial test** uses ``scipy.stats.binomtest`` (``binom_test`` was removed from
  SciPy); the Clopper--Pearson bound is ``Beta.ppf(alpha, k, n - k + 1)``, the same
  number as the reference's ``proportion_confint(k, n, alpha=2*alpha, method="beta")``;
- the noisy input is not clipped to ``[0, 1]`` (as in the reference: Theorem 1 is about
  Gaussian noise, which clipping would change).
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from robustlab.attacks.engine import eval_mode, model_device
from robustlab.certify import stats
from robustlab.errors import ConfigError, InvalidInputError
from robustlab.progress import Progress
from robustlab.seeding import derive_seed
from robustlab.validation import check_inputs, check_int, check_labels

#: samples per noise block: the unit in which an image's noise is drawn and seeded
NOISE_BLOCK = 256
#: the prediction of an abstaining smoothed classifier
ABSTAIN = -1


def _device(model: nn.Module, x: torch.Tensor) -> torch.device:
    return model_device(model) or x.device


def auto_batch_size(model: nn.Module, x: torch.Tensor, *, cpu: int = 1024, most: int = 65536) -> int:
    """Noisy copies per forward pass: ``cpu`` on a CPU; on CUDA, enough copies to fill
    about half the free memory, measured from one no-grad forward pass of
    :data:`NOISE_BLOCK` copies, in whole noise blocks, at most ``most``."""
    dev = _device(model, x)
    if dev.type != "cuda":
        return cpu
    probe = x[:1].to(dev).expand(NOISE_BLOCK, *x.shape[1:]).contiguous()
    torch.cuda.synchronize(dev)
    free, _ = torch.cuda.mem_get_info(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    base = torch.cuda.memory_allocated(dev)
    with torch.no_grad(), eval_mode(model):
        model(probe)
    per_copy = max(torch.cuda.max_memory_allocated(dev) - base, 1) / NOISE_BLOCK + 2 * probe[0].numel() * 4
    blocks = int(0.5 * free / per_copy) // NOISE_BLOCK
    return max(NOISE_BLOCK, min(most, blocks * NOISE_BLOCK))


def check_deterministic(model: nn.Module, x: torch.Tensor) -> None:
    """Refuse a base classifier whose eval-mode outputs are random (dropout left on,
    noise layers): the certificate is about a fixed ``f``, so its randomness would
    void it. Uses the audit's ``randomized`` check on up to 4 points."""
    from robustlab.attacks.audit import check_randomized

    with eval_mode(model):
        flags = [f for f in check_randomized(model, x[:4]) if f.code == "randomized"]
    if flags:
        raise ConfigError(
            "the base classifier's outputs change between identical forward passes in eval mode; "
            "randomized smoothing certifies a deterministic base model: remove its randomness "
            "(dropout, noise layers) in eval mode."
        )


def image_seeds(count: int, *, generator: torch.Generator | None = None, seed: int | None = None,
                indices: Sequence[int] | torch.Tensor | None = None) -> list[int]:
    """One 63-bit noise seed per image: drawn in order from ``generator``, or derived
    from ``(seed, index)`` (``indices`` default ``range(count)``), so a point keeps its
    noise whichever other points are certified with it."""
    if generator is not None:
        if seed is not None:
            raise ConfigError("give either a generator or a seed, not both.")
        draws = torch.randint(0, 2**62, (count,), generator=generator, device=generator.device)
        return [int(v) for v in draws.cpu()]
    base = 0 if seed is None else check_int(seed, "seed")
    idx = range(count) if indices is None else [int(i) for i in indices]
    if len(idx) != count:
        raise InvalidInputError(f"indices has {len(idx)} entries for {count} images; they must match.")
    return [derive_seed("smoothing", base, i) for i in idx]


def sample_counts(
    model: nn.Module,
    x: torch.Tensor,
    *,
    sigma: float,
    n: int,
    num_classes: int,
    seeds: Sequence[int],
    stream: str,
    batch_size: int = 512,
    progress: Progress | None = None,
) -> torch.Tensor:
    """``counts[i, c]``: how many of ``n`` noisy copies ``x[i] + N(0, sigma^2 I)`` the
    base classifier ``model`` labels ``c`` (an ``(len(x), num_classes)`` int64 tensor on
    CPU).

    The model must already be in the mode to count in (see :func:`eval_mode`). Copies of
    several images share forward batches of ``batch_size``; image ``i``'s noise is block
    ``j`` of ``stream``, seeded by ``derive_seed(seeds[i], stream, j)`` (see the module
    docstring), so the counts depend on ``(seeds[i], stream, n)`` and the model only.
    ``progress`` advances by one per image when its last copy has been counted.
    """
    dev = _device(model, x)
    shape = tuple(x.shape[1:])
    counts = torch.zeros(len(x) * num_classes, dtype=torch.int64, device=dev)
    g = torch.Generator(device=dev)
    buf = torch.empty((batch_size, *shape), dtype=x.dtype, device=dev)
    owner = torch.empty(batch_size, dtype=torch.int64, device=dev)
    fill = 0
    finished = 0  # images whose last copy is in the current batch

    def flush() -> None:
        nonlocal fill, finished
        if fill == 0:
            return
        pred = model(buf[:fill]).argmax(1)
        if int(pred.max()) >= num_classes:
            raise InvalidInputError(
                f"the model returns more than num_classes={num_classes} outputs; pass the model's class count."
            )
        counts.index_add_(0, owner[:fill] * num_classes + pred, torch.ones_like(pred))
        if progress is not None and finished:
            progress.advance(finished)
        finished = 0
        fill = 0

    with torch.no_grad():
        for i in range(len(x)):
            xi = x[i].to(dev)
            for j, start in enumerate(range(0, n, NOISE_BLOCK)):
                size = min(NOISE_BLOCK, n - start)
                g.manual_seed(derive_seed(seeds[i], stream, j))
                if fill + size <= batch_size:  # the whole block fits: draw it in place
                    block = buf[fill : fill + size]
                    torch.randn((size, *shape), generator=g, out=block)
                    block.mul_(sigma).add_(xi)
                    owner[fill : fill + size] = i
                    fill += size
                    if fill == batch_size:
                        flush()
                    continue
                noise = torch.randn((size, *shape), generator=g, device=dev, dtype=x.dtype)
                noise.mul_(sigma).add_(xi)
                done = 0
                while done < size:
                    take = min(size - done, batch_size - fill)
                    buf[fill : fill + take] = noise[done : done + take]
                    owner[fill : fill + take] = i
                    fill += take
                    done += take
                    if fill == batch_size:
                        flush()
            finished += 1
        flush()
    return counts.view(len(x), num_classes).cpu()


@dataclass
class Certificates:
    """CERTIFY's output for a batch: ``predict`` (class, or -1 to abstain), ``radius``
    (0 when abstaining), ``p_lower`` (the Clopper--Pearson bound on ``p_A``) and
    ``count`` (``n_A``: estimation samples on the predicted class)."""

    predict: torch.Tensor
    radius: torch.Tensor
    p_lower: torch.Tensor
    count: torch.Tensor

    def __iter__(self) -> Iterator[torch.Tensor]:  # ``pred, radius = smooth.certify(...)``
        return iter((self.predict, self.radius))


class Smooth:
    """The smoothed classifier of ``model`` at noise level ``sigma`` (Cohen et al. 2019).

    ``model`` is the base classifier on ``[0, 1]`` inputs (normalisation inside it);
    ``num_classes`` its number of outputs. The model is put in eval mode for every call and
    each module's mode is restored afterwards; a model whose eval-mode outputs are random
    is refused. Randomness comes from ``generator`` (one noise seed per image, drawn in
    order) or ``seed`` (per image ``derive_seed("smoothing", seed, i)``), never from the
    global RNG.
    """

    def __init__(self, model: nn.Module, num_classes: int, sigma: float) -> None:
        self.model = model
        self.num_classes = check_int(num_classes, "num_classes", minimum=2)
        self.sigma = stats.check_sigma(sigma)

    def get_params(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes, "sigma": self.sigma}

    def _prepare(self, x: torch.Tensor, batch_size: int | str) -> int:
        if not isinstance(x, torch.Tensor) or x.dim() < 2 or len(x) == 0:
            raise InvalidInputError("x must be a non-empty batch of inputs in [0, 1], shape (N, ...).")
        check_inputs(x, bounds=getattr(self.model, "input_bounds", (0.0, 1.0)))
        if batch_size == "auto":
            return auto_batch_size(self.model, x)
        if isinstance(batch_size, str):
            raise ConfigError(f"batch_size must be a positive integer or 'auto', got {batch_size!r}.")
        return check_int(batch_size, "batch_size", minimum=1)

    def counts(self, x: torch.Tensor, n: int, *, stream: str = "estimate", batch_size: int | str = "auto",
               generator: torch.Generator | None = None, seed: int | None = None,
               seeds: Sequence[int] | None = None, progress: Progress | None = None) -> torch.Tensor:
        """Class counts of ``n`` noisy copies of each image (``(N, num_classes)``)."""
        bs = self._prepare(x, batch_size)
        n = check_int(n, "n", minimum=1)
        if seeds is None:
            seeds = image_seeds(len(x), generator=generator, seed=seed)
        with eval_mode(self.model):
            check_deterministic(self.model, x.to(_device(self.model, x)))
            return sample_counts(self.model, x, sigma=self.sigma, n=n, num_classes=self.num_classes,
                                 seeds=seeds, stream=stream, batch_size=bs, progress=progress)

    def predict(self, x: torch.Tensor, n: int = 100_000, alpha: float = 0.001, *, batch_size: int | str = "auto",
                generator: torch.Generator | None = None, seed: int | None = None) -> torch.Tensor:
        """PREDICT: the top class of ``n`` noisy copies when the two-sided binomial test of
        its count ``n_A`` against the runner-up's ``n_B`` (``p = 1/2``) has p-value at most
        ``alpha``, else :data:`ABSTAIN`. The returned class differs from ``g(x)`` with
        probability at most ``alpha`` (the paper's Proposition 1)."""
        alpha = stats.check_alpha(alpha)
        counts = self.counts(x, n, stream="predict", batch_size=batch_size, generator=generator, seed=seed)
        top = counts.topk(2, dim=1)
        out = torch.full((len(x),), ABSTAIN, dtype=torch.int64)
        for i in range(len(x)):
            n_a, n_b = int(top.values[i, 0]), int(top.values[i, 1])
            if stats.binomial_p_value(n_a, n_b) <= alpha:
                out[i] = int(top.indices[i, 0])
        return out

    def certify(self, x: torch.Tensor, n0: int = 100, n: int = 100_000, alpha: float = 0.001, *,
                batch_size: int | str = "auto", generator: torch.Generator | None = None,
                seed: int | None = None, seeds: Sequence[int] | None = None,
                progress: Progress | None = None) -> Certificates:
        """CERTIFY: the class ``c_A`` most frequent among ``n0`` selection copies, then
        ``n_A`` = its count among ``n`` new, independent copies, ``p_A`` = the one-sided
        Clopper--Pearson lower bound at ``alpha``, and the radius ``sigma * Phi^-1(p_A)``;
        abstain (class -1, radius 0) when ``p_A < 1/2``. Each returned certificate is wrong
        with probability at most ``alpha``. ``pred, radius = smooth.certify(x)`` unpacks."""
        alpha = stats.check_alpha(alpha)
        n0 = check_int(n0, "n0", minimum=1)
        n = check_int(n, "n", minimum=1)
        stats.check_budget(n, alpha)
        if seeds is None:
            seeds = image_seeds(len(x), generator=generator, seed=seed)
        sel = self.counts(x, n0, stream="select", batch_size=batch_size, seeds=seeds)
        c_a = sel.argmax(1)
        est = self.counts(x, n, stream="estimate", batch_size=batch_size, seeds=seeds, progress=progress)
        n_a = est.gather(1, c_a[:, None]).squeeze(1)
        p_lower = torch.from_numpy(stats.lower_confidence_bound(n_a.numpy(), n, alpha))
        certified = p_lower >= 0.5
        rad = torch.from_numpy(stats.radius(p_lower.numpy(), self.sigma))
        return Certificates(
            predict=torch.where(certified, c_a, torch.full_like(c_a, ABSTAIN)),
            radius=torch.where(certified, rad, torch.zeros_like(rad)),
            p_lower=p_lower,
            count=n_a,
        )


@dataclass
class CertificationResult:
    """Per-point certificates of a dataset: the reference's TSV columns ``idx label
    predict radius correct time`` as arrays (``seconds``: each point's share of the
    wall-clock time of the batch it was certified in), plus the settings."""

    index: np.ndarray
    label: np.ndarray
    predict: np.ndarray
    radius: np.ndarray
    correct: np.ndarray
    seconds: np.ndarray
    sigma: float
    n0: int
    n: int
    alpha: float

    def __len__(self) -> int:
        return len(self.label)

    def certified(self, r: float) -> np.ndarray:
        """Per point: certified correct at radius ``r`` (correct and ``radius >= r``;
        abstentions are wrong)."""
        return self.correct & (self.radius >= r)

    def certified_accuracy(self, r: float = 0.0) -> float:
        """The approximate certified test-set accuracy at radius ``r`` (Cohen et al. Sec. 4):
        the fraction of points certified correct at ``r``."""
        return float(self.certified(r).mean()) if len(self) else float("nan")

    def certified_accuracy_lower(self, r: float = 0.0, *, gamma: float = 0.001) -> float:
        """A lower bound on the population's certified accuracy at ``r`` that holds with
        probability ``1 - gamma`` over the certificates' noise and an i.i.d. test set
        (:func:`robustlab.certify.stats.accuracy_lower_bound`)."""
        return stats.accuracy_lower_bound(int(self.certified(r).sum()), len(self), alpha=self.alpha, gamma=gamma)

    def curve(self, radii: Sequence[float]) -> list[tuple[float, float]]:
        """``(r, certified accuracy at r)`` for each radius."""
        return [(float(r), self.certified_accuracy(r)) for r in radii]

    def write_tsv(self, path: str | Path) -> Path:
        """Write the reference's TSV (``idx label predict radius correct time``), atomically."""
        from robustlab._atomic import atomic_path

        out = Path(path)
        with atomic_path(out) as tmp, open(tmp, "w", newline="") as fh:
            w = csv.writer(fh, delimiter="\t", lineterminator="\n")
            w.writerow(["idx", "label", "predict", "radius", "correct", "time"])
            for row in zip(self.index, self.label, self.predict, self.radius, self.correct, self.seconds,
                           strict=True):
                w.writerow([int(row[0]), int(row[1]), int(row[2]), f"{float(row[3]):.6f}", int(row[4]),
                            f"{float(row[5]):.6f}"])
        return out

    @staticmethod
    def read_tsv(path: str | Path, *, sigma: float, n0: int, n: int, alpha: float) -> CertificationResult:
        """Read a TSV written by :meth:`write_tsv` (or by the reference's ``certify.py``)."""
        try:
            with open(path, newline="") as fh:
                rows = list(csv.DictReader(fh, delimiter="\t"))
        except OSError as exc:
            raise InvalidInputError(f"cannot read {path}: {exc.strerror}; check the path.") from exc
        try:
            return CertificationResult(
                index=np.array([int(r["idx"]) for r in rows], dtype=np.int64),
                label=np.array([int(r["label"]) for r in rows], dtype=np.int64),
                predict=np.array([int(r["predict"]) for r in rows], dtype=np.int64),
                radius=np.array([float(r["radius"]) for r in rows], dtype=np.float64),
                correct=np.array([bool(int(r["correct"])) for r in rows], dtype=bool),
                seconds=np.array([_seconds(r["time"]) for r in rows], dtype=np.float64),
                sigma=sigma, n0=n0, n=n, alpha=alpha,
            )
        except (KeyError, ValueError) as exc:
            raise InvalidInputError(
                f"{path} is not a certification TSV (columns idx label predict radius correct time): {exc}."
            ) from exc


def _seconds(text: str) -> float:
    """The reference writes ``time`` as ``H:MM:SS.ffffff`` (a timedelta); robustlab as seconds."""
    if ":" in text:
        h, m, s = text.split(":")
        return int(h) * 3600 + int(m) * 60 + float(s)
    return float(text)


def certify_dataset(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    sigma: float,
    *,
    num_classes: int | None = None,
    n0: int = 100,
    n: int = 100_000,
    alpha: float = 0.001,
    batch_size: int | str = "auto",
    seed: int = 0,
    indices: Sequence[int] | torch.Tensor | None = None,
    progress: bool | Progress | None = None,
) -> CertificationResult:
    """Certify every point of ``(x, y)`` with :meth:`Smooth.certify` (defaults ``n0=100,
    n=100_000, alpha=0.001``, as the paper's experiments).

    Point ``k``'s noise derives from ``(seed, indices[k])`` (``indices`` default
    ``range(len(x))``: pass the points' indices in the full split when certifying a
    subset, so a point gets the same certificate in every subset). Points are certified
    a few at a time so that their noisy copies fill whole batches; ``seconds`` is each
    point's share of its group's time. ``progress``: a bar on a terminal (None: when
    stderr is one), or a :class:`~robustlab.progress.Progress` to advance (per point).
    """
    if not isinstance(y, torch.Tensor) or len(y) != len(x):
        raise InvalidInputError("y must be a tensor of labels with one label per input.")
    k = num_classes or getattr(model, "num_classes", None)
    if k is None:
        raise ConfigError("pass num_classes= (the model has no num_classes attribute).")
    smooth = Smooth(model, int(k), sigma)
    check_labels(y, smooth.num_classes, n=len(x))
    stats.check_alpha(alpha)
    check_int(n0, "n0", minimum=1)
    check_int(n, "n", minimum=1)
    stats.check_budget(n, alpha)
    seeds = image_seeds(len(x), seed=seed, indices=indices)
    bs = smooth._prepare(x, batch_size)
    group = max(1, min(len(x), math.ceil(8 * bs / n)))
    preds, radii, secs = [], [], []
    with ExitStack() as stack:
        if isinstance(progress, Progress):
            bar = progress
        else:
            bar = stack.enter_context(Progress("certifying", total=len(x), show=progress, unit="pt"))
        next_note = 0.1
        for s in range(0, len(x), group):
            t0 = time.perf_counter()
            cert = smooth.certify(x[s : s + group], n0, n, alpha, batch_size=bs, seeds=seeds[s : s + group],
                                  progress=bar)
            dt = (time.perf_counter() - t0) / len(cert.predict)
            preds.append(cert.predict)
            radii.append(cert.radius)
            secs.extend([dt] * len(cert.predict))
            done = s + len(cert.predict)
            if done >= next_note * len(x) and done < len(x):
                bar.note(f"certified {done}/{len(x)} points (sigma={smooth.sigma:g}, n={n})")
                next_note = math.floor(10 * done / len(x)) / 10 + 0.1
    pred = torch.cat(preds).numpy()
    label = y.detach().cpu().long().numpy()
    return CertificationResult(
        index=np.arange(len(x)) if indices is None else np.asarray(indices, dtype=np.int64),
        label=label,
        predict=pred,
        radius=torch.cat(radii).numpy().astype(np.float64),
        correct=pred == label,
        seconds=np.asarray(secs, dtype=np.float64),
        sigma=smooth.sigma, n0=n0, n=n, alpha=alpha,
    )
