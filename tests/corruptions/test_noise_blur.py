"""Oracles for the noise and blur corruptions: the noise statistics the tables promise,
blur kernels against their definitions and against scipy (which skimage's ``gaussian``
and the reference's ``clipped_zoom`` call), and glass blur's shuffle against a literal
replay of the reference's pixel-by-pixel swap loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from robustlab import corruptions
from robustlab.corruptions import blur, noise
from robustlab.corruptions.base import randint

torch.set_num_threads(1)

SEV = corruptions.SEVERITIES


def grey(value: float, shape: tuple[int, ...] = (16, 3, 32, 32)) -> torch.Tensor:
    return torch.full(shape, value)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def delta(side: int = 32, channels: int = 1) -> torch.Tensor:
    x = torch.zeros(1, channels, side, side, dtype=torch.float64)
    x[..., side // 2, side // 2] = 1.0
    return x


def to_hwc(x: torch.Tensor) -> np.ndarray:
    return x[0].permute(1, 2, 0).double().numpy()


# -- tables -------------------------------------------------------------------------------------
def test_32x32_tables_are_make_cifar_c_constants():
    t = {name: corruptions.get(name).tables[32] for name in corruptions.available()}
    assert t["gaussian_noise"] == (0.04, 0.06, 0.08, 0.09, 0.10)
    assert t["shot_noise"] == (500, 250, 100, 75, 50)
    assert t["impulse_noise"] == (0.01, 0.02, 0.03, 0.05, 0.07)
    assert t["speckle_noise"] == (0.06, 0.1, 0.12, 0.16, 0.2)
    assert t["gaussian_blur"] == (0.4, 0.6, 0.7, 0.8, 1.0)
    assert t["glass_blur"] == ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2))
    assert t["defocus_blur"] == ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1))
    assert t["motion_blur"] == ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5))
    # np.arange(1, stop, 0.01): 7, 12, 16, 21, 26 factors, from 1.0 to 1.06 / 1.11 / 1.15 / 1.20 / 1.25
    zooms = t["zoom_blur"]
    assert [len(z) for z in zooms] == [7, 12, 16, 21, 26]
    assert [round(z[-1], 6) for z in zooms] == [1.06, 1.11, 1.15, 1.2, 1.25]
    assert all(z[0] == 1.0 for z in zooms)


def test_other_sides_scale_lengths_and_keep_intensities():
    for name in ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "zoom_blur"):
        tabs = corruptions.get(name).tables
        assert tabs[28] == tabs[32] == tabs[8]
    gb = corruptions.get("gaussian_blur").tables
    assert gb[28] == pytest.approx([0.35, 0.525, 0.6125, 0.7, 0.875])
    assert gb[8] == pytest.approx([0.1, 0.15, 0.175, 0.2, 0.25])
    assert corruptions.get("defocus_blur").tables[28][4] == pytest.approx((1.3125, 0.0875))
    assert corruptions.get("motion_blur").tables[8][4] == pytest.approx((2.25, 0.625))
    for side in (28, 8):  # max_delta stays a whole pixel, at least 1; iterations are kept
        glass = corruptions.get("glass_blur").tables[side]
        assert [g[1:] for g in glass] == [(1, 1), (1, 1), (1, 1), (1, 2), (1, 2)]
        assert [g[0] for g in glass] == pytest.approx([s * side / 32 for s, _, _ in blur.GLASS_BLUR_32])


# -- noise --------------------------------------------------------------------------------------
@pytest.mark.parametrize("severity", SEV)
def test_gaussian_noise_has_the_table_std(severity: int):
    x = grey(0.5)
    d = corruptions.corrupt(x, "gaussian_noise", severity, generator=gen()) - x
    std = noise.GAUSSIAN_NOISE[severity - 1]
    assert float(d.std()) == pytest.approx(std, rel=0.02)
    assert abs(float(d.mean())) < 5 * std / math.sqrt(d.numel())


@pytest.mark.parametrize("value", [0.2, 0.5])
@pytest.mark.parametrize("severity", SEV)
def test_shot_noise_keeps_the_mean_with_variance_x_over_rate(severity: int, value: float):
    x = grey(value)
    out = corruptions.corrupt(x, "shot_noise", severity, generator=gen())
    rate = noise.SHOT_NOISE[severity - 1]
    var = value / rate
    assert abs(float(out.mean()) - value) < 5 * math.sqrt(var / out.numel())
    assert float(out.var()) == pytest.approx(var, rel=0.03)
    # values are counts / rate
    counts = out * rate
    assert torch.allclose(counts, counts.round(), atol=1e-3)


@pytest.mark.parametrize("severity", SEV)
def test_impulse_noise_flips_a_fraction_amount_half_to_salt(severity: int):
    x = grey(0.5)
    out = corruptions.corrupt(x, "impulse_noise", severity, generator=gen())
    amount, n = noise.IMPULSE_NOISE[severity - 1], x.numel()
    changed = out != x
    assert set(out[changed].unique().tolist()) <= {0.0, 1.0}
    tol = 5 * math.sqrt(amount * (1 - amount) / n)
    assert abs(float(changed.float().mean()) - amount) < tol
    salt = float((out == 1).float().mean())
    assert abs(salt - amount / 2) < 5 * math.sqrt(amount / 2 / n)


@pytest.mark.parametrize("severity", SEV)
def test_speckle_noise_has_variance_x2_std2(severity: int):
    x = grey(0.5)
    d = corruptions.corrupt(x, "speckle_noise", severity, generator=gen()) - x
    std = noise.SPECKLE_NOISE[severity - 1]
    assert float(d.std()) == pytest.approx(0.5 * std, rel=0.02)
    # multiplicative: black stays black
    z = torch.zeros(2, 3, 32, 32)
    assert torch.equal(corruptions.corrupt(z, "speckle_noise", severity, generator=gen()), z)


def test_noise_draws_per_value_on_greyscale():
    x = grey(0.5, (8, 1, 28, 28))
    d = corruptions.corrupt(x, "gaussian_noise", 5, generator=gen()) - x
    assert float(d.std()) == pytest.approx(0.10, rel=0.03)


# -- padding and gaussian blur ------------------------------------------------------------------
@pytest.mark.parametrize("pad", [1, 3, 7, 20])
def test_pad2d_matches_numpy_reflect_and_edge(pad: int):
    x = torch.rand(2, 3, 8, 5, generator=gen(), dtype=torch.float64)
    widths = ((0, 0), (0, 0), (pad, pad), (pad, pad))
    assert np.array_equal(blur.pad2d(x, pad, pad, "reflect").numpy(), np.pad(x.numpy(), widths, mode="reflect"))
    assert np.array_equal(blur.pad2d(x, pad, pad, "edge").numpy(), np.pad(x.numpy(), widths, mode="edge"))


@pytest.mark.parametrize("side", [32, 28, 8])
def test_gaussian_blur_of_a_constant_is_the_constant(side: int):
    x = grey(0.37, (2, 3, side, side))
    for s in SEV:
        assert torch.allclose(corruptions.corrupt(x, "gaussian_blur", s), x, atol=1e-6)


@pytest.mark.parametrize("sigma", [0.8, 1.0, 1.5, 2.5])
def test_gaussian_blur_of_a_delta_has_mass_1_and_variance_sigma2(sigma: float):
    out = blur.gaussian_filter(delta(), sigma)[0, 0]
    assert float(out.sum()) == pytest.approx(1.0, abs=1e-12)
    i = torch.arange(32, dtype=torch.float64) - 16
    rows, cols = out.sum(1), out.sum(0)
    assert float((rows * i).sum()) == pytest.approx(0.0, abs=1e-12)
    # sigma^2, up to the sampling error ~exp(-2 pi^2 sigma^2) (< 4e-6 here) and the 4-sigma
    # truncation, which drops ~0.11% of a Gaussian's variance
    assert float((rows * i**2).sum()) == pytest.approx(sigma**2, rel=2e-3)
    assert float((cols * i**2).sum()) == pytest.approx(sigma**2, rel=2e-3)
    # separable: the 2-D kernel is the outer product of its marginals
    assert torch.allclose(out, torch.outer(rows, cols), atol=1e-15)


@pytest.mark.parametrize("severity", SEV)
def test_gaussian_blur_is_skimage_gaussian(severity: int):
    # skimage.filters.gaussian(multichannel=True) = scipy's gaussian_filter, mode nearest, truncate 4
    x = torch.rand(1, 3, 32, 32, generator=gen(), dtype=torch.float64)
    sigma = blur.GAUSSIAN_BLUR_32[severity - 1]
    ref = ndi.gaussian_filter(to_hwc(x), (sigma, sigma, 0), mode="nearest", truncate=4.0)
    assert np.abs(ref - to_hwc(blur.gaussian_blur(x, sigma))).max() < 1e-12
    # through corrupt() (float32)
    assert np.abs(ref - to_hwc(corruptions.corrupt(x, "gaussian_blur", severity))).max() < 1e-6


# -- defocus ------------------------------------------------------------------------------------
def test_disk_kernels_of_the_32x32_table():
    cross = torch.tensor([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=torch.float64) / 5
    box = torch.full((3, 3), 1 / 9, dtype=torch.float64)
    # severity 4: radius 1 -> the 5-pixel cross (sigma 0.2 leaks exp(-12.5) per neighbour)
    k4 = blur.disk_kernel(1, 0.2)
    assert torch.allclose(k4[1:-1, 1:-1], cross, atol=1e-4) and float(k4.sum()) == pytest.approx(1)
    assert torch.allclose(blur.disk_kernel(1.5, 0.1)[1:-1, 1:-1], box, atol=1e-12)
    # severities 1-3: radius < 1 is one pixel, so the kernel is the 3x3 anti-alias Gaussian
    for r, a in blur.DEFOCUS_BLUR_32[:3]:
        g = torch.exp(-torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64) / (2 * a * a))
        g = g / g.sum()
        assert torch.allclose(blur.disk_kernel(r, a), torch.outer(g, g), atol=1e-15)


@pytest.mark.parametrize("severity", SEV)
def test_defocus_blur_is_reflect101_correlation_with_the_disk(severity: int):
    x = torch.rand(1, 3, 32, 32, generator=gen(), dtype=torch.float64)
    k = blur.disk_kernel(*blur.DEFOCUS_BLUR_32[severity - 1]).numpy()
    img = to_hwc(x)
    ref = np.stack([ndi.correlate(img[..., c], k, mode="mirror") for c in range(3)], -1)  # mirror = REFLECT_101
    got = to_hwc(blur.defocus_blur(x, blur.DEFOCUS_BLUR_32[severity - 1]))
    assert np.abs(np.clip(ref, 0, 1) - got).max() < 1e-12
    # a delta comes out as the kernel, mass 1
    out = blur.defocus_blur(delta(), blur.DEFOCUS_BLUR_32[severity - 1])[0, 0]
    r = k.shape[0] // 2
    assert np.allclose(out[16 - r: 17 + r, 16 - r: 17 + r].numpy(), k, atol=1e-12)
    assert float(out.sum()) == pytest.approx(1.0, abs=1e-12)


# -- motion -------------------------------------------------------------------------------------
def test_motion_kernel_is_imagemagicks_half_gaussian():
    k = blur.motion_kernel(6, 2)
    assert len(k) == 13  # 2 ceil(radius) + 1
    i = torch.arange(13, dtype=torch.float64)
    assert torch.allclose(k, torch.exp(-(i**2) / 8) / torch.exp(-(i**2) / 8).sum(), atol=1e-15)
    # severities 3 and 4 differ only in taps 13..16 of weight < 1e-9
    k4 = blur.motion_kernel(8, 2)
    assert len(k4) == 17 and float(k4[13:].sum()) < 1e-9
    assert torch.allclose(k4[:13], k, atol=1e-9)


@pytest.mark.parametrize("angle,axis", [(0.0, "row"), (90.0, "col"), (180.0, "row_back")])
def test_line_blur_spreads_a_delta_along_the_angle(angle: float, axis: str):
    k = blur.motion_kernel(6, 1.5)
    out = blur.line_blur(delta(), 6, 1.5, torch.tensor([angle]))[0, 0]
    line = torch.zeros(13, dtype=torch.float64)
    if axis == "row":  # output(c) = sum_i k_i x(c + i): the delta lands at c = 16 - i
        line = out[16, 4:17].flip(0)
    elif axis == "col":
        line = out[4:17, 16].flip(0)
    else:
        line = out[16, 16:29]
    assert torch.allclose(line, k, atol=1e-12)
    assert float(out.sum()) == pytest.approx(1.0, abs=1e-12)


def test_line_blur_uses_imagemagicks_rounded_offsets():
    # at 30 degrees tap i samples (ceil(i cos - 1/2), ceil(i sin - 1/2))
    k = blur.motion_kernel(3, 5)
    out = blur.line_blur(delta(), 3, 5, torch.tensor([30.0]))[0, 0]
    expect = torch.zeros(32, 32, dtype=torch.float64)
    th = math.radians(30)
    for i in range(len(k)):
        dx, dy = math.ceil(i * math.cos(th) - 0.5), math.ceil(i * math.sin(th) - 0.5)
        expect[16 - dy, 16 - dx] += k[i]
    assert torch.allclose(out, expect, atol=1e-12)


def test_motion_blur_keeps_constants_and_draws_one_angle_per_image():
    x = grey(0.6, (3, 3, 32, 32))
    assert torch.allclose(corruptions.corrupt(x, "motion_blur", 5, generator=gen()), x, atol=1e-6)
    img = torch.rand(1, 3, 32, 32, generator=gen())
    out = corruptions.corrupt(img.expand(4, -1, -1, -1).clone(), "motion_blur", 5, generator=gen())
    assert not torch.equal(out[0], out[1]) and not torch.equal(out[2], out[3])


# -- zoom ---------------------------------------------------------------------------------------
def reference_zoom_blur(img: np.ndarray, zooms: tuple[float, ...]) -> np.ndarray:
    """make_cifar_c.py's zoom_blur, written out with scipy, on one HxWxC image."""
    h = img.shape[0]
    acc = np.zeros_like(img)
    for z in zooms:
        ch = int(np.ceil(h / z))
        top = (h - ch) // 2
        zoomed = ndi.zoom(img[top:top + ch, top:top + ch], (z, z, 1), order=1)
        t = (zoomed.shape[0] - h) // 2
        acc += zoomed[t:t + h, t:t + h]
    return np.clip((img + acc) / (len(zooms) + 1), 0, 1)


