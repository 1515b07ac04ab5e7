"""Oracle tests for the weather and digital corruptions (and spatter, saturate): closed forms,
Pillow / scipy / colorsys as references, determinism under the generator, and the
CIFAR-10-C statistics benchmark's comparison on locally written files."""

from __future__ import annotations

import colorsys
import importlib.util
import io
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
from PIL import Image

from robustlab import corruptions
from robustlab.corruptions import digital, weather
from robustlab.errors import DataError

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[2]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(n: int = 4, c: int = 3, side: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, c, side, side, generator=_gen(seed))


# -- tables ------------------------------------------------------------------------------------


def test_32_tables_are_make_cifar_c_constants() -> None:
    t = {n: corruptions.get(n).tables[32] for n in corruptions.available()}
    assert t["contrast"] == (0.75, 0.5, 0.4, 0.3, 0.15)
    assert t["brightness"] == (0.05, 0.1, 0.15, 0.2, 0.3)
    assert t["saturate"] == ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2))
    assert t["jpeg_compression"] == (80, 65, 58, 50, 40)
    assert t["pixelate"] == (0.95, 0.9, 0.85, 0.75, 0.65)
    assert t["fog"] == ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75))
    assert t["frost"] == ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45))
    assert t["snow"][0] == (0.1, 0.2, 1, 0.6, 8, 3, 0.95)
    assert t["snow"][4] == (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)
    assert t["spatter"][0][:6] == (0.62, 0.1, 0.7, 0.7, 0.5, 0)
    assert t["spatter"][3][:6] == (0.65, 0.1, 0.7, 0.69, 0.6, 1)
    assert t["spatter"][0][6] == 20
    assert t["elastic_transform"][1] == pytest.approx((32 * 0.05, 32 * 0.2, 32 * 0.07))
    assert t["elastic_transform"][4] == pytest.approx((3.2, 0.96, 0.96))


def test_small_tables_scale_lengths_only() -> None:
    snow8 = corruptions.get("snow").tables[8][0]
    assert snow8 == pytest.approx((0.1, 0.2, 1, 0.6, 2.0, 0.75, 0.95))  # radius, sigma x 8/32
    mud28 = corruptions.get("spatter").tables[28][3]
    assert mud28 == pytest.approx((0.65, 0.1, 0.7 * 0.875, 0.69, 0.6 * 0.875, 1, 17.5))
    water28 = corruptions.get("spatter").tables[28][0]
    assert water28[4] == 0.5  # water intensity is not a length
    assert corruptions.get("elastic_transform").tables[8][3] == pytest.approx((0.8, 0.32, 0.4))
    for name in ("contrast", "brightness", "saturate", "jpeg_compression", "pixelate", "fog", "frost"):
        assert corruptions.get(name).tables[8] == corruptions.get(name).tables[32]


# -- colour space, brightness, saturate, contrast ------------------------------------------------


def test_hsv_round_trip_and_colorsys() -> None:
    x = torch.rand(2, 3, 16, 16, generator=_gen(1))
    hsv = digital.rgb_to_hsv(x)
    assert torch.allclose(digital.hsv_to_rgb(hsv), x, atol=1e-6, rtol=0)
    flat = x.permute(0, 2, 3, 1).reshape(-1, 3).double().numpy()
    ref = np.array([colorsys.rgb_to_hsv(*p) for p in flat[:200]])
    ours = hsv.permute(0, 2, 3, 1).reshape(-1, 3).double().numpy()[:200]
    np.testing.assert_allclose(ours, ref, atol=1e-6)
    back = np.array([colorsys.hsv_to_rgb(*p) for p in ours])
    np.testing.assert_allclose(back, flat[:200], atol=1e-6)


def test_brightness_on_greys_adds_to_value_and_keeps_hue() -> None:
    g = torch.rand(3, 1, 8, 8, generator=_gen(2)).expand(-1, 3, -1, -1).contiguous()
    for sev, c in enumerate(corruptions.get("brightness").tables[32], start=1):
        out = corruptions.corrupt(g, "brightness", sev)
        assert torch.allclose(out, (g + c).clamp(0, 1), atol=1e-6, rtol=0)
    x = _images(2, 3, 32, seed=3) * 0.6  # V + .3 stays below 1: hue and saturation kept
    out = corruptions.corrupt(x, "brightness", 5)
    h_in, h_out = digital.rgb_to_hsv(x), digital.rgb_to_hsv(out)
    chromatic = (h_in[:, 1] > 0.05)
    assert torch.allclose(h_out[:, 0][chromatic], h_in[:, 0][chromatic], atol=1e-5)
    assert torch.allclose(h_out[:, 2], h_in[:, 2] + 0.3, atol=1e-6)


