"""Weather corruptions: snow, frost, fog (family "weather") and spatter (family "extra").

Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
Perturbations" (ICLR 2019), Sec. 3 and Appendix; the 32x32 tables are the constants of
CIFAR-10-C's ``make_cifar_c.py`` (repository hendrycks/robustness, file
``ImageNet-C/create_c/make_cifar_c.py``), checked entry by entry.

**Other image sides (28x28, 8x8).** One rule: intensities, thresholds, factors and colours
are kept; lengths in pixels scale with ``side / 32``: snow's motion-blur radius and sigma,
spatter's gaussian sigmas (the liquid layer's, and the mud mask's) and its distance-transform
truncation (20 px at 32), frost's crystal lengths and widths, and fog's fractal map size (the
next power of two >= the side, as the reference's 32 is for 32). Snow's zoom factor is a
ratio and stays; fixed 3x3 filters inside spatter stay 3x3.

Every random draw goes through the ``generator`` (``base.rand``/``randn``), batched over the
images; the same batch, severity and generator state give the same output on any device.
The reference works on uint8 images and rounds after every corruption; here images stay
float, except where the reference quantises an intermediate layer (snow's layer before and
after its motion blur, spatter's liquid layer), which we reproduce.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from robustlab.corruptions.base import rand, randn, register_corruption
from robustlab.corruptions.digital import _default_generator, gaussian_filter, pad2d

_SIDES = (32, 28, 8)


def _next_pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


# --------------------------------------------------------------------------------------------
# fog
# --------------------------------------------------------------------------------------------


def plasma_fractal(n: int, mapsize: int, wibbledecay: float, generator: torch.Generator,
                   like: torch.Tensor) -> torch.Tensor:
    """``n`` diamond-square height maps ``(n, mapsize, mapsize)`` in ``[0, 1]``, batched.

    The reference's ``plasma_fractal(mapsize, wibbledecay)`` (after FLHerne/mapgen): start
    with ``map[0, 0] = 0`` and ``wibble = 100``; for ``step = mapsize, mapsize/2, ..., 2``:
    the centre of each square is the mean of its four corners plus noise, then the
    centre of each diamond likewise (periodic neighbours), with noise
    ``wibble * U(-wibble, wibble)`` (the reference's own scale, kept), and
    ``wibble /= wibbledecay``; finally each map is shifted and scaled to ``[0, 1]``.
    ``mapsize`` must be a power of two. Draws per step: squares, then the two diamond sets,
    each ``(n, mapsize/step, mapsize/step)``.
    """
    if mapsize < 2 or mapsize & (mapsize - 1):
        raise ValueError(f"plasma_fractal: mapsize must be a power of two >= 2, got {mapsize}")
    m = torch.zeros(n, mapsize, mapsize, dtype=like.dtype, device=like.device)
    step, wibble = mapsize, 100.0

    def wibbled_mean(total: torch.Tensor) -> torch.Tensor:
        return total / 4 + wibble * (rand(total.shape, generator, like) * 2 - 1) * wibble

    while step >= 2:
        half = step // 2
        corner = m[:, 0::step, 0::step]
        sq = corner + torch.roll(corner, -1, dims=1)
        sq = sq + torch.roll(sq, -1, dims=2)
        m[:, half::step, half::step] = wibbled_mean(sq)
        dr = m[:, half::step, half::step]
        ul = m[:, 0::step, 0::step]
        left = dr + torch.roll(dr, 1, dims=1) + ul + torch.roll(ul, -1, dims=2)
        m[:, 0::step, half::step] = wibbled_mean(left)
        top = dr + torch.roll(dr, 1, dims=2) + ul + torch.roll(ul, -1, dims=1)
        m[:, half::step, 0::step] = wibbled_mean(top)
        step //= 2
        wibble /= float(wibbledecay)
    flat = m.reshape(n, -1)
    flat = flat - flat.min(1, keepdim=True).values
    flat = flat / flat.max(1, keepdim=True).values.clamp_min(1e-12)
    return flat.reshape(n, mapsize, mapsize)


@register_corruption("fog", family="weather", random=True,
                     tables={s: ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)) for s in _SIDES})
def fog(x: torch.Tensor, c: tuple[float, float], generator: torch.Generator | None) -> torch.Tensor:
    """Fog (reference ``fog``; c = (strength, wibbledecay) = (.2, 3), (.5, 3), (.75, 2.5),
    (1, 2), (1.5, 1.75)): ``x + c0 * plasma[:H, :W]`` on every channel, rescaled by
    ``max / (max + c0)`` with ``max`` the image's maximum over pixels and channels, clipped.
    The fractal's map size is the next power of two >= the side (32 for 32x32, as the
    reference; 32 for 28x28, 8 for 8x8), so the fog's structure scales with the image."""
    generator = _default_generator(generator)
    n, _, h, w = x.shape
    size = _next_pow2(max(h, w, 2))
    plasma = plasma_fractal(n, size, float(c[1]), generator, x)[:, None, :h, :w]
    mx = x.amax(dim=(1, 2, 3), keepdim=True)
    return ((x + float(c[0]) * plasma) * mx / (mx + float(c[0]))).clamp(0, 1)


