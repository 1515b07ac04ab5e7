"""Every loss: reductions agree, parameters round-trip, bad parameters are refused naming them."""

import inspect
import re

import numpy as np
import pytest
import torch

from robustlab import losses
from robustlab.errors import ConfigError, LabelError, ShapeMismatchError, UnknownNameError

# (loss, parameter) -> values that must be refused with a ConfigError naming the parameter
BAD = {
    ("label_smoothing", "smoothing"): [-0.1, 1.0, 1.5],
    ("focal", "gamma"): [-0.5, float("nan")],
    ("mae", "scale"): [0.0, -1.0],
    ("gce", "q"): [0.0, -0.2, 1.5, float("inf")],
    ("rce", "A"): [0.0, 2.0],
    ("rce", "scale"): [0.0, -2.0],
    ("sce", "alpha"): [-0.1],
    ("sce", "beta"): [-1.0],
    ("sce", "A"): [1.0],
    ("nce", "scale"): [-1.0],
    ("nfl", "gamma"): [-1.0],
    ("nfl", "scale"): [0.0],
    ("ngce", "q"): [0.0, 1.01],
    ("ngce", "scale"): [-3.0],
    ("nce+rce", "alpha"): [-1.0],
    ("nce+rce", "beta"): [-1.0],
    ("nce+rce", "A"): [0.5],
    ("nce+mae", "alpha"): [-1.0],
    ("nce+mae", "beta"): [-0.5],
    ("nfl+rce", "alpha"): [-1.0],
    ("nfl+rce", "beta"): [-1.0],
    ("nfl+rce", "gamma"): [-0.1],
    ("nfl+rce", "A"): [0.0],
    ("nfl+mae", "alpha"): [-1.0],
    ("nfl+mae", "beta"): [-1.0],
    ("nfl+mae", "gamma"): [-2.0],
    ("ngce+rce", "alpha"): [-1.0],
    ("ngce+rce", "beta"): [-1.0],
    ("ngce+rce", "q"): [0.0, 2.0],
    ("ngce+rce", "A"): [3.0],
    ("ngce+mae", "alpha"): [-1.0],
    ("ngce+mae", "beta"): [-1.0],
    ("ngce+mae", "q"): [0.0, 1.5],
    ("comp-sum", "tau"): [-0.1, float("nan")],
    ("ldr-kl", "lam"): [0.0, -1.0],
    ("ldr-kl", "margin"): [-0.1],
    ("aldr-kl", "lam0"): [0.0, -2.0],
    ("aldr-kl", "alpha"): [1.0, 0.5, -1.0],
    ("aldr-kl", "margin"): [-1.0],
    ("bootstrap-soft", "beta"): [-0.1, 1.1],
    ("bootstrap-hard", "beta"): [-0.1, 1.1],
    ("truncated-lq", "q"): [0.0, 1.2],
    ("truncated-lq", "k"): [0.0, 1.0, -0.5],
    ("truncated-lq", "prune_start"): [0, 2.5],
    ("truncated-lq", "prune_every"): [0, -1],
}


def constructor_params(name):
    cls = losses.losses.get(name)
    sig = inspect.signature(cls.__init__)
    return {n: p.default for n, p in sig.parameters.items() if n not in ("self", "reduction")}


def batch(n=16, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g, dtype=torch.float64) * 2, torch.randint(
        0, k, (n,), generator=g
    )


def call(loss, z, y):
    return loss(z, y, torch.arange(len(y))) if loss.needs_indices else loss(z, y)


@pytest.mark.parametrize("name", losses.available())
def test_reductions_agree(name):
    z, y = batch()
    per = call(losses.create(name, reduction="none"), z, y)  # fresh instances: state starts equal
    assert per.shape == (16,)
    assert torch.allclose(call(losses.create(name, reduction="mean"), z, y), per.mean(), rtol=1e-12)
    assert torch.allclose(call(losses.create(name, reduction="sum"), z, y), per.sum(), rtol=1e-12)
    with pytest.raises(ConfigError, match="reduction"):
        losses.create(name, reduction="avg")


@pytest.mark.parametrize("name", losses.available())
def test_get_params_round_trip(name):
    loss = losses.create(name, reduction="none")
    params = loss.get_params()
    assert set(params) == set(constructor_params(name)) | {"reduction"}
    again = losses.create(name, **params)
    assert again.get_params() == params
    z, y = batch(seed=1)
    assert torch.equal(call(again, z, y), call(loss, z, y))


@pytest.mark.parametrize("name", losses.available())
def test_every_parameter_has_bad_values_that_are_refused(name):
    for param, default in constructor_params(name).items():
        if isinstance(default, bool):
            with pytest.raises(ConfigError, match=param):
                losses.create(name, **{param: "yes"})
            continue
        assert (name, param) in BAD, f"no bad values listed for {name}.{param}"
        for value in BAD[(name, param)]:
            with pytest.raises(ConfigError, match=param):
                losses.create(name, **{param: value})
        with pytest.raises(ConfigError, match=param):
            losses.create(name, **{param: "0.5"})  # strings are not numbers


