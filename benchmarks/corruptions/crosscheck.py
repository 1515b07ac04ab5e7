"""Cross-check the weather/digital building blocks against the libraries the reference uses.

The reference (``make_cifar_c.py``) calls OpenCV, scikit-image, scipy, Pillow and ImageMagick;
robustlab reimplements each step in torch. This script computes our steps in robustlab's
environment and the library versions in the peer environment ``.venv-peer`` (which has
opencv-python, scikit-image, scipy, Pillow and imagecorruptions' port of ImageMagick's motion
blur; see ``throughput.py`` for how to create it), and prints the largest difference of each:

- spatter's water branch on 600 liquid layers (severities 1-3): ``cv2.Canny``,
  ``cv2.distanceTransform`` + truncation, ``cv2.blur`` + uint8, ``cv2.equalizeHist``,
  ``cv2.filter2D`` (emboss, CV_8U) + ``cv2.blur`` — mismatching pixels per step;
- snow's motion blur (imagecorruptions' port of ImageMagick) and ``clipped_zoom`` (scipy);
- elastic's ``cv2.getAffineTransform`` / ``cv2.warpAffine``, skimage ``gaussian``,
  ``scipy.ndimage.map_coordinates``;
- brightness, saturate, contrast (skimage HSV) and pixelate (Pillow BOX on uint8).

    python benchmarks/corruptions/crosscheck.py
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from robustlab import corruptions
from robustlab.corruptions import digital, weather

HERE = Path(__file__).resolve().parent
PEER_PY = HERE / ".venv-peer" / "bin" / "python"

PEER_SCRIPT = r"""
import sys
import numpy as np, cv2, skimage as sk
from skimage.filters import gaussian
from scipy.ndimage import map_coordinates, zoom as scizoom
from PIL import Image
from imagecorruptions.corruptions import _motion_blur
z = np.load(sys.argv[1])
# spatter pieces, each from OUR previous step so that a mismatch does not cascade
for sev in range(3):
    L = z[f"sp{sev}_liquid"].astype(np.uint8); bad = dict(canny=0, distance=0, blur_u8=0, equalize=0, emboss_blur=0)
    for i in range(len(L)):
        e = cv2.Canny(L[i], 50, 150); bad["canny"] += int(((e > 0) != (z[f"sp{sev}_edges"][i] > 0)).sum())
        d = cv2.distanceTransform(255 - e, cv2.DIST_L2, 5); _, d = cv2.threshold(d, 20, 20, cv2.THRESH_TRUNC)
        bad["distance"] += int((np.abs(d - z[f"sp{sev}_dist"][i]) > 1e-3).sum())
        d2 = cv2.blur(z[f"sp{sev}_dist"][i].astype(np.float32), (3, 3)).astype(np.uint8)
        bad["blur_u8"] += int((d2 != z[f"sp{sev}_d2"][i]).sum())
        d3 = cv2.equalizeHist(z[f"sp{sev}_d2"][i].astype(np.uint8)); bad["equalize"] += int((d3 != z[f"sp{sev}_d3"][i]).sum())
        d4 = cv2.filter2D(z[f"sp{sev}_d3"][i].astype(np.uint8), cv2.CV_8U, np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]]))
        bad["emboss_blur"] += int((cv2.blur(d4, (3, 3)).astype(np.float32) != z[f"sp{sev}_d5"][i]).sum())
    print(f"spatter severity {sev + 1}: mismatching pixels of {L.size}: {bad}")
for r, s in [(8, 3), (14, 12), (10, 4)]:
    err = max(np.abs(_motion_blur(z["mb_x"][i], r, s, z["mb_ang"][i]) - z[f"mb_{r}_{s}"][i]).max() for i in range(len(z["mb_ang"])))
    print(f"snow motion blur radius {r} sigma {s}: max |diff| {err:.1e}")
for f in [1.75, 2.25, 1.25]:
    errs = []
    for i in range(len(z["mb_x"])):
        img = z["mb_x"][i][..., None]; h = img.shape[0]; ch = int(np.ceil(h / f)); top = (h - ch) // 2
        zz = scizoom(img[top:top + ch, top:top + ch], (f, f, 1), order=1); t = (zz.shape[0] - h) // 2
        errs.append(np.abs(zz[t:t + h, t:t + h, 0] - z[f"cz_{f}"][i]).max())
    print(f"clipped_zoom {f}: max |diff| {max(errs):.1e}")
for i in range(len(z["el_src"])):
    M = cv2.getAffineTransform(z["el_src"][i].astype(np.float32), z["el_dst"][i].astype(np.float32))
    img = z["el_x"][i].transpose(1, 2, 0).astype(np.float32)
    w = cv2.warpAffine(img, M, img.shape[:2][::-1], borderMode=cv2.BORDER_REFLECT_101)
    print(f"elastic affine {i}: |M diff| {np.abs(M - z['el_M'][i]).max():.1e}, warp max |diff| {np.abs(w - z['el_warp'][i].transpose(1, 2, 0)).max():.1e}")
for sig in (6.4, 1.92, 0.96):
    err = max(np.abs(gaussian(z["el_u"][i, 0], sig, mode="reflect", truncate=3) - z[f"el_g{sig}"][i, 0]).max() for i in range(len(z["el_u"])))
    print(f"elastic gaussian sigma {sig}: max |diff| {err:.1e}")
errs = []
for i in range(len(z["el_x"])):
    img = z["el_x"][i].transpose(1, 2, 0); dx = z["el_d"][i, 0][..., None]; dy = z["el_d"][i, 1][..., None]
    x, y, c = np.meshgrid(np.arange(img.shape[1]), np.arange(img.shape[0]), np.arange(img.shape[2]))
    ind = np.reshape(y + dy, (-1, 1)), np.reshape(x + dx, (-1, 1)), np.reshape(c, (-1, 1))
    errs.append(np.abs(map_coordinates(img, ind, order=1, mode="reflect").reshape(img.shape) - z["el_disp"][i].transpose(1, 2, 0)).max())