@pytest.mark.parametrize("side", [32, 28, 8])
def test_zoom_blur_is_the_reference_recipe(side: int):
    x = torch.rand(2, 3, side, side, generator=gen(), dtype=torch.float64)
    for s in SEV:
        got = corruptions.corrupt(x, "zoom_blur", s)
        for i in range(2):
            ref = reference_zoom_blur(to_hwc(x[i: i + 1]), blur.ZOOM_BLUR[s - 1])
            assert np.abs(ref - to_hwc(got[i: i + 1])).max() < 1e-6  # corrupt() works in float32


def test_zoom_matrices_keep_constants():
    for n in (32, 28, 8):
        for z in blur.ZOOM_BLUR[-1]:
            assert torch.allclose(blur.zoom_matrix(n, z).sum(1), torch.ones(n, dtype=torch.float64))


# -- glass --------------------------------------------------------------------------------------
def reference_swaps(n: int, h: int, w: int, max_delta: int, iterations: int, seed: int) -> torch.Tensor:
    """The reference's loop, pixel by pixel and image by image, on index images, with the
    offsets drawn as glass_permutation draws them (same generator, same layout)."""
    positions = [(r, c) for r in range(h - max_delta, max_delta, -1) for c in range(w - max_delta, max_delta, -1)]
    d = randint(-max_delta, max_delta, (iterations, len(positions), n, 2), gen(seed), torch.device("cpu"))
    out = torch.empty(n, h * w, dtype=torch.long)
    for img in range(n):
        grid = np.arange(h * w).reshape(h, w)
        for it in range(iterations):
            for k, (r, c) in enumerate(positions):
                dx, dy = int(d[it, k, img, 0]), int(d[it, k, img, 1])
                grid[r, c], grid[r + dy, c + dx] = grid[r + dy, c + dx], grid[r, c]
        out[img] = torch.from_numpy(grid.reshape(-1))
    return out


