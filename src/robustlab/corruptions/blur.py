"""Blur corruptions (defocus, glass, motion, zoom; gaussian as an extra) and the kernel
helpers other corruption modules share.

Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
Perturbations" (ICLR 2019), Sec. 3 and Fig. 1; the definitions and constants are those of
the CIFAR-10-C generator, ``ImageNet-C/create_c/make_cifar_c.py`` in
github.com/hendrycks/robustness (functions of the same names). The paper has no equations
for the corruptions; each docstring below writes the operation out.

**Tables.** The 32x32 tables are that file's constants, verbatim. Note that its motion
blur table is ``(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)`` (the ImageNet-C table
``(10, 3), (15, 5), ...`` is not the CIFAR one), and that its zoom factors come from
``np.arange(1, stop, 0.01)`` with stops 1.06, 1.11, 1.16, 1.21, 1.26, which by floating
point gives 7, 12, 16, 21 and 26 factors (the first two include their stop); we keep
exactly those factors.

**Other image sides (one rule).** For 28x28 (MNIST-like) and 8x8 (sklearn digits) images
every *length in pixels* is multiplied by ``side / 32`` (rounded to 6 decimals, to drop float noise): blur
sigmas, the defocus disk radius and its anti-alias sigma, the motion blur radius and
sigma, and glass blur's ``max_delta`` (rounded to a whole pixel, at least 1). Counts
(glass blur's iterations) and zoom factors (ratios) are kept. Lengths that shrink below
what the discrete kernels resolve make the corruption weaker, and sometimes not monotone
in severity: at 28x28 defocus severity 4 has radius 0.875 < 1, so its disk is the single
centre pixel and the corruption is nearly the identity, weaker than severity 3; at 8x8
every defocus disk is a single pixel with anti-alias sigma <= 0.15, so defocus blur is
the identity there up to ~1e-10. Also at 8x8: gaussian blur's sigmas .1-.25 leave severities
1-4 within 1e-6 of the identity (severity 5: ~6e-5 mean change), and zoom blur's severity 1
is the identity (every crop of ``ceil(8 / z)`` pixels is the whole image). Pass ``params=`` to :func:`~robustlab.corruptions.corrupt`
for other settings.

**Deviations from the reference, common to all:** we work in float throughout; the
reference round-trips through ``uint8`` (glass blur truncates to ``uint8`` between its
two blurs, motion blur goes through PNG, and every output is saved as ``uint8``). The
per-corruption deviations are in each docstring.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from robustlab.corruptions.base import rand, randint, register_corruption
from robustlab.errors import ConfigError

PadMode = Literal["reflect", "edge"]

#: the image side the published tables are for
REFERENCE_SIDE = 32


def generator_or_default(generator: torch.Generator | None) -> torch.Generator:
    """``generator``, or a CPU generator seeded with 0 (what :func:`~robustlab.corruptions.corrupt`
    passes when it is given none), for corruption functions called directly."""
    return generator if generator is not None else torch.Generator().manual_seed(0)


def scale_length(value: float, side: int) -> float:
    """A length in pixels of the 32x32 tables, scaled to images of ``side`` pixels (rounded
    to 6 decimals): the rule of this module's docstring."""
    return round(float(value) * side / REFERENCE_SIDE, 6)


# -- padding and filtering ---------------------------------------------------------------------
def _pad_index(n: int, pad: int, mode: PadMode, device: torch.device) -> torch.Tensor:
    i = torch.arange(-pad, n + pad, device=device)
    if mode == "edge" or n == 1:
        return i.clamp(0, n - 1)
    period = 2 * (n - 1)
    i = i.remainder(period)
    return torch.where(i >= n, period - i, i)


