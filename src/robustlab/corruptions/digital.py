"""Digital corruptions: brightness, contrast, elastic_transform, pixelate, jpeg_compression
(family "digital") and saturate (family "extra").

Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
Perturbations" (ICLR 2019), Sec. 3 and Appendix; the 32x32 tables are the constants of
CIFAR-10-C's ``make_cifar_c.py`` (repository hendrycks/robustness, file
``ImageNet-C/create_c/make_cifar_c.py``), checked entry by entry.

**Other image sides (28x28, 8x8).** One rule: intensities, qualities and factors are kept
(brightness and saturate shifts/scales, contrast factor, JPEG quality, pixelate factor),
lengths in pixels scale with ``side / 32``. The reference already writes elastic's three
lengths as ``IMSIZE * factor``; we keep the factors and set ``IMSIZE = side``. Pixelate's
factor is kept, so at 8x8 the image is reduced to ``int(8 c)`` = 7, 7, 6, 6, 5 pixels: every
severity, the first included, still changes the image.

The reference works on uint8 PIL images and rounds after every corruption (``np.uint8``);
here images stay float (except JPEG, which is defined on bytes), so outputs differ from
the released files by that rounding (at most 1/255 per pixel).
"""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from robustlab.corruptions.base import rand, register_corruption

# --------------------------------------------------------------------------------------------
# colour space: batched RGB <-> HSV with scikit-image's conventions (the reference uses
# skimage.color.rgb2hsv / hsv2rgb): hue in [0, 1), ties of the maximum go to blue, then green,
# then red; hue and saturation are 0 where max == min.
# --------------------------------------------------------------------------------------------


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """``(N, 3, H, W)`` RGB in [0, 1] -> HSV (h, s, v in [0, 1]) as ``skimage.color.rgb2hsv``."""
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    v, _ = x.max(1)
    delta = v - x.min(1).values
    safe_delta = torch.where(delta > 0, delta, torch.ones_like(delta))
    safe_v = torch.where(v > 0, v, torch.ones_like(v))
    s = torch.where(delta > 0, delta / safe_v, torch.zeros_like(v))
    h = (g - b) / safe_delta
    h = torch.where(g == v, 2.0 + (b - r) / safe_delta, h)
    h = torch.where(b == v, 4.0 + (r - g) / safe_delta, h)
    h = torch.remainder(h / 6.0, 1.0)
    h = torch.where(delta > 0, h, torch.zeros_like(h))
    return torch.stack((h, s, v), 1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """``(N, 3, H, W)`` HSV -> RGB, the sector formulas of ``skimage.color.hsv2rgb``."""
    h, s, v = hsv[:, 0], hsv[:, 1], hsv[:, 2]
    hi = torch.floor(h * 6)
    f = h * 6 - hi
    p = v * (1 - s)
    q = v * (1 - f * s)
    t = v * (1 - (1 - f) * s)
    sector = torch.remainder(hi, 6).long()
    # rows: sectors 0..5; columns: r, g, b
    table = torch.stack([
        torch.stack((v, t, p)), torch.stack((q, v, p)), torch.stack((p, v, t)),
        torch.stack((p, q, v)), torch.stack((t, p, v)), torch.stack((v, p, q)),
    ])  # (6, 3, N, H, W)
    idx = sector.unsqueeze(0).unsqueeze(0).expand(1, 3, *sector.shape)
    return table.gather(0, idx)[0].permute(1, 0, 2, 3).contiguous()


def _default_generator(generator: torch.Generator | None) -> torch.Generator:
    """``generator``, or the one :func:`~robustlab.corruptions.corrupt` uses by default."""
    return generator if generator is not None else torch.Generator().manual_seed(0)


# --------------------------------------------------------------------------------------------
# filters with scipy.ndimage's boundary modes (the reference smooths with skimage/scipy)
# --------------------------------------------------------------------------------------------


def _pad_index(n: int, r: int, mode: str, device: torch.device) -> torch.Tensor:
    """Indices of ``arange(-r, n + r)`` folded back into ``[0, n)`` by scipy's ``mode``:
    "reflect" (half-sample symmetric, ``d c b a | a b c d``), "mirror" (``d c b | a b c d``,
    OpenCV's BORDER_REFLECT_101) or "nearest" (``a a a | a b c d``)."""
    i = torch.arange(-r, n + r, device=device)
    if mode == "nearest":
        return i.clamp(0, n - 1)
    if mode == "reflect":
        i = torch.remainder(i, 2 * n)
        return torch.where(i >= n, 2 * n - 1 - i, i)
    if mode == "mirror":
        if n == 1:
            return torch.zeros_like(i)
        i = torch.remainder(i, 2 * n - 2)
        return torch.where(i >= n, 2 * n - 2 - i, i)
    raise ValueError(f"unknown boundary mode {mode!r}")


def pad2d(x: torch.Tensor, ry: int, rx: int, mode: str) -> torch.Tensor:
    """Pad the last two dims of ``x`` by ``ry`` rows and ``rx`` columns with scipy ``mode``."""
    iy = _pad_index(x.shape[-2], ry, mode, x.device)
    ix = _pad_index(x.shape[-1], rx, mode, x.device)
    return x.index_select(-2, iy).index_select(-1, ix)


@lru_cache(maxsize=64)
def _gauss_taps(sigma: float, truncate: float) -> tuple[float, ...]:
    radius = int(truncate * sigma + 0.5)
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return tuple((k / k.sum()).tolist())


def correlate_sep(x: torch.Tensor, ky: torch.Tensor, kx: torch.Tensor, mode: str) -> torch.Tensor:
    """Separable correlation of every channel of ``x`` (N, C, H, W) with 1-D kernels
    ``ky`` (rows) and ``kx`` (columns) of odd length, boundaries by scipy ``mode``."""
    n, c, h, w = x.shape
    ry, rx = len(ky) // 2, len(kx) // 2
    y = pad2d(x.reshape(n * c, 1, h, w), ry, rx, mode)
    y = F.conv2d(y, ky.to(x).view(1, 1, -1, 1))
    y = F.conv2d(y, kx.to(x).view(1, 1, 1, -1))
    return y.reshape(n, c, h, w)


def gaussian_filter(x: torch.Tensor, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> torch.Tensor:
    """``scipy.ndimage.gaussian_filter`` over the last two dims of ``(N, C, H, W)``: the
    kernel ``exp(-t^2 / 2 sigma^2)`` for ``|t| <= int(truncate sigma + 0.5)``, normalised;
    ``sigma <= 0`` returns ``x`` (scipy skips the axis). skimage's ``gaussian`` defaults to
    ``mode="nearest", truncate=4``."""
    if sigma <= 1e-15:
        return x
    k = torch.tensor(_gauss_taps(float(sigma), float(truncate)), dtype=x.dtype, device=x.device)
    return correlate_sep(x, k, k, mode)


# --------------------------------------------------------------------------------------------
# brightness, saturate, contrast
# --------------------------------------------------------------------------------------------

_SIDES = (32, 28, 8)


@register_corruption("brightness", family="digital", colour=True,
                     tables={s: (0.05, 0.1, 0.15, 0.2, 0.3) for s in _SIDES})
def brightness(x: torch.Tensor, c: float, generator: torch.Generator | None) -> torch.Tensor:
    """Brightness: in HSV, ``V <- clip(V + c, 0, 1)``, back to RGB (reference ``brightness``;
    c = .05, .1, .15, .2, .3). An intensity: the same table at every image side."""
    hsv = rgb_to_hsv(x)
    hsv = torch.stack((hsv[:, 0], hsv[:, 1], (hsv[:, 2] + float(c)).clamp(0, 1)), 1)
    return hsv_to_rgb(hsv).clamp(0, 1)


@register_corruption("saturate", family="extra", colour=True,
                     tables={s: ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)) for s in _SIDES})
