from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import mahalanobis

from robustlab import detect, models
from robustlab.detect import Mahalanobis, TooFewSamplesError
from robustlab.errors import UnknownNameError

from .helpers import blobs, trained_mlp

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data_and_model() -> tuple[torch.Tensor, torch.Tensor, torch.nn.Module]:
    x, y = blobs(0, 300)
    return x, y, trained_mlp(x[:200], y[:200], 3, hidden=(6,))


def _layer0(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    """The pre-activation features of the first Linear (full rank), by hand."""
    lin, flat, norm = model.get_submodule("layers.0"), model.get_submodule("flatten"), model.get_submodule("normalize")
    with torch.no_grad():
        return lin(flat(norm(x))).double().numpy()


def test_score_is_minus_half_min_squared_distance_scipy(data_and_model) -> None:
    x, y, model = data_and_model
    det = Mahalanobis(layers=["layers.0"]).fit(model, x[:200], y[:200])
    f, yf = _layer0(model, x[:200]), y[:200].numpy()
    means = np.stack([f[yf == c].mean(0) for c in range(3)])
    centred = f - means[yf]
    cov = centred.T @ centred / len(f)  # the tied maximum-likelihood covariance
    vi = np.linalg.inv(cov)
    ft = _layer0(model, x[200:])
    expected = np.array([-0.5 * min(mahalanobis(v, means[c], vi) ** 2 for c in range(3)) for v in ft])
    got = det.score(model, x[200:]).numpy()
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("magnitude", [0.0, 0.01])
def test_scores_invariant_to_relabelling(data_and_model, magnitude: float) -> None:
    x, y, model = data_and_model
    perm = torch.tensor([2, 0, 1])
    a = Mahalanobis(magnitude=magnitude).fit(model, x[:200], y[:200]).score(model, x[200:])
    b = Mahalanobis(magnitude=magnitude).fit(model, x[:200], perm[y[:200]]).score(model, x[200:])
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_preprocessing_is_the_closed_form_sign_step() -> None:
    # linear features f = W x + b of a linear model (features = the logits' input x here,
    # read as the input of the only Linear): grad_x 1/2 d^2 = P (x - mu_c*)
    x, y = blobs(1, 240, d=4)
    model = models.create("mlp", num_classes=3, in_channels=4, hidden=()).eval()
    det = Mahalanobis(magnitude=0.02).fit(model, x[:200], y[:200])
    xt = x[200:]
    prec, mu = det.precisions_[0], det.means_[0]
    diff = xt.double()[:, None, :] - mu[None]
    d2 = torch.einsum("nkd,de,nke->nk", diff, prec, diff)
    c = d2.argmin(1)
    grad = ((xt.double() - mu[c]) @ prec).float()
    x_pre = (xt - 0.02 * grad.sign()).clamp(0, 1)
    (got,) = det._preprocess(model, xt, [0])
    torch.testing.assert_close(got, x_pre)
    s0 = Mahalanobis().fit(model, x[:200], y[:200]).score(model, xt)
    s1 = det.score(model, xt)
    assert bool((s1 >= s0 - 1e-9).all())  # the step moves towards the closest mean
    assert float((s1 - s0).mean()) > 0


def test_separable_mixture_gives_auroc_one() -> None:
    x, y = blobs(2, 300, d=4, spread=0.02)
    model = models.create("mlp", num_classes=3, in_channels=4, hidden=()).eval()
    det = Mahalanobis().fit(model, x[:200], y[:200])  # features: the raw inputs
    far = (x[200:] + 0.5).clamp(0, 1) * 0 + torch.tensor([0.0, 1.0, 0.0, 1.0])  # one far corner
    far = far + 0.01 * torch.randn(far.shape, generator=torch.Generator().manual_seed(0))
    m = detect.detection_metrics(det.score(model, x[200:]), det.score(model, far.clamp(0, 1)))
    assert m["auroc"] == 1.0 and m["tnr_at_95_tpr"] == 1.0


def test_too_few_samples_needs_shrinkage(data_and_model) -> None:
    x, y, model = data_and_model
    with pytest.raises(TooFewSamplesError, match=r"fitted on 5 samples for a 8-dimensional layer 'layers.0:input'; pass shrinkage='ledoit-wolf'"):
        Mahalanobis(layers=["layers.0:input"]).fit(model, x[:5], y[:5])
    s = Mahalanobis(layers=["layers.0:input"], shrinkage="ledoit-wolf").fit(model, x[:5], y[:5]).score(model, x[200:])
    assert bool(torch.isfinite(s).all())
    r = Mahalanobis(layers=["layers.0:input"], shrinkage=0.1).fit(model, x[:5], y[:5]).score(model, x[200:])
    assert bool(torch.isfinite(r).all())


def test_unknown_layer_lists_close_names(data_and_model) -> None:
    x, y, model = data_and_model
    with pytest.raises(UnknownNameError, match=r"no module 'layers.l'.*Did you mean .*'layers.1'"):
        Mahalanobis(layers=["layers.l"]).fit(model, x[:50], y[:50])


def test_combination_is_a_linear_function_of_the_layer_scores(data_and_model) -> None:
    x, y, _ = data_and_model
    model = trained_mlp(x[:200], y[:200], 3, hidden=(16, 16), steps=100)
    det = Mahalanobis().fit(model, x[:200], y[:200])
    assert det.layers_ == ["layers.1", "layers.4:input"]  # first block, penultimate features
    base = det.score(model, x[200:])
    torch.testing.assert_close(base, det.layer_scores(model, x[200:])[:, -1])
    out = torch.rand(100, 8, generator=torch.Generator().manual_seed(3))
    det.fit_combination(model, x[200:250], out[:50])
    c = det.combination_
    assert c is not None
    s = det.layer_scores(model, x[250:])
    expected = ((s - c["mean"]) / c["scale"]) @ c["coef"] + c["intercept"]
    torch.testing.assert_close(det.score(model, x[250:]), expected)
    det.fit(model, x[:200], y[:200])  # refitting forgets the combination
    assert det.combination_ is None