def pad2d(x: torch.Tensor, pad_h: int, pad_w: int, mode: PadMode = "reflect") -> torch.Tensor:
    """Pad the last two dims of ``x`` by ``pad_h`` rows and ``pad_w`` columns on each side.

    ``mode="reflect"`` mirrors without repeating the edge pixel (OpenCV's
    ``BORDER_REFLECT_101``, scipy's ``"mirror"``, torch's ``"reflect"``); ``mode="edge"``
    repeats the edge pixel (scipy's ``"nearest"``, ImageMagick's default edge virtual
    pixels). Unlike ``F.pad`` this works for pads larger than the image (the reflection
    repeats periodically).
    """
    if mode not in ("reflect", "edge"):
        raise ConfigError(f"padding mode must be 'reflect' or 'edge', got {mode!r}.")
    h, w = x.shape[-2], x.shape[-1]
    if pad_h:
        x = x.index_select(-2, _pad_index(h, pad_h, mode, x.device))
    if pad_w:
        x = x.index_select(-1, _pad_index(w, pad_w, mode, x.device))
    return x


def filter2d(x: torch.Tensor, kernel: torch.Tensor, mode: PadMode = "reflect") -> torch.Tensor:
    """Correlate every channel of ``x`` (``(N, C, H, W)``) with the 2-D ``kernel`` (odd
    sizes, anchored at its centre), padding with ``mode``: OpenCV's ``filter2D`` with its
    default border when ``mode="reflect"``. Output has the shape of ``x``."""
    kh, kw = kernel.shape
    if kh % 2 == 0 or kw % 2 == 0:
        raise ConfigError(f"filter2d needs an odd-sized kernel, got {kh}x{kw}.")
    n, c, h, w = x.shape
    xp = pad2d(x.reshape(n * c, 1, h, w), kh // 2, kw // 2, mode)
    k = kernel.to(device=x.device, dtype=x.dtype)[None, None]
    return F.conv2d(xp, k).reshape(n, c, h, w)


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """scipy's (and so skimage's) discrete Gaussian: weights ``exp(-i^2 / (2 sigma^2))``
    for ``|i| <= int(truncate * sigma + 0.5)``, normalised to sum 1 (float64, CPU).
    ``sigma <= 0`` gives the identity kernel ``[1]``."""
    if sigma <= 0:
        return torch.ones(1, dtype=torch.float64)
    radius = int(truncate * float(sigma) + 0.5)
    i = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (i / float(sigma)) ** 2)
    return k / k.sum()


def gaussian_filter(
    x: torch.Tensor, sigma: float, *, truncate: float = 4.0, mode: PadMode = "edge",
) -> torch.Tensor:
    """Separable Gaussian blur of every channel of ``x`` (``(N, C, H, W)``), channels kept
    apart: ``skimage.filters.gaussian(x, sigma, multichannel=True)`` with its defaults
    (``mode="nearest"`` = ``"edge"`` here, ``truncate=4``), i.e.
    ``scipy.ndimage.gaussian_filter`` with sigma 0 on the channel axis."""
    k = gaussian_kernel1d(sigma, truncate)
    if len(k) == 1:
        return x.clone()
    y = _correlate1d(x, k, -2, mode)
    return _correlate1d(y, k, -1, mode)


def _correlate1d(x: torch.Tensor, k: torch.Tensor, dim: int, mode: PadMode) -> torch.Tensor:
    # sum of shifted slices: faster than a 1-channel conv2d on CPU for the short kernels here
    r = len(k) // 2
    n = x.shape[dim]
    xp = pad2d(x, r, 0, mode) if dim == -2 else pad2d(x, 0, r, mode)
    w = k.tolist()
    out = xp.narrow(dim, 0, n) * w[0]
    for i in range(1, len(w)):
        out = out.add(xp.narrow(dim, i, n), alpha=w[i])
    return out


def _cv2_gaussian1d(ksize: int, sigma: float) -> torch.Tensor:
    # OpenCV's getGaussianKernel for sigma > 0: exp(-(i - (ksize-1)/2)^2 / (2 sigma^2)), normalised
    i = torch.arange(ksize, dtype=torch.float64) - (ksize - 1) / 2
    k = torch.exp(-(i**2) / (2 * float(sigma) ** 2))
    return k / k.sum()