def saturate(x: torch.Tensor, c: tuple[float, float], generator: torch.Generator | None) -> torch.Tensor:
    """Saturate: in HSV, ``S <- clip(S c0 + c1, 0, 1)``, back to RGB (reference ``saturate``;
    c = (.3, 0), (.1, 0), (1.5, 0), (2, .1), (2.5, .2)). Same table at every image side."""
    hsv = rgb_to_hsv(x)
    s = (hsv[:, 1] * float(c[0]) + float(c[1])).clamp(0, 1)
    return hsv_to_rgb(torch.stack((hsv[:, 0], s, hsv[:, 2]), 1)).clamp(0, 1)


@register_corruption("contrast", family="digital",
                     tables={s: (0.75, 0.5, 0.4, 0.3, 0.15) for s in _SIDES})
def contrast(x: torch.Tensor, c: float, generator: torch.Generator | None) -> torch.Tensor:
    """Contrast: ``clip((x - m) c + m, 0, 1)`` (reference ``contrast``; c = .75, .5, .4, .3, .15).

    ``m`` is the mean of each channel over the image's pixels: the reference takes
    ``np.mean(x, axis=(0, 1))`` of an ``(H, W, 3)`` array, i.e. one mean per channel (for
    greyscale images this is the mean over all pixels)."""
    m = x.mean(dim=(2, 3), keepdim=True)
    return ((x - m) * float(c) + m).clamp(0, 1)


# --------------------------------------------------------------------------------------------
# JPEG and pixelate
# --------------------------------------------------------------------------------------------