@pytest.mark.parametrize("h,w,max_delta,iterations", [(32, 32, 1, 2), (12, 9, 2, 1), (8, 8, 1, 2)])
def test_glass_permutation_replays_the_reference_swaps(h: int, w: int, max_delta: int, iterations: int):
    got = blur.glass_permutation(3, h, w, max_delta, iterations, gen(5))
    assert torch.equal(got, reference_swaps(3, h, w, max_delta, iterations, 5))
    assert torch.equal(got.sort(1).values, torch.arange(h * w).expand(3, -1))


def test_glass_blur_without_blur_moves_whole_pixels_up_and_left():
    x = torch.rand(2, 3, 32, 32, generator=gen())
    out = corruptions.corrupt(x, "glass_blur", 1, generator=gen(), params=(0.0, 1, 1))
    for i in range(2):
        before = x[i].reshape(3, -1).T.tolist()
        after = out[i].reshape(3, -1).T.tolist()
        assert sorted(map(tuple, before)) == sorted(map(tuple, after))  # same pixels, channels together
    # offsets in {-1, 0}: row 0 and column 0 are never touched, and pixels do move
    assert torch.equal(out[..., 0, :], x[..., 0, :]) and torch.equal(out[..., :, 0], x[..., :, 0])
    assert float((out != x).float().mean()) > 0.3