def disk_kernel(radius: float, alias_blur: float = 0.1) -> torch.Tensor:
    """The defocus kernel of ``make_cifar_c.py``'s ``disk``: the pixels with
    ``x^2 + y^2 <= radius^2`` (equal weights summing to 1), blurred by OpenCV's
    ``GaussianBlur`` with a 3x3 window (5x5 for ``radius > 8``) and sigma ``alias_blur``
    to anti-alias it. Returned cropped to its non-zero support (float64, CPU, odd square).

    The reference draws the disk on a 17x17 canvas for ``radius <= 8`` and on
    ``np.arange(-radius, radius + 1)`` otherwise; we draw it on the integer grid
    ``-ceil(radius)..ceil(radius)`` plus the blur's margin, which is the same kernel
    except (a) at ``radius >= 8`` where the reference's 17x17 canvas edge reflects some
    anti-alias mass back, and (b) non-integer radii above 8, where the reference's grid is
    off the pixel lattice. No table reaches either case.
    """
    if radius < 0 or alias_blur < 0:
        raise ConfigError(f"disk radius and alias blur must be >= 0, got {radius}, {alias_blur}.")
    ksize = 3 if radius <= 8 else 5
    half = int(math.ceil(radius)) + ksize // 2
    grid = torch.arange(-half, half + 1, dtype=torch.float64)
    yy, xx = torch.meshgrid(grid, grid, indexing="ij")
    disk = ((xx**2 + yy**2) <= float(radius) ** 2).to(torch.float64)
    disk = disk / disk.sum()
    if alias_blur > 0:
        g = _cv2_gaussian1d(ksize, alias_blur)
        g2 = torch.outer(g, g)[None, None]
        disk = F.conv2d(disk[None, None], g2, padding=ksize // 2)[0, 0]
    # crop to the smallest centred square holding every non-zero weight
    nz = torch.nonzero(disk > 0)
    r = int((nz - half).abs().max()) if len(nz) else 0
    return disk[half - r: half + r + 1, half - r: half + r + 1].contiguous()


# -- motion (ImageMagick's MotionBlurImage) ---------------------------------------------------
def motion_kernel(radius: float, sigma: float) -> torch.Tensor:
    """ImageMagick's motion blur weights (``GetMotionBlurKernel``): ``width =
    2 ceil(radius) + 1`` taps ``exp(-i^2 / (2 sigma^2))``, ``i = 0..width-1``, normalised
    (a one-sided half Gaussian; float64, CPU)."""
    if radius <= 0 or sigma <= 0:
        raise ConfigError(f"motion blur radius and sigma must be > 0, got {radius}, {sigma}.")
    width = int(2 * math.ceil(radius) + 1)
    i = torch.arange(width, dtype=torch.float64)
    k = torch.exp(-(i**2) / (2 * float(sigma) ** 2))
    return k / k.sum()


def line_blur(x: torch.Tensor, radius: float, sigma: float, angles: torch.Tensor) -> torch.Tensor:
    """ImageMagick's ``MotionBlurImage(radius, sigma, angle)`` on every image of ``x``
    (``(N, C, H, W)``), one angle in degrees per image (``angles``, shape ``(N,)``).

    Output pixel ``(row, col)`` is ``sum_i k_i x[row + dy_i, col + dx_i]`` with ``k`` from
    :func:`motion_kernel`, ``dx_i = ceil(i cos(angle) - 1/2)``,
    ``dy_i = ceil(i sin(angle) - 1/2)`` (ImageMagick's offset table) and edge pixels
    repeated outside the image (its default virtual-pixel method). This is ImageMagick's
    computation, not an approximation of it, except that it runs in float rather than on
    8-bit quanta (the reference also round-trips the image through PNG).
    """
    n, c, h, w = x.shape
    k = motion_kernel(radius, sigma)
    theta = torch.deg2rad(angles.detach().to("cpu", torch.float64)).view(n, 1)
    i = torch.arange(len(k), dtype=torch.float64).view(1, -1)
    dx = torch.ceil(i * torch.cos(theta) - 0.5).long().to(x.device)  # (N, taps)
    dy = torch.ceil(i * torch.sin(theta) - 0.5).long().to(x.device)
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    bn = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    bc = torch.arange(c, device=x.device).view(1, c, 1, 1)
    out = torch.zeros_like(x)
    for t in range(len(k)):
        r = (rows.view(1, h) + dy[:, t: t + 1]).clamp(0, h - 1).view(n, 1, h, 1)
        q = (cols.view(1, w) + dx[:, t: t + 1]).clamp(0, w - 1).view(n, 1, 1, w)
        out = out + float(k[t]) * x[bn, bc, r, q]
    return out


# -- zoom (scipy.ndimage.zoom, order 1, on a centred crop) ------------------------------------
@functools.lru_cache(maxsize=256)
def _zoom_matrix_np(n: int, zoom: float) -> np.ndarray:
    ch = int(math.ceil(n / zoom))
    top = (n - ch) // 2
    out_len = int(round(ch * zoom))
    trim = (out_len - n) // 2
    step = (ch - 1) / (out_len - 1) if out_len > 1 else 0.0
    m = np.zeros((n, n), dtype=np.float64)
    for j in range(n):
        cc = min((j + trim) * step, ch - 1)
        i0 = int(math.floor(cc))
        t = cc - i0
        m[j, top + i0] += 1.0 - t
        if t > 0:
            m[j, top + i0 + 1] += t
    return m


def zoom_matrix(n: int, zoom: float) -> torch.Tensor:
    """The ``(n, n)`` matrix ``M`` with ``M @ v`` = ``make_cifar_c.py``'s ``clipped_zoom``
    along one axis of length ``n``: crop the centred ``ceil(n / zoom)`` pixels (starting
    at ``(n - crop) // 2``), resample them linearly to ``round(crop * zoom)`` pixels as
    ``scipy.ndimage.zoom(order=1)`` does (end points aligned), keep the centred ``n``
    (float64, CPU). ``zoom >= 1``."""
    if not zoom >= 1:
        raise ConfigError(f"zoom factors must be >= 1 (the crop would exceed the image), got {zoom}.")
    return torch.from_numpy(_zoom_matrix_np(int(n), float(zoom)))


def clipped_zoom(x: torch.Tensor, zoom: float) -> torch.Tensor:
    """``make_cifar_c.py``'s ``clipped_zoom`` on every channel of ``x`` (``(N, C, H, W)``):
    zoom into the centre by ``zoom`` (>= 1), bilinear, same output size."""
    mh = zoom_matrix(x.shape[-2], zoom).to(device=x.device, dtype=x.dtype)
    mw = zoom_matrix(x.shape[-1], zoom).to(device=x.device, dtype=x.dtype)
    return mh @ x @ mw.T


# -- tables -------------------------------------------------------------------------------------
GAUSSIAN_BLUR_32: tuple[float, ...] = (0.4, 0.6, 0.7, 0.8, 1.0)
GLASS_BLUR_32: tuple[tuple[float, int, int], ...] = (
    (0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2),
)
DEFOCUS_BLUR_32: tuple[tuple[float, float], ...] = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1))
MOTION_BLUR_32: tuple[tuple[float, float], ...] = ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5))
#: np.arange(1, stop, 0.01) exactly as the reference computes it (7, 12, 16, 21, 26 factors)
ZOOM_BLUR: tuple[tuple[float, ...], ...] = tuple(
    tuple(float(z) for z in np.arange(1, stop, 0.01)) for stop in (1.06, 1.11, 1.16, 1.21, 1.26)
)
SIDES: tuple[int, ...] = (32, 28, 8)