def _jpeg_one(img: np.ndarray, quality: int) -> np.ndarray:
    mode = "L" if img.shape[-1] == 1 else "RGB"
    pil = Image.fromarray(img[..., 0] if mode == "L" else img, mode=mode)
    buf = io.BytesIO()
    pil.save(buf, "JPEG", quality=int(quality))
    buf.seek(0)
    dec = Image.open(buf, formats=("JPEG",))
    out = np.asarray(dec if dec.mode == mode else dec.convert(mode))
    return out.reshape(img.shape)


@register_corruption("jpeg_compression", family="digital",
                     tables={s: (80, 65, 58, 50, 40) for s in _SIDES})
def jpeg_compression(x: torch.Tensor, quality: int, generator: torch.Generator | None) -> torch.Tensor:
    """JPEG compression: each image rounded to uint8 (``round(255 x)``), saved by Pillow as
    JPEG at ``quality`` (80, 65, 58, 50, 40, as the reference) with Pillow's defaults
    (4:2:0 chroma subsampling for colour), decoded, divided by 255. Greyscale images go
    through Pillow mode "L", colour through "RGB". A quality, so the same table at every
    side. Runs on the CPU image by image (JPEG is a byte format); the result goes back to
    ``x``'s device."""
    u8 = (x.detach() * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = np.stack([_jpeg_one(img, quality) for img in u8])
    return torch.from_numpy(out).to(device=x.device, dtype=x.dtype).permute(0, 3, 1, 2) / 255.0


def box_resize_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """The ``(n_out, n_in)`` matrix of Pillow's BOX resampling along one axis
    (``precompute_coeffs`` in Pillow's ``Resample.c``): output pixel ``i`` has centre
    ``(i + 0.5) s`` with ``s = n_in / n_out``, support ``max(s, 1) / 2``, and weight 1 on every
    input pixel whose centre falls in the box (``-0.5 < t <= 0.5`` in filter units), then the
    row is normalised. Downscaling averages whole pixels (not fractional areas); upscaling
    picks the nearest pixel."""
    scale = n_in / n_out
    fscale = max(scale, 1.0)
    support = 0.5 * fscale
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        centre = (i + 0.5) * scale
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), n_in)
        for j in range(lo, hi):
            t = (j - centre + 0.5) / fscale
            if -0.5 < t <= 0.5:
                m[i, j] = 1.0
        if m[i].sum() > 0:
            m[i] /= m[i].sum()
    return torch.from_numpy(m)


def _pixelate_size(side: int, c: float) -> int:
    return max(int(side * c), 1)


@register_corruption("pixelate", family="digital",
                     tables={s: (0.95, 0.9, 0.85, 0.75, 0.65) for s in _SIDES})
def pixelate(x: torch.Tensor, c: float, generator: torch.Generator | None) -> torch.Tensor:
    """Pixelate: resize to ``int(side c)`` with Pillow's BOX filter, then back with BOX
    (reference ``pixelate``; c = .95, .9, .85, .75, .65).

    Done as two matrix products with the exact BOX weights of Pillow (:func:`box_resize_matrix`;
    ``F.interpolate(mode="area")`` is *not* equivalent for non-integer ratios, so it is not
    used). Deviation: Pillow resamples uint8 images in two passes (rows, then columns) and
    rounds to uint8 after each; here there is no rounding (equal to Pillow's float mode "F").
    The factor is kept at every side (at 8x8 the sizes are 7, 7, 6, 6, 5)."""
    h, w = x.shape[-2:]
    sh, sw = _pixelate_size(h, float(c)), _pixelate_size(w, float(c))
    dy, dx = box_resize_matrix(h, sh).to(x), box_resize_matrix(w, sw).to(x)
    uy, ux = box_resize_matrix(sh, h).to(x), box_resize_matrix(sw, w).to(x)
    my, mx = uy @ dy, ux @ dx  # (h, h), (w, w): down then up, in one product per axis
    return torch.einsum("ij,ncjk,lk->ncil", my, x, mx)


# --------------------------------------------------------------------------------------------
# elastic transform
# --------------------------------------------------------------------------------------------


def _elastic_table(side: int) -> tuple[tuple[float, float, float], ...]:
    f = ((0.0, 0.0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03))
    return tuple((side * a, side * b, side * d) for a, b, d in f)


