"""Properties every registered corruption must have, at every severity and table size:
shape, dtype and device kept, values in [0, 1], determinism under the generator, (for
random ones) dependence on the seed, no use of the global RNGs, and a mean absolute
change that does not decrease with severity. Parametrised over
``robustlab.corruptions.available()``, so corruptions added later are covered too."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from robustlab import corruptions
from robustlab.errors import ConfigError, InvalidInputError, ShapeMismatchError, UnknownNameError

torch.set_num_threads(1)

NAMES = corruptions.available()
#: (side, channels, images): a colour CIFAR-like batch, a greyscale MNIST-like batch, and
#: colour 8x8 (more images there so that the statistics are not too noisy)
BATCHES = {32: (3, 4), 28: (1, 4), 8: (3, 16)}

#: Where a table is, truly, not monotone in mean |x_c - x|: (name, side) -> the severities s
#: allowed to change less than s - 1. Numbers: the mean absolute change at severities 1..5
#: on the batches below (seed 0), measured when the entry was written.
NON_MONOTONE: dict[tuple[str, int], set[int]] = {
    # 28x28 radii (32x32 ones x 0.875) are .2625 .35 .4375 .875 1.3125: severity 4's disk
    # is the single centre pixel (radius < 1) with anti-alias sigma 0.175, ~the identity:
    # 5.9e-4 2.3e-3 4.4e-3 2.4e-8 7.2e-3.
    ("defocus_blur", 28): {4},
    # glass blur: severities 1 -> 2 only change a blur weight of 3e-4 (0.0404, 0.0403), and
    # a larger sigma (2 -> 3, 4 -> 5) smooths the shuffled pixels back toward their
    # neighbourhood mean, i.e. toward the smooth original: 32x32 0.0404 0.0403 0.0357
    # 0.0561 0.0498; 28x28 0.0421 0.0421 0.0401 0.0601 0.0573. What does hold: every
    # two-pass severity (4, 5) changes more than every one-pass one (1-3); asserted below.
    ("glass_blur", 32): {2, 3, 5},
    ("glass_blur", 28): {2, 3, 5},
    # elastic_transform: the CIFAR table shrinks the random affine (0.08 -> 0.03 x 32 px)
    # while it grows the elastic field, and the affine dominates the change:
    # 32x32 0.0549 0.0485 0.0426 0.0388 0.0315; 28x28 0.0516 0.0457 0.0403 0.0376 0.032;
    # 8x8 0.0616 0.0555 0.0594 0.0676 0.0623.
    ("elastic_transform", 32): {2, 3, 4, 5},
    ("elastic_transform", 28): {2, 3, 4, 5},
    ("elastic_transform", 8): {2, 5},
    # saturate: factors 0.3, 0.1, 1.5, 2 (+0.1), 2.5 (+0.2): severity 3 *raises* saturation
    # by half, a smaller change than severity 2's 0.1x: 32x32 0.0955 0.123 0.0655 0.126
    # 0.155; 8x8 0.0986 0.127 0.0652 0.129 0.159.
    ("saturate", 32): {3},
    ("saturate", 8): {3},
    # pixelate 32x32: 32 -> 28 -> 32 (0.9) vs 32 -> 27 -> 32 (0.85) box resampling;
    # 0.00396 0.00936 0.0091 0.0151 0.0208.
    ("pixelate", 32): {3},
    # frost: clip(c0 x + c1 frost) with c = (1,.2) (1,.3) (.9,.4) (.85,.4) (.75,.45): from
    # severity 3 on, darkening the image (c0 < 1) offsets the added frost: 32x32 0.130 0.194
    # 0.211 0.188 0.173; 28x28 0.120 0.179 0.190 0.166 0.147; 8x8 0.120 0.178 0.188 0.164 0.145.
    ("frost", 32): {4, 5},
    ("frost", 28): {4, 5},
    ("frost", 8): {4, 5},
    # spatter: severities 1-3 add water, 4-5 paint mud (another mechanism) over fewer pixels:
    # 32x32 0.0041 0.0103 0.0267 0.0097 0.0165; 28x28 0.0076 0.0146 0.0285 0.0144 0.0231.
    ("spatter", 32): {4},
    ("spatter", 28): {4},
}
#: (name, side) where the scaled table leaves the images unchanged at every severity:
#: 8x8 defocus radii are .075-.375 (single-pixel disks) with anti-alias sigmas <= 0.15,
#: whose 3x3 neighbour weight is <= exp(-22).
IDENTITY: set[tuple[str, int]] = {("defocus_blur", 8)}


def smooth_batch(side: int, channels: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, channels, 5, 5, generator=g)
    fine = torch.rand(n, channels, max(side // 3, 2), max(side // 3, 2), generator=g)
    x = 0.7 * F.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)
    x = x + 0.3 * F.interpolate(fine, size=(side, side), mode="bilinear", align_corners=False)
    return x.clamp(0, 1)


def run(x: torch.Tensor, name: str, severity: int, seed: int) -> torch.Tensor:
    return corruptions.corrupt(x, name, severity, generator=torch.Generator().manual_seed(seed))


def test_every_corruption_has_tables_for_32_28_8():
    for name in NAMES:
        entry = corruptions.get(name)
        assert {32, 28, 8} <= set(entry.tables), name
        assert entry.family in corruptions.FAMILIES


@pytest.mark.parametrize("side", sorted(BATCHES))
@pytest.mark.parametrize("name", NAMES)
def test_corruption_properties(name: str, side: int):
    channels, n = BATCHES[side]
    x = smooth_batch(side, channels, n)
    entry = corruptions.get(name)
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    change = []
    for severity in corruptions.SEVERITIES:
        a = run(x, name, severity, 0)
        assert a.shape == x.shape and a.dtype == x.dtype and a.device == x.device
        assert torch.isfinite(a).all()
        assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
        assert torch.equal(a, run(x, name, severity, 0)), "not deterministic under a fixed generator"
        b = run(x, name, severity, 1)
        if entry.random:
            assert not torch.equal(a, b), "random corruption ignores the generator"
        else:
            assert torch.equal(a, b), "deterministic corruption depends on the generator"
        change.append(float((a - x).abs().mean()))
    # nothing drawn from the global RNGs
    assert torch.equal(torch.get_rng_state(), torch_state)
    np_after = np.random.get_state()
    assert np_after[0] == np_state[0] and np.array_equal(np_after[1], np_state[1]) and np_after[2:] == np_state[2:]
    if (name, side) in IDENTITY:
        assert max(change) < 1e-6, change
        return
    assert change[-1] > 0, f"severity 5 leaves the {side}x{side} batch unchanged: {change}"
    allowed = NON_MONOTONE.get((name, side), set())
    for s in range(2, 6):
        if s not in allowed:
            # 1e-6: tables equal up to negligible kernel tails (motion blur 3 vs 4: < 1e-9 weights)
            assert change[s - 1] >= change[s - 2] - 1e-6, f"{name} at {side}x{side}: {change}"
    if name == "glass_blur":
        assert min(change[3:]) > max(change[:3]), change


@pytest.mark.parametrize("name", NAMES)
def test_keeps_float64_and_empty_batches(name: str):
    x = smooth_batch(8, 3, 2).double()
    out = run(x, name, 3, 0)
    assert out.dtype == torch.float64 and out.shape == x.shape
    empty = torch.zeros(0, 3, 32, 32)
    assert run(empty, name, 3, 0).shape == empty.shape


@pytest.mark.parametrize("severity", [0, 6, 2.5, -1, True, "3"])
def test_bad_severity_is_a_config_error(severity):
    with pytest.raises(ConfigError, match="severity must be an integer from 1 to 5"):
        corruptions.corrupt(smooth_batch(32, 3, 1), "gaussian_noise", severity)


def test_unknown_name_lists_close_matches():
    with pytest.raises(UnknownNameError, match="gaussian_noise"):
        corruptions.corrupt(smooth_batch(32, 3, 1), "gausian_noise", 1)


def test_size_without_table_needs_params():
    x = smooth_batch(16, 3, 2)
    with pytest.raises(ShapeMismatchError) as err:
        corruptions.corrupt(x, "defocus_blur", 2)
    msg = str(err.value)
    assert "16x16" in msg and "32x32" in msg and "28x28" in msg and "8x8" in msg and "params=" in msg
    # with params= it works, and one value equals the same value inside a 5-entry table
    one = corruptions.corrupt(x, "gaussian_blur", 2, params=0.5)
    five = corruptions.corrupt(x, "gaussian_blur", 2, params=[0.1, 0.5, 0.9, 1.0, 2.0])
    assert torch.equal(one, five)


@pytest.mark.parametrize("bad", [1.5, -0.1, float("nan")])
def test_inputs_outside_unit_interval_are_refused(bad: float):
    x = smooth_batch(32, 3, 2)
    x[1, 0, 3, 3] = bad
    with pytest.raises(InvalidInputError):
        corruptions.corrupt(x, "gaussian_noise", 1)
