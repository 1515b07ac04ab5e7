import pytest
import torch
import torch.nn.functional as F

from robustlab import losses
from robustlab.errors import ConfigError, UnknownNameError


def batch(n=64, k=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g, dtype=torch.float64) * 3, torch.randint(
        0, k, (n,), generator=g
    )


def test_ce_equals_negative_log_softmax():
    z, y = batch()
    got = losses.create("ce", reduction="none")(z, y)
    assert torch.allclose(got, -z.log_softmax(1)[torch.arange(len(y)), y])


def test_label_smoothing_formula():
    z, y = batch()
    eps, k = 0.2, z.shape[1]
    q = torch.full_like(z, eps / k)
    q[torch.arange(len(y)), y] += 1 - eps
    want = -(q * z.log_softmax(1)).sum(1)
    got = losses.create("label_smoothing", smoothing=eps, reduction="none")(z, y)
    assert torch.allclose(got, want)
    assert torch.allclose(
        losses.create("ls", smoothing=0.0, reduction="none")(z, y),
        F.cross_entropy(z, y, reduction="none"),
    )


def test_reductions_and_params():
    z, y = batch()
    per = losses.create("ce", reduction="none")(z, y)
    assert torch.allclose(losses.create("ce")(z, y), per.mean())
    assert torch.allclose(losses.create("ce", reduction="sum")(z, y), per.sum())
    assert losses.create("label_smoothing", smoothing=0.3).get_params() == {
        "smoothing": 0.3,
        "reduction": "mean",
    }


def test_bad_loss_input():
    with pytest.raises(UnknownNameError, match="label_smoothing"):
        losses.create("label_smothing")
    with pytest.raises(ConfigError):
        losses.create("label_smoothing", smoothing=1.5)
    with pytest.raises(ConfigError, match="reduction"):
        losses.create("ce", reduction="avg")


@pytest.mark.parametrize("name", losses.available())
def test_gradcheck(name):
    # Stateful losses get dataset indices; losses with intentional stop-gradients
    # (detach=True defaults, ALDR-KL's lambda) are checked in test_gradients.py.
    z, y = batch(n=5, k=4)
    z.requires_grad_(True)
    fn = losses.create(name, reduction="none")
    if "detach" in fn.get_params():
        fn = losses.create(name, reduction="none", detach=False)
    if name == "aldr-kl":
        lam = torch.full((5,), 3.0, dtype=torch.float64)
        assert torch.autograd.gradcheck(lambda t: fn.loss_at_lambda(t, y, lam), (z,))
        return
    idx = torch.arange(5)
    assert torch.autograd.gradcheck(lambda t: fn(t, y, idx), (z,))