def test_bad_table_names_real_parameters():
    for name, param in BAD:
        assert param in constructor_params(name), (name, param)


def test_unknown_parameter_lists_close_matches():
    with pytest.raises(ConfigError, match="'gamma'"):
        losses.create("focal", gama=2.0)
    with pytest.raises(ConfigError, match="'lam0'"):
        losses.create("aldr-kl", lam=2.0)
    with pytest.raises(UnknownNameError, match="'nce\\+rce'"):
        losses.create("nce+rcee")


def test_aliases_reach_the_same_losses():
    z, y = batch(seed=2)
    for alias, name in [
        ("lq", "gce"),
        ("nce_rce", "nce+rce"),
        ("comp_sum", "comp-sum"),
        ("ldr", "ldr-kl"),
    ]:
        assert torch.equal(
            losses.create(alias, reduction="none")(z, y),
            losses.create(name, reduction="none")(z, y),
        )


def test_bad_batches_are_refused():
    loss = losses.create("gce")
    z, y = batch()
    with pytest.raises(LabelError):
        loss(z, y.double())
    with pytest.raises(ShapeMismatchError):
        loss(z, y[:-1])
    with pytest.raises(ShapeMismatchError):
        loss(z[:, :1], y * 0)
    with pytest.raises(ShapeMismatchError):
        loss(z.unsqueeze(2), y)
    # int32 labels are accepted (converted to int64)
    assert torch.equal(loss(z, y.int()), loss(z, y))


# -- registry-wide: one set of validators, labels inside [0, K) --------------------------


def test_every_registered_loss_derives_from_the_checked_base_class():
    for name in losses.available():
        assert issubclass(losses.losses.get(name), losses.Loss), name


NOT_A_FLOAT = [True, False, float("nan"), float("inf"), -float("inf"), "0.7", None, [0.5]]
NOT_AN_INT = [True, 2.5, "3", float("nan"), None]
NOT_A_FLAG = [1, 0, "yes", None]


@pytest.mark.parametrize("name", losses.available())
def test_every_parameter_refuses_values_of_the_wrong_kind(name):
    """Floats refuse booleans, NaN, inf and strings; ints refuse booleans and fractions;
    flags refuse 1/0; all with a ConfigError that names the loss and the parameter."""
    params = {**constructor_params(name), "reduction": "mean"}
    for param, default in params.items():
        if isinstance(default, bool):
            bad = NOT_A_FLAG
        elif isinstance(default, int):
            bad = NOT_AN_INT
        elif isinstance(default, float):
            bad = NOT_A_FLOAT
        else:
            assert param == "reduction", (name, param)
            bad = ["avg", True, None]
        for value in bad:
            with pytest.raises(ConfigError, match=f"^loss {re.escape(repr(name))}: {param}\\b"):
                losses.create(name, **{param: value})


def test_numbers_are_normalised_by_the_validators():
    assert losses.create("gce", q=1).q == 1.0 and isinstance(losses.create("gce", q=1).q, float)
    lq = losses.create("truncated-lq", prune_start=40.0, prune_every=np.int64(5))
    assert (lq.prune_start, lq.prune_every) == (40, 5)
    assert type(lq.prune_start) is int and type(lq.prune_every) is int
    with pytest.raises(ConfigError, match=r"loss 'rce': A \(the stand-in for log 0.*\(-inf, 0\)"):
        losses.create("rce", A=0.0)


def _call(loss, z, y):
    return loss(z, y, torch.arange(len(y))) if loss.needs_indices else loss(z, y)


@pytest.mark.parametrize("name", losses.available())
def test_every_loss_refuses_labels_outside_the_classes(name):
    z = torch.randn(6, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    loss = losses.create(name, reduction="none")
    _call(loss, z, torch.tensor([0, 1, 2, 3, 4, 4]))  # in range: fine
    before = {k: v.clone() for k, v in loss.state_dict().items()}
    for y, lo, hi in [
        (torch.tensor([0, 1, 2, 3, 4, 5]), 0, 5),  # K itself
        (torch.tensor([-1, 1, 2, 3, 4, 0]), -1, 4),  # negative
        (torch.tensor([0, 1, 2, 3, 4, 1000]), 0, 1000),
    ]:
        with pytest.raises(LabelError) as info:
            _call(loss, z, y)
        assert str(info.value).startswith(
            f"loss {name!r}: target has labels in [{lo}, {hi}] but the model/dataset has 5 "
            f"classes, so labels must lie in [0, 4]."
        )
    with pytest.raises(LabelError, match="integer"):
        _call(loss, z, torch.tensor([0.0, 1, 2, 3, 4, 1]))
    # a refused batch leaves per-sample state untouched
    after = loss.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