# --------------------------------------------------------------------------------------------
# snow
# --------------------------------------------------------------------------------------------


def clipped_zoom(x: torch.Tensor, factor: float) -> torch.Tensor:
    """The reference's ``clipped_zoom``: crop the centre ``ceil(H / factor)`` square, zoom it
    with ``scipy.ndimage.zoom(order=1)`` (bilinear, corner-aligned, output side
    ``round(crop * factor)``) and trim the centre ``H x W`` back out."""
    h = x.shape[-2]
    ch = int(math.ceil(h / factor))
    top = (h - ch) // 2
    crop = x[..., top:top + ch, top:top + ch]
    size = int(round(ch * factor))
    if size == ch:
        z = crop
    else:
        z = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=True)
    trim = (z.shape[-2] - h) // 2
    return z[..., trim:trim + h, trim:trim + h]


def motion_blur_offsets(radius: float, angles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ImageMagick's ``MotionBlurImage`` taps for each angle (degrees): width
    ``2 ceil(radius) + 1``; tap ``i`` at column ``+ceil(i cos a - 1/2)`` and row
    ``+ceil(i sin a - 1/2)``. Returns (dx, dy) ``(N, width)`` long tensors and the taps'
    indices ``i`` (the weights are filled in by the caller)."""
    width = 2 * int(math.ceil(radius)) + 1
    i = torch.arange(width, dtype=torch.float64)
    a = torch.deg2rad(angles.detach().cpu().double())[:, None]
    dx = torch.ceil(i * torch.cos(a) - 0.5).long()
    dy = torch.ceil(i * torch.sin(a) - 0.5).long()
    return dx, dy, i


def motion_blur(x: torch.Tensor, radius: float, sigma: float, angles: torch.Tensor) -> torch.Tensor:
    """One-sided motion blur of ``(N, C, H, W)`` with a per-image angle, as ImageMagick's
    ``MotionBlurImage(radius, sigma, angle)`` (what the reference calls through Wand): weights
    ``exp(-i^2 / 2 sigma^2)`` normalised over the ``2 ceil(radius) + 1`` taps, each tap the
    image shifted along the angle to the nearest pixel, edges repeated (ImageMagick's default
    virtual pixels). Done as one gather of all taps."""
    n, c, h, w = x.shape
    dx, dy, i = motion_blur_offsets(radius, angles)
    k = torch.exp(-(i ** 2) / (2 * float(sigma) ** 2))
    k = (k / k.sum()).to(x)
    ys = torch.arange(h).view(1, 1, h, 1)
    xs = torch.arange(w).view(1, 1, 1, w)
    rows = (ys + dy[:, :, None, None]).clamp(0, h - 1)
    cols = (xs + dx[:, :, None, None]).clamp(0, w - 1)
    idx = (rows * w + cols).reshape(n, 1, -1).to(x.device)  # (N, 1, T*H*W)
    taps = x.reshape(n, c, h * w).gather(2, idx.expand(n, c, idx.shape[-1]))
    taps = taps.reshape(n, c, len(k), h, w)
    return torch.einsum("nctyx,t->ncyx", taps, k)


def _snow_table(side: int) -> tuple[tuple[float, ...], ...]:
    base = ((0.1, 0.2, 1, 0.6, 8, 3, 0.95),
            (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
            (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
            (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
            (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8))
    f = side / 32
    return tuple((a, b, z, t, r * f, s * f, bl) for a, b, z, t, r, s, bl in base)


@register_corruption("snow", family="weather", random=True, colour=True,
                     tables={s: _snow_table(s) for s in _SIDES})
def snow(x: torch.Tensor, c: tuple[float, ...], generator: torch.Generator | None) -> torch.Tensor:
    """Snow (reference ``snow``; c = (mean, std, zoom, threshold, blur radius, blur sigma,
    blend)):

    1. a layer ``N(c0, c1)`` per image (one channel), zoomed by ``c2`` (:func:`clipped_zoom`),
       values below ``c3`` set to 0, clipped and truncated to uint8 as the reference's PNG;
    2. motion blur at an angle ``U(-135, -45)`` degrees with radius ``c4`` and sigma ``c5``
       (:func:`motion_blur`, ImageMagick's kernel; the reference calls Wand), rounded to
       uint8 as the reference's PNG round trip;
    3. ``x <- c6 x + (1 - c6) max(x, 1.5 grey(x) + 0.5)`` with ``grey = .299 R + .587 G + .114 B``
       (OpenCV's RGB2GRAY), then ``clip(x + layer + layer rotated 180 degrees)``.

    Lengths (radius, sigma) scale with ``side / 32``. Deviation: where the blur's taps run
    past the image (8x8 images) the edge pixel repeats, as ImageMagick does; the
    imagecorruptions port instead stops adding taps there. Draws: layer ``(N, 1, H, W)``,
    then angles ``(N,)``."""
    generator = _default_generator(generator)
    n, _, h, w = x.shape
    layer = randn((n, 1, h, w), generator, x) * float(c[1]) + float(c[0])
    layer = clipped_zoom(layer, float(c[2]))
    layer = torch.where(layer < float(c[3]), torch.zeros_like(layer), layer)
    layer = torch.floor(layer.clamp(0, 1) * 255) / 255
    angles = rand((n,), generator, x) * 90 - 135
    layer = motion_blur(layer, float(c[4]), float(c[5]), angles)
    layer = torch.round(layer * 255) / 255
    grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    blend = float(c[6])
    x = blend * x + (1 - blend) * torch.maximum(x, grey * 1.5 + 0.5)
    return (x + layer + torch.flip(layer, dims=(2, 3))).clamp(0, 1)


# --------------------------------------------------------------------------------------------
# frost (procedural texture; see the docstring for why and how it compares)
# --------------------------------------------------------------------------------------------

#: brightness statistics of the reference's frost crops: 32x32 crops of the five photographs
#: it draws from (``np.random.randint(5)`` picks frost1..frost5), resized by 0.2 as in
#: ``make_cifar_c.py``; measured on the copies shipped in imagecorruptions 1.1.2 (1000 crops)
FROST_MEAN = 0.637  # mean brightness of a crop
FROST_MEAN_SD = 0.154  # spread of the crop means across crops and photographs
FROST_STD = 0.086  # brightness std inside a crop
FROST_TINT = (0.566 / 0.637, 0.649 / 0.637, 0.695 / 0.637)  # channel mean / mean (bluish white)

_FROST_SEEDS = 4  # crystal seeds per image
_FROST_SIDE = 6  # side branches per seed
_FROST_CHUNK_ELEMENTS = 1 << 22  # images x segments x pixels per rendering chunk (bounds memory)


def _segment_ridges(px: torch.Tensor, a: torch.Tensor, b: torch.Tensor, width: torch.Tensor,
                    bright: torch.Tensor) -> torch.Tensor:
    """Brightest gaussian ridge ``bright exp(-d^2 / 2 width^2)`` over segments ``a -> b``
    (N, S, 2) at pixels ``px`` (P, 2), ``d`` the distance to the segment: (N, P)."""
    abx, aby = (b - a).unbind(-1)  # (N, S)
    inv = 1.0 / (abx * abx + aby * aby).clamp_min(1e-12)
    apx = px[:, 0].view(1, 1, -1) - a[..., 0, None]  # (N, S, P)
    apy = px[:, 1].view(1, 1, -1) - a[..., 1, None]
    t = (apx * abx[..., None]).add_(apy * aby[..., None]).mul_(inv[..., None]).clamp_(0, 1)
    apx.sub_(t * abx[..., None]).square_()
    apy.sub_(t * aby[..., None]).square_()
    d2 = apx.add_(apy)
    ridge = d2.mul_((-0.5 / (width * width))[..., None]).exp_().mul_(bright[..., None])
    return ridge.amax(1)


def frost_texture(n: int, h: int, w: int, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """``n`` procedural frost textures ``(n, 3, h, w)`` in ``[0, 1]``.

    Each image gets ``_FROST_SEEDS`` ice crystals: a main needle from a uniform point at a
    uniform angle, length ``U(8, 24)`` px, and ``_FROST_SIDE`` side needles leaving it at
    ``U(.1, .9)`` of its length, at ``+-U(40, 70)`` degrees, of ``U(.2, .5)`` its length;
    needles are drawn as gaussian ridges of width ``U(.5, .9)`` px (times ``max(side/32, .5)``)
    and brightness ``U(.5, 1)`` (maximum over needles). Added: fine noise blurred at ``.7`` px (rime) and a
    haze blurred at 4 px. The grey texture ``.55 needles + .25 rime + .2 haze`` is then
    standardised to mean ``U(FROST_MEAN +- sqrt(3) FROST_MEAN_SD)`` and std ``FROST_STD``
    (the reference crops' statistics) and tinted by ``FROST_TINT``. Lengths are for 32x32 and
    scale with ``side / 32``. Draws, in order: needles (starts, angles, lengths, positions,
    side angles and signs, side lengths, widths, brightness), rime, haze, means.
    """
    s = min(h, w) / 32
    k, b = _FROST_SEEDS, _FROST_SIDE
    start = rand((n, k, 2), generator, like) * torch.tensor([w, h], dtype=like.dtype, device=like.device)
    theta = rand((n, k), generator, like) * 2 * math.pi
    length = (8 + 16 * rand((n, k), generator, like)) * s
    pos = 0.1 + 0.8 * rand((n, k, b), generator, like)
    side_angle = torch.deg2rad(40 + 30 * rand((n, k, b), generator, like))
    side_sign = torch.where(rand((n, k, b), generator, like) < 0.5, -1.0, 1.0).to(like)
    side_len = (0.2 + 0.3 * rand((n, k, b), generator, like)) * length[..., None]
    width = (0.5 + 0.4 * rand((n, k * (b + 1)), generator, like)) * max(s, 0.5)
    bright = 0.5 + 0.5 * rand((n, k * (b + 1)), generator, like)

    direction = torch.stack((torch.cos(theta), torch.sin(theta)), -1)  # (n, k, 2)
    main_end = start + direction * length[..., None]
    side_start = start[:, :, None] + direction[:, :, None] * (pos * length[..., None])[..., None]
    phi = theta[..., None] + side_sign * side_angle
    side_end = side_start + torch.stack((torch.cos(phi), torch.sin(phi)), -1) * side_len[..., None]
    seg_a = torch.cat((start, side_start.reshape(n, k * b, 2)), 1)
    seg_b = torch.cat((main_end, side_end.reshape(n, k * b, 2)), 1)

    ys, xs = torch.meshgrid(torch.arange(h, dtype=like.dtype, device=like.device) + 0.5,
                            torch.arange(w, dtype=like.dtype, device=like.device) + 0.5, indexing="ij")
    px = torch.stack((xs, ys), -1).reshape(-1, 2)
    needles = []
    chunk = max(1, _FROST_CHUNK_ELEMENTS // (seg_a.shape[1] * px.shape[0]))
    for lo in range(0, n, chunk):
        sl = slice(lo, lo + chunk)
        needles.append(_segment_ridges(px, seg_a[sl], seg_b[sl], width[sl], bright[sl]))
    lines = torch.cat(needles).reshape(n, 1, h, w)

    rime = gaussian_filter(rand((n, 1, h, w), generator, like), 0.7 * s, mode="reflect")
    haze = gaussian_filter(rand((n, 1, h, w), generator, like), 4 * s, mode="reflect")

    def unit(t: torch.Tensor) -> torch.Tensor:
        lo_ = t.amin(dim=(2, 3), keepdim=True)
        hi_ = t.amax(dim=(2, 3), keepdim=True)
        return (t - lo_) / (hi_ - lo_).clamp_min(1e-12)

    grey = 0.55 * unit(lines) + 0.25 * unit(rime) + 0.2 * unit(haze)
    mu = grey.mean(dim=(2, 3), keepdim=True)
    sd = grey.std(dim=(2, 3), keepdim=True).clamp_min(1e-6)
    target = FROST_MEAN + FROST_MEAN_SD * math.sqrt(3) * (2 * rand((n, 1, 1, 1), generator, like) - 1)
    grey = (grey - mu) / sd * FROST_STD + target
    tint = torch.tensor(FROST_TINT, dtype=like.dtype, device=like.device).view(1, 3, 1, 1)
    return (grey * tint).clamp(0, 1)


@register_corruption("frost", family="weather", random=True, colour=True,
                     tables={s: ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)) for s in _SIDES})
def frost(x: torch.Tensor, c: tuple[float, float], generator: torch.Generator | None) -> torch.Tensor:
    """Frost: ``clip(c0 x + c1 frost, 0, 1)`` (reference ``frost``; c = (1, .2), (1, .3),
    (.9, .4), (.85, .4), (.75, .45), kept at every side).

    **Deviation.** The reference blends a random 32x32 crop of one of five frost photographs
    (resized by 0.2). Those photographs are not licensed for redistribution, so the frost
    layer here is procedural (:func:`frost_texture`): seeded ice needles with side
    branches, fine rime and a haze, drawn from ``generator``, standardised to the
    photographs' crop statistics (mean brightness 0.637 with spread 0.154 across crops,
    std 0.086 inside a crop, bluish tint R:G:B = .566:.649:.695). The added brightness
    ``c1 * mean(frost)`` therefore matches the reference's on average (e.g. +0.127 at
    severity 1, +0.287 at severity 5), but the texture's shapes do not: models that learned
    the photographs' patterns (and CIFAR-10-C numbers) will not transfer exactly. Use the
    released CIFAR-10-C files when comparing with published frost numbers."""
    generator = _default_generator(generator)
    n, _, h, w = x.shape
    tex = frost_texture(n, h, w, generator, x)
    return (float(c[0]) * x + float(c[1]) * tex).clamp(0, 1)


# --------------------------------------------------------------------------------------------
# spatter: OpenCV pieces the reference's water branch uses, batched in torch
# --------------------------------------------------------------------------------------------

_TG22 = int(0.4142135623730950488016887242097 * (1 << 15) + 0.5)


def canny(img: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """``cv2.Canny(img, low, high)`` (aperture 3, L1 gradient) of uint8-valued images
    ``(N, 1, H, W)`` (float holding integers): Sobel gradients with replicated borders,
    ``|dx| + |dy|``, non-maximum suppression in four directions with OpenCV's fixed-point
    tan(22.5) test and tie rules, hysteresis (> low connected in 8-neighbourhood to > high).
    Returns a bool edge map."""
    # float32 holds the integer gradients (|d| <= 1020) exactly
    sob = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=torch.float32, device=img.device)
    p = pad2d(img.float(), 1, 1, "nearest")
    dx = F.conv2d(p, sob.view(1, 1, 3, 3)).round().long()
    dy = F.conv2d(p, sob.t().contiguous().view(1, 1, 3, 3)).round().long()
    mag = dx.abs() + dy.abs()
    lo, hi = int(math.floor(low)), int(math.floor(high))
    mp = F.pad(mag, (1, 1, 1, 1))  # magnitudes outside the image are 0
    h, w = mag.shape[-2:]

    def at(oy: int, ox: int) -> torch.Tensor:
        return mp[..., 1 + oy:1 + oy + h, 1 + ox:1 + ox + w]

    ax, ay = dx.abs(), dy.abs() << 15
    tg22 = ax * _TG22
    tg67 = tg22 + (ax << 16)
    horiz = ay < tg22
    vert = ~horiz & (ay > tg67)
    diag = ~horiz & ~vert
    keep_h = (mag > at(0, -1)) & (mag >= at(0, 1))
    keep_v = (mag > at(-1, 0)) & (mag >= at(1, 0))
    same = (dx < 0) == (dy < 0)  # s = +1: previous row at x-1, next row at x+1
    keep_d = torch.where(same, (mag > at(-1, -1)) & (mag > at(1, 1)), (mag > at(-1, 1)) & (mag > at(1, -1)))
    cand = (mag > lo) & ((horiz & keep_h) | (vert & keep_v) | (diag & keep_d))
    edges = cand & (mag > hi)
    while True:  # grow the strong edges through 8-connected candidates until nothing changes
        pe = F.pad(edges, (1, 1, 1, 1))
        near = edges.clone()
        for oy in range(3):
            for ox in range(3):
                near |= pe[..., oy:oy + h, ox:ox + w]
        grown = cand & near
        if torch.equal(grown, edges):
            return edges
        edges = grown


def distance_chamfer(zero: torch.Tensor, cap: float) -> torch.Tensor:
    """``cv2.distanceTransform(src, DIST_L2, 5)`` where ``zero`` (bool ``(N, 1, H, W)``) marks
    the pixels that are 0 in ``src``: the 5x5 chamfer distance (steps 1, 1.4, 2.1969) to the
    nearest zero pixel, computed by relaxation until every value below ``cap`` is final
    (values at or above ``cap`` are returned as ``cap``; the reference truncates at 20 next).
    Paths stay inside the image, as OpenCV's border."""
    big = 1e4
    d = torch.where(zero, 0.0, big).to(torch.float32)
    steps = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
             if (dy, dx) != (0, 0) and abs(dy) + abs(dx) <= 3 and not (abs(dy) == 2 and abs(dx) == 2)
             and not (abs(dy) == 2 and dx == 0) and not (abs(dx) == 2 and dy == 0)]
    weight = {1: 1.0, 2: 1.4, 3: 2.1969}
    h, w = d.shape[-2:]
    for _ in range(int(math.ceil(cap)) + 2):
        p = F.pad(d, (2, 2, 2, 2), value=big)
        new = d
        for dy, dx in steps:
            new = torch.minimum(new, p[..., 2 + dy:2 + dy + h, 2 + dx:2 + dx + w] + weight[abs(dy) + abs(dx)])
        if torch.equal(new, d):
            break
        d = new
    return d.clamp(max=cap)


def box3(x: torch.Tensor) -> torch.Tensor:
    """``cv2.blur(x, (3, 3))``: 3x3 mean with BORDER_REFLECT_101."""
    k = torch.full((3,), 1.0, dtype=x.dtype, device=x.device)
    return F.conv2d(F.conv2d(pad2d(x, 1, 1, "mirror"), k.view(1, 1, 3, 1)), k.view(1, 1, 1, 3)) / 9


def equalize_hist(img: torch.Tensor) -> torch.Tensor:
    """``cv2.equalizeHist`` of uint8-valued ``(N, 1, H, W)`` (float holding integers): the LUT
    ``round(255 * (cdf(v) - hist[v0]) / (total - hist[v0]))`` with ``v0`` the smallest value
    present (a constant image maps to itself)."""
    n = img.shape[0]
    v = img.reshape(n, -1).long()
    total = v.shape[1]
    hist = torch.zeros(n, 256, dtype=torch.float32, device=img.device).scatter_add_(
        1, v, torch.ones_like(v, dtype=torch.float32))
    first = (hist > 0).float().argmax(1, keepdim=True)
    h0 = hist.gather(1, first)
    # OpenCV: float scale = 255.f / (total - h0); lut = cvRound(int * scale), in float32
    # (the division in float64 then rounded to float32 is the correctly rounded float32 quotient)
    scale = (255.0 / (total - h0).double().clamp_min(1)).float()
    lut = torch.round((hist.cumsum(1) - h0) * scale).clamp(0, 255)
    constant = h0 == total
    lut = torch.where(constant, first.float().expand(-1, 256), lut)
    return lut.gather(1, v).reshape(img.shape).to(img.dtype)


def _spatter_table(side: int) -> tuple[tuple[float, ...], ...]:
    base = ((0.62, 0.1, 0.7, 0.7, 0.5, 0),
            (0.65, 0.1, 0.8, 0.7, 0.5, 0),
            (0.65, 0.3, 1, 0.69, 0.5, 0),
            (0.65, 0.1, 0.7, 0.69, 0.6, 1),
            (0.65, 0.1, 0.5, 0.68, 0.6, 1))
    f = side / 32
    # c4 is the water's intensity (kept) but the mud mask's sigma (a length); 7th: truncation
    return tuple((a, b, s * f, t, (c4 * f if mud else c4), mud, 20 * f) for a, b, s, t, c4, mud in base)


@register_corruption("spatter", family="extra", random=True, colour=True,
                     tables={s: _spatter_table(s) for s in _SIDES})
def spatter(x: torch.Tensor, c: tuple[float, ...], generator: torch.Generator | None) -> torch.Tensor:
    """Spatter (reference ``spatter``; c = (mean, std, sigma, threshold, c4, mud) = (.62, .1,
    .7, .7, .5, 0), (.65, .1, .8, .7, .5, 0), (.65, .3, 1, .69, .5, 0), (.65, .1, .7, .69, .6,
    1), (.65, .1, .5, .68, .6, 1); a 7th entry is the distance truncation, 20 px in the
    reference's code). A liquid layer ``N(c0, c1)`` per image, gaussian-smoothed at ``c2``
    (skimage defaults: nearest border, truncate 4), values below ``c3`` set to 0.

    * water (``mud == 0``): the layer as uint8, Canny edges (50, 150), chamfer distance to
      the edges truncated at 20, 3x3 mean, uint8, histogram equalisation, the 3x3 emboss
      kernel ``[[-2,-1,0],[-1,1,1],[0,1,2]]`` saturated to uint8, 3x3 mean rounded to uint8;
      ``m = layer_u8 * that``, divided by its maximum, times ``c4``; out
      ``= clip(x + m * (175, 238, 238) / 255)`` (pale turquoise, in RGB as the reference's
      array order gives it). Each OpenCV step is reimplemented in torch (:func:`canny`,
      :func:`distance_chamfer`, :func:`box3`, :func:`equalize_hist`).
    * mud (``mud == 1``): ``m = gaussian(layer > c3, sigma=c4)``, ``m[m < .8] = 0``; out
      ``= x (1 - m) + m (63, 42, 20) / 255`` (brown).

    Sigmas and the truncation scale with ``side / 32``; the 3x3 filters do not. Where a
    water image's ``m`` is all zero (no liquid) the reference divides 0 by 0; here the
    image is returned unchanged. Draws: the layer ``(N, 1, H, W)``."""
    generator = _default_generator(generator)
    n, _, h, w = x.shape
    loc, scale, sigma, thr, c4, mud = (float(v) for v in c[:6])
    trunc = float(c[6]) if len(c) > 6 else 20.0 * min(h, w) / 32
    layer = randn((n, 1, h, w), generator, x) * scale + loc
    layer = gaussian_filter(layer, sigma, mode="nearest", truncate=4.0)
    layer = torch.where(layer < thr, torch.zeros_like(layer), layer)
    if mud:
        m = gaussian_filter((layer > thr).to(x.dtype), c4, mode="nearest", truncate=4.0)
        m = torch.where(m < 0.8, torch.zeros_like(m), m)
        colour = torch.tensor((63.0, 42.0, 20.0), dtype=x.dtype, device=x.device).view(1, 3, 1, 1) / 255
        return (x * (1 - m) + colour * m).clamp(0, 1)
    liquid = torch.floor(layer.clamp(0, 1) * 255)  # astype(uint8); the clip guards the wrap-around
    edges = canny(liquid, 50, 150)
    dist = distance_chamfer(edges, trunc)
    dist = torch.floor(box3(dist) + 1e-6).clamp(0, 255)  # blur, astype(uint8)
    dist = equalize_hist(dist)
    emboss = torch.tensor([[-2.0, -1.0, 0.0], [-1.0, 1.0, 1.0], [0.0, 1.0, 2.0]], dtype=dist.dtype, device=x.device)
    dist = F.conv2d(pad2d(dist, 1, 1, "mirror"), emboss.view(1, 1, 3, 3)).clamp(0, 255)
    dist = torch.round(box3(dist))
    m = liquid.to(torch.float64) * dist
    mx = m.amax(dim=(1, 2, 3), keepdim=True)
    m = torch.where(mx > 0, m / mx.clamp_min(1e-12), torch.zeros_like(m)).to(x.dtype) * c4
    colour = torch.tensor((175.0, 238.0, 238.0), dtype=x.dtype, device=x.device).view(1, 3, 1, 1) / 255
    return (x + m * colour).clamp(0, 1)


__all__ = [
    "canny",
    "clipped_zoom",
    "distance_chamfer",
    "equalize_hist",
    "fog",
    "frost",
    "frost_texture",
    "motion_blur",
    "plasma_fractal",
    "snow",
    "spatter",
]
