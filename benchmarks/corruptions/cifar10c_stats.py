"""How far do robustlab's corruptions move CIFAR-10 images, next to the released CIFAR-10-C?

For every corruption and severity: the mean absolute change ``mean |x_c - x|`` (in [0, 1]
units, over pixels, channels and images) of the released CIFAR-10-C file (Hendrycks &
Dietterich 2019, Zenodo 2535967) and of robustlab's implementation on the same clean test
images, their difference and ratio. A ratio far from 1 flags a constant or algorithm that
does not match (frost is expected to differ in texture, not in mean change; see
``robustlab.corruptions.weather.frost``).

    python benchmarks/corruptions/cifar10c_stats.py --cifar10c ~/data/CIFAR-10-C \\
        --cifar10 ~/data --n 1000 [--only fog,snow]

``--cifar10c``: the extracted folder with ``<corruption>.npy`` (uint8, 50,000 x 32 x 32 x 3,
severity 1 first, 10,000 images each); ``--cifar10``: the root that
``robustlab.data.load("cifar10", split="test", root=...)`` reads (python batches). Our
images are corrupted in float and cast to uint8 as the reference does (``np.uint8``:
truncation) before the statistics. Writes ``results/cifar10c_stats.json`` beside this file.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from robustlab.errors import DataError, DataNotFoundError

HERE = Path(__file__).resolve().parent
SEVERITY_BLOCK = 10_000  # images per severity in a released file


def mean_abs_change(clean: np.ndarray, corrupted: np.ndarray) -> float:
    """``mean |corrupted - clean| / 255`` of two uint8 arrays of one shape."""
    if clean.shape != corrupted.shape:
        raise DataError(f"clean images {clean.shape} and corrupted images {corrupted.shape} differ in shape.")
    return float(np.abs(corrupted.astype(np.float64) - clean.astype(np.float64)).mean() / 255.0)


def released_stats(path: Path, clean: np.ndarray, block: int = SEVERITY_BLOCK) -> list[float]:
    """Mean absolute change per severity (1..5) of one released ``<corruption>.npy`` against
    the first ``len(clean)`` clean images (NHWC uint8); severity ``s`` is rows
    ``(s-1) block .. (s-1) block + len(clean)``."""
    arr = np.load(path, mmap_mode="r", allow_pickle=False)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[0] < 5 * block or arr.shape[1:] != clean.shape[1:]:
        raise DataError(
            f"{path} holds {arr.dtype} {arr.shape}; expected uint8 (5 x {block}, "
            f"{', '.join(map(str, clean.shape[1:]))}) as released. Re-extract CIFAR-10-C.tar."
        )
    n = len(clean)
    return [mean_abs_change(clean, np.asarray(arr[s * block:s * block + n])) for s in range(5)]


def ours_stats(clean: np.ndarray, name: str, seed: int = 0,
               corrupt: Callable[..., object] | None = None) -> list[float]:
    """Mean absolute change per severity of robustlab's ``name`` on ``clean`` (NHWC uint8)."""
    import torch

    from robustlab import corruptions

    fn = corrupt or corruptions.corrupt
    x = torch.from_numpy(np.ascontiguousarray(clean)).permute(0, 3, 1, 2).float() / 255
    out = []
    for s in range(1, 6):
        gen = torch.Generator().manual_seed(seed * 10 + s)
        xc = fn(x, name, s, generator=gen)
        assert isinstance(xc, torch.Tensor)
        u8 = (xc * 255).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()  # np.uint8: truncation
        out.append(mean_abs_change(clean, u8))
    return out


def compare(released: Mapping[str, Sequence[float]], ours: Mapping[str, Sequence[float]]) -> list[dict[str, object]]:
    """Rows ``{corruption, severity, released, ours, diff, ratio}`` for the corruptions in both."""
    rows: list[dict[str, object]] = []
    for name in sorted(set(released) & set(ours)):
        for s, (r, o) in enumerate(zip(released[name], ours[name]), start=1):
            rows.append({"corruption": name, "severity": s, "released": r, "ours": o,
                         "diff": o - r, "ratio": (o / r) if r > 0 else float("nan")})
    return rows


def format_table(rows: Sequence[dict[str, object]]) -> str:
    lines = [f"{'corruption':<18} sev  released    ours    diff  ratio"]
    for r in rows:
        lines.append(f"{r['corruption']:<18} {r['severity']:>3}  {r['released']:8.4f} {r['ours']:8.4f} "
                     f"{r['diff']:+7.4f} {r['ratio']:6.3f}")
    return "\n".join(lines)


def load_clean(root: Path, n: int) -> np.ndarray:
    """The first ``n`` CIFAR-10 test images, NHWC uint8."""
    import torch

    from robustlab import data

    try:
        ds = data.load("cifar10", split="test", root=str(root))
    except DataError as exc:
        raise DataNotFoundError(
            f"CIFAR-10 test set not found under {root} ({exc}); pass --cifar10 with the folder that "
            f"holds cifar-10-batches-py (or download it with robustlab.data.load(..., download=True))."
        ) from exc
    x = ds.x[:n]
    return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def main(argv: Sequence[str] | None = None) -> list[dict[str, object]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--cifar10c", type=Path, required=True, help="extracted CIFAR-10-C folder")
    ap.add_argument("--cifar10", type=Path, required=True, help="root of the CIFAR-10 python batches")
    ap.add_argument("--n", type=int, default=1000, help="images per severity (default 1000)")
    ap.add_argument("--only", default="", help="comma-separated corruption names (default: all 19)")
    args = ap.parse_args(argv)

    import torch

    from robustlab import corruptions

    torch.set_num_threads(1)
    folder = args.cifar10c.expanduser()
    if not folder.is_dir():
        raise DataNotFoundError(
            f"CIFAR-10-C folder {folder} does not exist; download CIFAR-10-C.tar from Zenodo record "
            f"2535967, extract it and pass the CIFAR-10-C folder with --cifar10c."
        )
    names = [s for s in args.only.split(",") if s] or list(corruptions.COMMON + corruptions.EXTRA)
    missing = [n for n in names if not (folder / f"{n}.npy").is_file()]
    if missing:
        raise DataNotFoundError(
            f"{folder} lacks {', '.join(m + '.npy' for m in missing)}; pass the extracted CIFAR-10-C "
            f"folder (it holds one <corruption>.npy per corruption) or restrict --only."
        )
    clean = load_clean(args.cifar10.expanduser(), args.n)
    released = {n: released_stats(folder / f"{n}.npy", clean) for n in names}
    ours = {n: ours_stats(clean, n) for n in names}
    rows = compare(released, ours)
    print(format_table(rows))
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "cifar10c_stats.json").write_text(json.dumps({"n": args.n, "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    try:
        main()
    except DataError as exc:
        raise SystemExit(f"error: {exc}") from None
