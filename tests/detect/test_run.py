from __future__ import annotations

import numpy as np
import pytest
import torch

from robustlab import detect, models
from robustlab.detect import Detection
from robustlab.progress import Progress

from .helpers import blobs, trained_mlp

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup() -> tuple[torch.Tensor, torch.Tensor, torch.nn.Module]:
    x, y = blobs(0, 500)
    return x, y, trained_mlp(x[:300], y[:300], 3)


def test_noise_run_returns_a_full_detection(setup) -> None:
    x, y, model = setup
    with Progress("detect", total=300 + 200 * 3, show=False) as p:
        d = detect.create("mahalanobis").run(
            model, x[300:], y[300:], "gaussian", [0.1, 0.3], reference=(x[:300], y[:300]), seed=1, progress=p
        )
        assert p.done == 300 + 200 * 3
    assert isinstance(d, Detection)
    assert (d.detector, d.shift, d.levels) == ("mahalanobis", "gaussian", [0.1, 0.3])
    assert d.params == {"layers": None, "magnitude": 0.0, "shrinkage": None}
    assert d.scores_in.shape == (200,) and d.scores_out[0.3].shape == (200,)
    for level in d.levels:
        m = d.metrics[level]
        assert set(m) == {"auroc", "aupr_in", "aupr_out", "tnr_at_95_tpr", "num_in", "num_out"}
        assert m["auroc"] == detect.detection_metrics(d.scores_in, d.scores_out[level])["auroc"]
        assert m["auroc"] > 0.95  # noise images are far from the blobs in feature space
    again = detect.create("mahalanobis").run(
        model, x[300:], y[300:], "gaussian", [0.1, 0.3], reference=(x[:300], y[:300]), seed=1
    )
    np.testing.assert_array_equal(again.scores_out[0.1], d.scores_out[0.1])  # seeded
    other = detect.create("mahalanobis").run(
        model, x[300:], y[300:], "gaussian", [0.1], reference=(x[:300], y[:300]), seed=2
    )
    assert not np.array_equal(other.scores_out[0.1], d.scores_out[0.1])


def test_adversarial_run_pairs_clean_and_successful_adversarial_points(setup) -> None:
    x, y, model = setup
    d = detect.create("msp").run(
        model, x[300:], y[300:], "adversarial/linf", [0.15], reference=(x[:300], y[:300]), seed=0
    )
    m, sel = d.metrics[0.15], d.selected[0.15]
    assert m["num_in"] == m["num_out"] == sel.sum() == round(m["attack_success"] * m["num_attacked"])
    assert 0 < m["attack_success"] < 1
    ref = detect.detection_metrics(d.scores_in[sel], d.scores_out[0.15])
    assert m["auroc"] == ref["auroc"] and m["tnr_at_95_tpr"] == ref["tnr_at_95_tpr"]
    # undetected successes: adversarial scores at or above the operating threshold
    assert m["undetected_success"] == pytest.approx(
        (d.scores_out[0.15] >= m["threshold"]).sum() / m["num_attacked"]
    )


def test_corruption_shift_goes_through_robustlab_corruptions() -> None:
    model = models.create("mlp", num_classes=2, in_channels=1, input_size=8, hidden=(8,)).eval()
    x = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = (x.mean((1, 2, 3)) > 0.5).long()
    g = torch.Generator().manual_seed(5)
    out = detect.shifted_inputs("corruption/gaussian_noise", model, x, y, 5, generator=g)
    assert out.success is None and out.x.shape == x.shape
    from robustlab.corruptions import corrupt

    torch.testing.assert_close(out.x, corrupt(x, "gaussian_noise", 5, generator=torch.Generator().manual_seed(5)))
    d = detect.create("energy").run(model, x, y, "corruption/gaussian_noise", [3, 5], reference=(x, y))
    assert sorted(d.metrics) == [3.0, 5.0]