def test_saturate_leaves_greys_alone_at_additive_zero() -> None:
    g = torch.rand(3, 1, 8, 8, generator=_gen(4)).expand(-1, 3, -1, -1).contiguous()
    for sev in (1, 2, 3):  # c1 == 0
        assert torch.equal(corruptions.corrupt(g, "saturate", sev), g)
    assert not torch.allclose(corruptions.corrupt(g, "saturate", 5), g)  # c1 = .2 colours them


def test_contrast_closed_form() -> None:
    x = _images(3, 3, 32, seed=5)
    for sev, c in enumerate(corruptions.get("contrast").tables[32], start=1):
        m = x.mean(dim=(2, 3), keepdim=True)  # the reference: np.mean(x, axis=(0, 1)) of HWC
        assert torch.equal(corruptions.corrupt(x, "contrast", sev), ((x - m) * c + m).clamp(0, 1))


# -- JPEG, pixelate ----------------------------------------------------------------------------


def _pillow_jpeg(img: np.ndarray, q: int, mode: str) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img, mode=mode).save(buf, "JPEG", quality=q)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert(mode))


@pytest.mark.parametrize("channels", [3, 1])
def test_jpeg_equals_pillow(channels: int) -> None:
    x = _images(2, channels, 32, seed=6)
    u8 = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for sev, q in enumerate(corruptions.get("jpeg_compression").tables[32], start=1):
        out = corruptions.corrupt(x, "jpeg_compression", sev)
        for i in range(len(x)):
            ref = _pillow_jpeg(u8[i, ..., 0] if channels == 1 else u8[i], q, "L" if channels == 1 else "RGB")
            ours = (out[i] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            assert np.array_equal(ours.reshape(ref.shape), ref)


def test_box_matrix_equals_pillow_float_resize() -> None:
    rng = np.random.RandomState(0)
    for n_in, n_out in [(32, 30), (32, 27), (32, 20), (30, 32), (20, 32), (8, 7), (8, 5), (5, 8)]:
        img = rng.rand(4, n_in).astype(np.float32)
        ref = np.asarray(Image.fromarray(img, mode="F").resize((n_out, 4), Image.Resampling.BOX))
        ours = (torch.from_numpy(img).double() @ digital.box_resize_matrix(n_in, n_out).T).numpy()
        np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_pixelate_keeps_block_constant_images_and_averages_blocks() -> None:
    small = torch.rand(2, 3, 16, 16, generator=_gen(7))
    blocky = small.repeat_interleave(2, 2).repeat_interleave(2, 3)
    assert torch.allclose(corruptions.corrupt(blocky, "pixelate", 1, params=0.5), blocky, atol=1e-6)
    x = _images(2, 3, 32, seed=8)
    means = torch.nn.functional.avg_pool2d(x, 2).repeat_interleave(2, 2).repeat_interleave(2, 3)
    assert torch.allclose(corruptions.corrupt(x, "pixelate", 1, params=0.5), means, atol=1e-6)
    x8 = _images(2, 3, 8, seed=9)
    assert (corruptions.corrupt(x8, "pixelate", 1) - x8).abs().max() > 0.05  # 8 -> 7 -> 8 changes it


# -- fog -----------------------------------------------------------------------------------------


def test_plasma_fractal_deterministic_and_normalised() -> None:
    like = torch.zeros(1)
    a = weather.plasma_fractal(3, 32, 2.0, _gen(0), like)
    b = weather.plasma_fractal(3, 32, 2.0, _gen(0), like)
    c = weather.plasma_fractal(3, 32, 2.0, _gen(1), like)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (3, 32, 32)
    flat = a.reshape(3, -1)
    assert torch.all(flat.min(1).values == 0) and torch.allclose(flat.max(1).values, torch.ones(3))
    with pytest.raises(ValueError):
        weather.plasma_fractal(1, 24, 2.0, _gen(0), like)


def test_fog_closed_form_given_the_fractal() -> None:
    x = _images(2, 3, 28, seed=10)
    c0, decay = corruptions.get("fog").tables[28][3]
    out = corruptions.corrupt(x, "fog", 4, generator=_gen(5))
    p = weather.plasma_fractal(2, 32, decay, _gen(5), x)[:, None, :28, :28]  # 28 -> map size 32
    mx = x.amax(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(out, ((x + c0 * p) * mx / (mx + c0)).clamp(0, 1), atol=1e-6)


# -- elastic -------------------------------------------------------------------------------------


def test_elastic_zero_displacement_is_identity() -> None:
    x = _images(2, 3, 32, seed=11)
    assert torch.allclose(corruptions.corrupt(x, "elastic_transform", 1, params=(0.0, 0.0, 0.0)), x, atol=1e-5)
    moved = corruptions.corrupt(x, "elastic_transform", 1, params=(3.2, 1.28, 0.0))
    assert (moved - x).abs().mean() > 0.01
    again = corruptions.corrupt(x, "elastic_transform", 1, params=(3.2, 1.28, 0.0))
    assert torch.equal(moved, again)


def test_elastic_pieces_match_scipy() -> None:
    u = torch.rand(2, 1, 32, 32, generator=_gen(12)) * 2 - 1
    for sigma in (6.4, 1.28, 0.96):
        ours = digital.gaussian_filter(u.double(), sigma, mode="reflect", truncate=3.0)
        for i in range(2):
            ref = ndi.gaussian_filter(u[i, 0].double().numpy(), sigma, mode="reflect", truncate=3.0)
            np.testing.assert_allclose(ours[i, 0].numpy(), ref, atol=1e-10)
    x = torch.rand(1, 2, 16, 16, generator=_gen(13))
    d = torch.rand(1, 2, 16, 16, generator=_gen(14)) * 6 - 3  # displacements up to 3 px, past the borders
    ours = digital.displace(x, d[:, 0], d[:, 1])
    yy, xx = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
    for ch in range(2):
        ref = ndi.map_coordinates(x[0, ch].double().numpy(), [yy + d[0, 1].numpy(), xx + d[0, 0].numpy()],
                                  order=1, mode="reflect")
        np.testing.assert_allclose(ours[0, ch].numpy(), ref, atol=1e-5)
    # an affine that is a pure translation by (2, -1) with BORDER_REFLECT_101 at the edges
    m = torch.tensor([[[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]]], dtype=torch.float64)
    warped = digital.warp_affine(x, m)
    cols = torch.tensor([abs(c - 2) for c in range(16)])  # out(x) = in(x - 2), reflect-101
    rows = torch.tensor([r + 1 if r + 1 < 16 else 14 for r in range(16)])
    assert torch.allclose(warped, x[:, :, rows][:, :, :, cols], atol=1e-5)


# -- snow ----------------------------------------------------------------------------------------


def test_motion_blur_taps_are_imagemagicks() -> None:
    x = torch.zeros(1, 1, 9, 20)
    x[0, 0, 4, 3] = 1.0
    out = weather.motion_blur(x, 4, 2.0, torch.tensor([0.0]))  # angle 0: taps at +0..+8 columns
    w = torch.exp(-torch.arange(9.0) ** 2 / 8)
    w = w / w.sum()
    expect = torch.zeros(20)
    for i in range(9):  # out(x) = sum_i w_i in(x + i): the impulse at 3 shows up at 3 - i
        if 3 - i >= 0:
            expect[3 - i] += w[i]
    assert torch.allclose(out[0, 0, 4], expect, atol=1e-6)
    dx, dy, _ = weather.motion_blur_offsets(2, torch.tensor([-90.0]))
    assert dx.tolist() == [[0, 0, 0, 0, 0]] and dy.tolist() == [[0, -1, -2, -3, -4]]


# -- spatter pieces (OpenCV semantics) ------------------------------------------------------------


def test_canny_distance_and_equalisation_closed_forms() -> None:
    img = torch.zeros(1, 1, 10, 10)
    img[..., 5:] = 200.0  # vertical step between columns 4 and 5
    edges = weather.canny(img, 50, 150)
    cols = edges[0, 0].any(0).nonzero().flatten().tolist()
    assert cols in ([4], [5]) and edges[0, 0].sum() == 10  # one full-height line
    zero = torch.zeros(1, 1, 7, 7, dtype=torch.bool)
    zero[0, 0, 3, 3] = True
    d = weather.distance_chamfer(zero, 20.0)[0, 0]
    assert d[3, 3] == 0 and d[3, 4] == 1 and d[4, 4] == pytest.approx(1.4)
    assert d[4, 5] == pytest.approx(2.1969) and d[3, 5] == 2 and d[5, 5] == pytest.approx(2.8)
    v = torch.tensor([[[[3.0, 3.0, 5.0, 9.0]]]])
    # hist: 3 x2, 5, 9; v0 = 3, total - h0 = 2: lut[3] = 0, lut[5] = round(255/2), lut[9] = 255
    assert weather.equalize_hist(v).flatten().tolist() == [0.0, 0.0, 128.0, 255.0]
    assert weather.equalize_hist(torch.full((1, 1, 2, 2), 7.0)).flatten().tolist() == [7.0] * 4


def test_spatter_branches() -> None:
    x = _images(4, 3, 32, seed=15)
    water = corruptions.corrupt(x, "spatter", 3, generator=_gen(0))
    assert torch.all(water >= x - 1e-6)  # water only adds light
    mud = corruptions.corrupt(x, "spatter", 5, generator=_gen(0))
    changed = (mud - x).abs().sum(1) > 1e-6
    assert changed.any()
    # where mud lies: x (1 - m) + m brown, i.e. on the segment from x to brown
    brown = torch.tensor([63.0, 42.0, 20.0]).view(1, 3, 1, 1) / 255
    m = (x - mud) / (x - brown)
    m0 = m[:, :1].expand_as(m)
    assert torch.allclose(m[changed.unsqueeze(1).expand_as(m)], m0[changed.unsqueeze(1).expand_as(m)], atol=1e-3)


# -- random corruptions: deterministic, seed-dependent; frost's statistics -------------------------


@pytest.mark.parametrize("name", ["frost", "snow", "spatter", "fog", "elastic_transform"])
def test_random_corruptions_deterministic_and_seeded(name: str) -> None:
    x = _images(3, 3, 32, seed=16)
    for sev in (1, 4):
        a = corruptions.corrupt(x, name, sev, generator=_gen(1))
        b = corruptions.corrupt(x, name, sev, generator=_gen(1))
        c = corruptions.corrupt(x, name, sev, generator=_gen(2))
        assert torch.equal(a, b)
        assert not torch.equal(a, c)


def test_frost_texture_matches_the_photographs_brightness() -> None:
    tex = weather.frost_texture(256, 32, 32, _gen(0), torch.zeros(1))
    grey = tex.mean(1)
    assert abs(grey.mean().item() - weather.FROST_MEAN) < 0.03
    assert abs(grey.std(dim=(1, 2)).mean().item() - weather.FROST_STD) < 0.02
    ch = tex.mean(dim=(0, 2, 3))
    assert ch[0] < ch[1] < ch[2]  # bluish white, as the photographs
    x = _images(4, 3, 32, seed=17)
    out = corruptions.corrupt(x, "frost", 1, generator=_gen(3))
    again = weather.frost_texture(4, 32, 32, _gen(3), x)
    assert torch.allclose(out, (x + 0.2 * again).clamp(0, 1), atol=1e-6)


# -- the CIFAR-10-C statistics benchmark ------------------------------------------------------------


def _load_bench():
    path = ROOT / "benchmarks" / "corruptions" / "cifar10c_stats.py"
    spec = importlib.util.spec_from_file_location("cifar10c_stats_bench", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_cifar10c_stats_comparison_on_local_files(tmp_path: Path) -> None:
    bench = _load_bench()
    rng = np.random.RandomState(0)
    block, n = 6, 4
    clean = rng.randint(10, 200, size=(block, 32, 32, 3)).astype(np.uint8)
    # a fake released file: severity s adds 5 s to every value
    fake = np.concatenate([clean + 5 * s for s in range(1, 6)]).astype(np.uint8)
    np.save(tmp_path / "fog.npy", fake)
    stats = bench.released_stats(tmp_path / "fog.npy", clean[:n], block=block)
    assert stats == pytest.approx([5 * s / 255 for s in range(1, 6)])
    rows = bench.compare({"fog": stats, "snow": [0.1] * 5}, {"fog": [2 * v for v in stats]})
    assert [r["corruption"] for r in rows] == ["fog"] * 5
    assert all(r["ratio"] == pytest.approx(2.0) for r in rows)
    assert rows[0]["diff"] == pytest.approx(stats[0])
    np.save(tmp_path / "bad.npy", fake.astype(np.float32))
    with pytest.raises(DataError, match="expected uint8"):
        bench.released_stats(tmp_path / "bad.npy", clean[:n], block=block)
    ours = bench.ours_stats(clean[:n], "contrast")  # our side runs and grows with severity
    assert ours == sorted(ours) and ours[0] > 0
    with pytest.raises(DataError, match="does not exist"):
        bench.main(["--cifar10c", str(tmp_path / "absent"), "--cifar10", str(tmp_path)])