def affine_from_points(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Batched ``cv2.getAffineTransform``: the ``(N, 2, 3)`` matrices taking the three points
    ``src`` ``(N, 3, 2)`` (x, y) onto ``dst``."""
    src64, dst64 = src.detach().cpu().double(), dst.detach().cpu().double()
    a = torch.cat((src64, torch.ones(*src64.shape[:-1], 1, dtype=torch.float64)), -1)  # (N, 3, 3)
    sol = torch.linalg.solve(a, dst64)  # (N, 3, 2): a @ sol = dst (solved in float64 on the CPU)
    return sol.transpose(1, 2)


def warp_affine(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``cv2.warpAffine(img, M, (W, H), borderMode=BORDER_REFLECT_101)`` with bilinear
    interpolation: ``out(p) = img(M^-1 p)`` for pixel coordinates ``p = (x, y)``. Reflection
    about the border pixels' centres is ``grid_sample``'s ``reflection`` padding with
    ``align_corners=True``. Agrees with ``cv2.warpAffine`` on float32 images to 6e-6 (checked
    on random affines of the elastic table's size)."""
    n, _, h, w = x.shape
    full = torch.zeros(n, 3, 3, dtype=torch.float64)
    full[:, :2] = m.detach().cpu().double()
    full[:, 2, 2] = 1
    inv = torch.linalg.inv(full)[:, :2]  # (N, 2, 3), float64 on the CPU
    # normalised grid = A @ (x, y, 1) with A = diag(2/(W-1), 2/(H-1)) inv - (1, 1) folded in
    scale = torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)], dtype=torch.float64).view(1, 2, 1)
    a = inv * scale
    a[:, :, 2] -= 1
    ys, xs = torch.meshgrid(torch.arange(h, dtype=x.dtype, device=x.device),
                            torch.arange(w, dtype=x.dtype, device=x.device), indexing="ij")
    pts = torch.stack((xs, ys, torch.ones_like(xs)), -1)  # (H, W, 3)
    grid = torch.einsum("nij,hwj->nhwi", a.to(device=x.device, dtype=x.dtype), pts)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=True)


def displace(x: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """``scipy.ndimage.map_coordinates(img, (y + dy, x + dx), order=1, mode="reflect")`` per
    channel: bilinear sampling at the displaced pixel coordinates, half-sample symmetric
    boundary (``grid_sample`` reflection padding with ``align_corners=False``).
    ``dx``, ``dy``: ``(N, H, W)`` displacements in pixels."""
    n, _, h, w = x.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=x.dtype, device=x.device),
                            torch.arange(w, dtype=x.dtype, device=x.device), indexing="ij")
    gx = (2 * (xs + dx) + 1) / w - 1
    gy = (2 * (ys + dy) + 1) / h - 1
    grid = torch.stack((gx, gy), -1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


@register_corruption("elastic_transform", family="digital", random=True,
                     tables={s: _elastic_table(s) for s in _SIDES})
def elastic_transform(x: torch.Tensor, c: tuple[float, float, float], generator: torch.Generator | None) -> torch.Tensor:
    """Elastic transform (reference ``elastic_transform``, after Simard et al. 2003): a random
    affine warp, then an elastic displacement field. ``c = (alpha, sigma, affine)`` in pixels:

    1. three points at the centre +- ``side // 3`` (``(s, s), (s, -s), (-s, -s)`` offsets) move
       by ``U(-affine, affine)`` each coordinate; the affine map between them warps the image
       (bilinear, BORDER_REFLECT_101), as ``cv2.getAffineTransform`` + ``cv2.warpAffine``;
    2. ``dx, dy = alpha * gaussian(U(-1, 1), sigma, mode="reflect", truncate=3)`` and the image
       is sampled bilinearly at ``(y + dy, x + dx)`` with half-sample reflection, as
       ``scipy.ndimage.map_coordinates(order=1, mode="reflect")``.

    32x32 table = the reference's ``IMSIZE * (0, 0, .08), (.05, .2, .07), (.08, .06, .06),
    (.1, .04, .05), (.1, .03, .03)`` with IMSIZE = 32; other sides set IMSIZE = side.
    Draw order per batch: the affine offsets ``(N, 3, 2)``, then the fields ``(N, 2, H, W)``
    (dx, dy of each image)."""
    generator = _default_generator(generator)
    n, _, h, w = x.shape
    alpha, sigma, aff = (float(v) for v in c)
    cx, cy, s = float(w // 2), float(h // 2), float(min(h, w) // 3)
    src = torch.tensor([[cx + s, cy + s], [cx + s, cy - s], [cx - s, cy - s]], dtype=torch.float64).expand(n, 3, 2)
    delta = (rand((n, 3, 2), generator, x).cpu().double() * 2 - 1) * aff
    m = affine_from_points(src, src + delta)
    out = warp_affine(x, m)
    u = rand((n, 2, h, w), generator, x) * 2 - 1
    d = gaussian_filter(u, sigma, mode="reflect", truncate=3.0) * alpha
    return displace(out, d[:, 0], d[:, 1]).clamp(0, 1)


__all__ = [
    "brightness",
    "contrast",
    "elastic_transform",
    "hsv_to_rgb",
    "jpeg_compression",
    "pixelate",
    "rgb_to_hsv",
    "saturate",
]