def _gaussian_table(side: int) -> list[float]:
    return [scale_length(s, side) for s in GAUSSIAN_BLUR_32]


def _glass_table(side: int) -> list[tuple[float, int, int]]:
    return [(scale_length(s, side), max(1, round(d * side / REFERENCE_SIDE)), it) for s, d, it in GLASS_BLUR_32]


def _defocus_table(side: int) -> list[tuple[float, float]]:
    return [(scale_length(r, side), scale_length(a, side)) for r, a in DEFOCUS_BLUR_32]


def _motion_table(side: int) -> list[tuple[float, float]]:
    return [(scale_length(r, side), scale_length(s, side)) for r, s in MOTION_BLUR_32]


# -- the corruptions ----------------------------------------------------------------------------
@register_corruption("gaussian_blur", family="extra", tables={s: _gaussian_table(s) for s in SIDES})
def gaussian_blur(x: torch.Tensor, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Gaussian blur (CIFAR-10-C extra corruption): ``skimage.filters.gaussian(x, sigma)``,
    per channel, edge pixels repeated, kernel truncated at ``int(4 sigma + 0.5)`` pixels
    (:func:`gaussian_filter`). Deterministic. 32x32 sigmas ``.4, .6, .7, .8, 1``."""
    if sigma < 0:
        raise ConfigError(f"gaussian_blur: sigma must be >= 0, got {sigma}.")
    return gaussian_filter(x, float(sigma)).clamp(0, 1)


def glass_permutation(
    n: int, h: int, w: int, max_delta: int, iterations: int, generator: torch.Generator,
) -> torch.Tensor:
    """The pixel shuffle of glass blur for ``n`` images of ``h x w``, as flat source
    indices ``(n, h*w)`` (CPU, int64): output pixel ``p`` takes input pixel ``idx[p]``.

    The reference visits rows ``h - max_delta`` down to ``max_delta + 1`` and, within each,
    columns ``w - max_delta`` down to ``max_delta + 1``, and swaps the pixel there with the
    one at offset ``(dy, dx)``, both drawn uniformly from ``{-max_delta, ..., max_delta - 1}``
    (``np.random.randint``'s exclusive upper bound, so with ``max_delta = 1`` pixels move
    only up and/or left); ``iterations`` passes. Swaps are sequential, so a pixel can be
    carried several steps up-left within one pass. We replay exactly this sequence of swaps
    on an index array, one step per visited position, each step vectorised over the
    ``n`` images (their offsets drawn independently from ``generator`` up front). The
    result is the reference's permutation in distribution -- it is the same random process
    -- with a Python loop of ``iterations * (h - 2 max_delta) * (w - 2 max_delta)`` steps
    whatever ``n`` is.
    """
    if max_delta < 1 or iterations < 0:
        raise ConfigError(f"glass_blur: max_delta must be >= 1 and iterations >= 0, got {max_delta}, {iterations}.")
    hw = h * w
    idx = np.tile(np.arange(hw, dtype=np.int64)[:, None], (1, n))  # (pixel, image)
    positions = np.array(
        [r * w + c for r in range(h - max_delta, max_delta, -1) for c in range(w - max_delta, max_delta, -1)],
        dtype=np.int64,
    )
    if len(positions) and iterations and n:
        d = randint(-max_delta, max_delta, (iterations, len(positions), n, 2), generator,
                    torch.device("cpu")).numpy()
        targets = positions[None, :, None] + d[..., 1] * w + d[..., 0]  # (it, P, n)
        images = np.arange(n)
        for it in range(iterations):
            for k, a in enumerate(positions):
                b = targets[it, k]
                tmp = idx[a].copy()
                idx[a] = idx[b, images]
                idx[b, images] = tmp
    return torch.from_numpy(np.ascontiguousarray(idx.T))


@register_corruption("glass_blur", family="blur", tables={s: _glass_table(s) for s in SIDES}, random=True)
def glass_blur(
    x: torch.Tensor, param: tuple[float, int, int], generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Glass blur: Gaussian blur (sigma), locally shuffle pixels (``max_delta``,
    ``iterations``; :func:`glass_permutation`), Gaussian blur again, as
    ``make_cifar_c.py``'s ``glass_blur``. Param ``(sigma, max_delta, iterations)``; 32x32
    ``(0.05,1,1), (0.25,1,1), (0.4,1,1), (0.25,1,2), (0.4,1,2)``.

    Deviations: the reference truncates the first blur to ``uint8`` before shuffling; we
    keep floats. Whole pixels (all channels) move together, as in the reference.
    """
    sigma, max_delta, iterations = float(param[0]), int(param[1]), int(param[2])
    n, c, h, w = x.shape
    y = gaussian_filter(x, sigma)
    idx = glass_permutation(n, h, w, max_delta, iterations, generator_or_default(generator)).to(x.device)
    y = torch.gather(y.reshape(n, c, h * w), 2, idx[:, None, :].expand(n, c, h * w)).reshape(n, c, h, w)
    return gaussian_filter(y, sigma).clamp(0, 1)


@register_corruption("defocus_blur", family="blur", tables={s: _defocus_table(s) for s in SIDES})
def defocus_blur(x: torch.Tensor, param: tuple[float, float], generator: torch.Generator | None = None) -> torch.Tensor:
    """Defocus blur: correlate each channel with the anti-aliased disk
    :func:`disk_kernel` ``(radius, alias_blur)``, borders reflected (OpenCV's
    ``filter2D`` default), as ``make_cifar_c.py``'s ``defocus_blur``. Deterministic.
    32x32 ``(0.3,0.4), (0.4,0.5), (0.5,0.6), (1,0.2), (1.5,0.1)``: severities 1-3 are a
    single-pixel disk blurred by sigma 0.4-0.6, 4 a 5-pixel cross, 5 the 3x3 square.
    """
    return filter2d(x, disk_kernel(float(param[0]), float(param[1])), "reflect").clamp(0, 1)


@register_corruption("motion_blur", family="blur", tables={s: _motion_table(s) for s in SIDES}, random=True)
def motion_blur(
    x: torch.Tensor, param: tuple[float, float], generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Motion blur: ImageMagick's ``MotionBlurImage(radius, sigma, angle)`` with one angle
    per image drawn uniformly from [-45, 45) degrees (:func:`line_blur`: a one-sided
    half-Gaussian line kernel along the angle), as ``make_cifar_c.py``'s ``motion_blur``
    (which calls ImageMagick through Wand). Param ``(radius, sigma)``; 32x32
    ``(6,1), (6,1.5), (6,2), (8,2), (9,2.5)``. The radius only sets the number of taps
    (``2 ceil(radius) + 1``), so severities 3 and 4 (sigma 2 both) differ only by taps
    with weight < 1e-9.
    """
    angles = rand((x.shape[0],), generator_or_default(generator), x) * 90.0 - 45.0
    return line_blur(x, float(param[0]), float(param[1]), angles).clamp(0, 1)


@register_corruption("zoom_blur", family="blur", tables={s: list(ZOOM_BLUR) for s in SIDES})
def zoom_blur(x: torch.Tensor, zooms: Sequence[float], generator: torch.Generator | None = None) -> torch.Tensor:
    """Zoom blur: the mean of the image and its :func:`clipped_zoom` at every factor in
    ``zooms``, ``(x + sum_z zoom_z(x)) / (len(zooms) + 1)``, as ``make_cifar_c.py``'s
    ``zoom_blur``. Deterministic. The factors are ``np.arange(1, stop, 0.01)`` for stops
    1.06 .. 1.26 (see the module docstring); they are ratios, so every image side uses
    them. Each zoom is exactly the reference's crop + ``scipy.ndimage.zoom(order=1)`` +
    trim, written as one interpolation matrix per axis (:func:`zoom_matrix`).
    """
    if isinstance(zooms, (int, float)):
        zooms = (float(zooms),)
    out = x.clone()
    for z in zooms:
        out = out + clipped_zoom(x, float(z))
    return (out / (len(zooms) + 1)).clamp(0, 1)


__all__ = [
    "DEFOCUS_BLUR_32",
    "GAUSSIAN_BLUR_32",
    "GLASS_BLUR_32",
    "MOTION_BLUR_32",
    "REFERENCE_SIDE",
    "ZOOM_BLUR",
    "clipped_zoom",
    "defocus_blur",
    "disk_kernel",
    "filter2d",
    "gaussian_blur",
    "gaussian_filter",
    "gaussian_kernel1d",
    "generator_or_default",
    "glass_blur",
    "glass_permutation",
    "line_blur",
    "motion_blur",
    "motion_kernel",
    "pad2d",
    "scale_length",
    "zoom_blur",
]
