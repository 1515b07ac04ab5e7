from __future__ import annotations

import pytest
import torch

from robustlab import detect
from robustlab.detect import DetectorNotFittedError, shifted_inputs
from robustlab.errors import ConfigError, UnknownNameError

from .helpers import blobs, trained_mlp

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup() -> tuple[torch.Tensor, torch.Tensor, torch.nn.Module]:
    x, y = blobs(0, 120)
    return x, y, trained_mlp(x, y, 3, steps=50)


def test_unknown_detector_lists_close_matches() -> None:
    with pytest.raises(UnknownNameError, match="Did you mean 'mahalanobis'"):
        detect.create("mahalanobiss")
    with pytest.raises(ConfigError, match="magnitude"):
        detect.create("mahalanobis", magnitud=0.1)


def test_unknown_shift_lists_close_matches(setup) -> None:
    x, y, model = setup
    with pytest.raises(UnknownNameError, match="Did you mean 'adversarial/linf'"):
        detect.parse_shift("adversarial/linff")
    with pytest.raises(UnknownNameError, match="Did you mean 'corruption/fog'"):
        detect.parse_shift("corruption/fogg")
    with pytest.raises(UnknownNameError, match="unknown shift 'blur'"):
        detect.create("msp").run(model, x, y, "blur", [1], reference=(x, y))


def test_run_without_reference_is_refused(setup) -> None:
    x, y, model = setup
    with pytest.raises(ConfigError, match=r"needs reference=\(x_train, y_train\)"):
        detect.create("energy").run(model, x, y, "uniform", [0])


def test_scoring_before_fit_and_adaptive_without_detector(setup) -> None:
    x, y, model = setup
    with pytest.raises(DetectorNotFittedError, match=r"call .fit\(model, x_train, y_train\)"):
        detect.create("mahalanobis").score(model, x)
    with pytest.raises(ConfigError, match="pass detector="):
        shifted_inputs("adaptive/linf", model, x, y, 0.1, generator=torch.Generator().manual_seed(0))


def test_bad_parameters(setup) -> None:
    with pytest.raises(ConfigError, match="shrinkage"):
        detect.create("mahalanobis", shrinkage="oas")
    with pytest.raises(ConfigError, match="layers must be"):
        detect.create("mahalanobis", layers="layer4")
    with pytest.raises(ConfigError, match="temperature"):
        detect.create("msp", temperature=0)