print(f"elastic map_coordinates: max |diff| {max(errs):.1e}")
X = z["px_x"]
def br(x, c):
    h = sk.color.rgb2hsv(x / 255.); h[:, :, 2] = np.clip(h[:, :, 2] + c, 0, 1); return np.clip(sk.color.hsv2rgb(h), 0, 1)
def sa(x, c):
    h = sk.color.rgb2hsv(x / 255.); h[:, :, 1] = np.clip(h[:, :, 1] * c[0] + c[1], 0, 1); return np.clip(sk.color.hsv2rgb(h), 0, 1)
def co(x, c):
    x = x / 255.; m = x.mean((0, 1), keepdims=True); return np.clip((x - m) * c + m, 0, 1)
def px(x, c):
    s = x.shape[0]; im = Image.fromarray(x).resize((int(s * c),) * 2, Image.BOX).resize((s, s), Image.BOX); return np.asarray(im) / 255.
tabs = {"brightness": (br, [.05, .1, .15, .2, .3]), "contrast": (co, [.75, .5, .4, .3, .15]),
        "saturate": (sa, [(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)]), "pixelate": (px, [0.95, 0.9, 0.85, 0.75, 0.65])}
for n, (f, cs) in tabs.items():
    err = [np.abs(z[f"px_{n}"][s] - np.stack([f(x, cs[s]) for x in X])).max() for s in range(5)]
    print(f"{n} severities 1-5: max |diff| " + " ".join(f"{e:.1e}" for e in err))
"""


def _ours(path: Path) -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    out: dict[str, np.ndarray] = {}
    for sev, (loc, scale, sigma, thr) in enumerate([(0.62, 0.1, 0.7, 0.7), (0.65, 0.1, 0.8, 0.7), (0.65, 0.3, 1, 0.69)]):
        layer = torch.randn(200, 1, 32, 32, generator=g) * scale + loc
        layer = digital.gaussian_filter(layer, sigma)
        layer = torch.where(layer < thr, torch.zeros_like(layer), layer)
        liquid = torch.floor(layer.clamp(0, 1) * 255)
        edges = weather.canny(liquid, 50, 150)
        dist = weather.distance_chamfer(edges, 20)
        d2 = torch.floor(weather.box3(dist) + 1e-6)
        d3 = weather.equalize_hist(d2)
        emb = torch.tensor([[-2.0, -1, 0], [-1, 1, 1], [0, 1, 2]], dtype=d3.dtype)
        d5 = torch.round(weather.box3(F.conv2d(digital.pad2d(d3, 1, 1, "mirror"), emb.view(1, 1, 3, 3)).clamp(0, 255)))
        for k, v in dict(liquid=liquid, edges=edges, dist=dist, d2=d2, d3=d3, d5=d5).items():
            out[f"sp{sev}_{k}"] = v[:, 0].double().numpy()
    x = torch.rand(6, 1, 32, 32, generator=g)
    ang = torch.tensor([-135.0, -120.3, -90.0, -77.7, -45.0, -60.1])
    out["mb_x"], out["mb_ang"] = x[:, 0].numpy(), ang.numpy()
    for r, s in [(8, 3), (14, 12), (10, 4)]:
        out[f"mb_{r}_{s}"] = weather.motion_blur(x, r, s, ang)[:, 0].numpy()
    for f in [1.75, 2.25, 1.25]:
        out[f"cz_{f}"] = weather.clipped_zoom(x, f)[:, 0].numpy()
    xe = torch.rand(4, 3, 32, 32, generator=g)
    src = torch.tensor([[26.0, 26], [26, 6], [6, 6]]).expand(4, 3, 2)
    dst = src + (torch.rand(4, 3, 2, generator=g) * 2 - 1) * 2.5
    m = digital.affine_from_points(src, dst)
    u = torch.rand(4, 2, 32, 32, generator=g) * 2 - 1
    out.update(el_x=xe.numpy(), el_src=src.numpy(), el_dst=dst.numpy(), el_M=m.numpy(),
               el_warp=digital.warp_affine(xe, m).numpy(), el_u=u.numpy())
    for sig in (6.4, 1.92, 0.96):
        out[f"el_g{sig}"] = digital.gaussian_filter(u.double(), sig, mode="reflect", truncate=3.0).numpy()
    d = digital.gaussian_filter(u, 1.28, mode="reflect", truncate=3.0) * 3.2
    out["el_d"], out["el_disp"] = d.numpy(), digital.displace(xe, d[:, 0], d[:, 1]).numpy()
    xp = torch.randint(0, 256, (3, 3, 32, 32), generator=g).float() / 255
    out["px_x"] = (xp * 255).round().byte().permute(0, 2, 3, 1).numpy()
    for n in ("brightness", "contrast", "saturate", "pixelate"):
        out[f"px_{n}"] = torch.stack([corruptions.corrupt(xp, n, s) for s in range(1, 6)]).permute(0, 1, 3, 4, 2).numpy()
    np.savez(path, **out)  # type: ignore[arg-type]


def main() -> None:
    if not PEER_PY.exists():
        raise SystemExit(f"error: no peer environment at {PEER_PY}; create it as throughput.py's docstring says.")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ours.npz"
        _ours(path)
        subprocess.run([str(PEER_PY), "-c", PEER_SCRIPT, str(path)], check=True)


if __name__ == "__main__":
    main()
