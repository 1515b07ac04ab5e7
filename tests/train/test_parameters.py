"""Every numeric parameter of every registered objective is checked the one way
(``robustlab.validation``): integers refuse 2.5 and True, reals refuse True, NaN and
strings, yes/no switches refuse anything but True and False -- each with a ConfigError
that names the parameter, at construction."""

import inspect
import typing

import pytest

from robustlab.errors import ConfigError
from robustlab.train import available, create, objectives
from robustlab.train.monitors import CatastrophicOverfittingCheck

#: the smallest valid parameters of objectives that need some
REQUIRED = {"co-teaching": {"forget_rate": 0.2}, "pubdef": {"sources": ["not-read-before-the-numbers.safetensors"]}}


def _parameters():
    cases = []
    for name in available():
        cls = objectives.get(name)
        hints = typing.get_type_hints(cls.__init__, vars(inspect.getmodule(cls)))
        for param, p in inspect.signature(cls.__init__).parameters.items():
            if param == "self" or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                continue
            hint = hints.get(param)
            if hint in (int, int | None):
                cases.append((name, param, "int"))
            elif hint in (float, float | None, float | str, float | str | None):
                cases.append((name, param, "float"))
            elif hint is bool:
                cases.append((name, param, "bool"))
    return cases


CASES = _parameters()
BAD = {"int": [2.5, True, "3"], "float": [True, float("nan"), float("inf"), "x"], "bool": ["yes", 2, None]}


def test_every_objective_has_checked_parameters():
    names = {n for n, _, _ in CASES}
    assert names == set(available()) - {"erm"}  # erm's only parameters are the loss's
    kinds = {(n, p) for n, p, k in CASES if k == "int"}
    assert {("pgd-at", "steps"), ("trades", "steps"), ("fgsm-rs", "co_steps"), ("awp", "warmup"),
            ("co-teaching", "num_gradual")} <= kinds


@pytest.mark.parametrize("name, param, kind", CASES, ids=[f"{n}.{p}" for n, p, _ in CASES])
def test_bad_values_are_refused_naming_the_parameter(name, param, kind):
    for bad in BAD[kind]:
        if bad is None and kind == "bool":
            continue
        kw = dict(REQUIRED.get(name, {}))
        kw[param] = bad
        with pytest.raises(ConfigError, match=param):
            create(name, **kw)


@pytest.mark.parametrize("name", ["pgd-at", "trades", "mart", "done", "adv-comp-sum"])
def test_steps_as_a_fraction_or_boolean_is_refused_not_truncated(name):
    with pytest.raises(ConfigError, match=r"steps must be an integer, got 2\.5"):
        create(name, steps=2.5)
    with pytest.raises(ConfigError, match=r"steps must be an integer, got the boolean True"):
        create(name, steps=True)
    assert create(name, steps=3.0).steps == 3  # an integral float (YAML) is the integer


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(threshold=0.0), "co_threshold"),
        (dict(threshold=1.5), "co_threshold"),
        (dict(action="panic"), "co_action"),
        (dict(steps=2.5), "co_steps"),
        (dict(rel_step_size=0), "co_rel_step_size"),
        (dict(batch_size=0), "co_batch_size"),
    ],
)
def test_the_catastrophic_overfitting_check_is_checked(kw, match):
    with pytest.raises(ConfigError, match=match):
        CatastrophicOverfittingCheck(**kw)


def test_ema_decay_is_checked():
    from torch import nn

    from robustlab.train import WeightEMA

    for bad in (0.0, 1.0, True, "0.9"):
        with pytest.raises(ConfigError, match="ema_decay"):
            WeightEMA(nn.Linear(2, 2), bad)
