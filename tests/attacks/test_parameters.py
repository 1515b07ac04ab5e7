"""Every numeric parameter of every registered attack is checked by the shared validators
(robustlab.validation): a wrong type or value is a ConfigError naming the parameter,
never truncated (``steps=2.5`` -> 2) or coerced (``steps=True`` -> 1)."""

from __future__ import annotations

import inspect
import math

import pytest

from robustlab.attacks import attacks, create
from robustlab.errors import ConfigError

# parameters that are not numbers: names and nested specs (checked by their own tests)
NOT_NUMERIC = {"loss", "members", "attack", "params", "surrogates"}


def _kind(param: inspect.Parameter) -> str | None:
    """``int``, ``float`` or ``bool`` from the default's type, or from the annotation
    when the default is None (``step_size: float | None = None``)."""
    default = param.default
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "int"
    if isinstance(default, float):
        return "float"
    if default is None:
        names = {part.strip() for part in str(param.annotation).split("|")}
        for kind in ("bool", "float", "int"):
            if kind in names:
                return kind
    return None


def _table() -> list[tuple[str, str, str]]:
    rows = []
    for name in attacks.available():
        factory = attacks.get(name)
        for pname, param in inspect.signature(factory.__init__).parameters.items():
            if pname == "self" or pname in NOT_NUMERIC:
                continue
            kind = _kind(param)
            assert kind is not None, f"{name}: cannot tell the type of parameter {pname!r}"
            rows.append((name, pname, kind))
    return rows


TABLE = _table()
BAD = {"int": [2.5, True], "float": [math.nan, "0.5", True], "bool": [1, "yes"]}
CASES = [(name, p, bad) for name, p, kind in TABLE for bad in BAD[kind]]


def test_the_table_covers_the_parameters_of_every_attack_family():
    found = set(TABLE)
    for row in [
        ("pgd", "steps", "int"), ("pgd", "step_size", "float"), ("pgd", "rel_step_size", "float"),
        ("pgd", "init_std", "float"), ("pgd", "l1_sparsity", "float"), ("pgd", "random_start", "bool"),
        ("apgd", "rho", "float"), ("apgd-t", "targets", "int"), ("apgd", "large_eps", "bool"),
        ("square", "n_queries", "int"), ("square", "p_init", "float"),
        ("fab", "eta", "float"), ("fab-t", "n_target_classes", "int"),
        ("cw-l2", "lr", "float"), ("cw-l2", "binary_search_steps", "int"), ("cw-l2", "abort_early", "bool"),
        ("eot", "samples", "int"),
    ]:
        assert row in found, row
    # every integer and float parameter gets its refusals
    assert len(CASES) == sum(len(BAD[kind]) for _, _, kind in TABLE) > 60


@pytest.mark.parametrize("name,param,bad", CASES, ids=[f"{n}-{p}-{b!r}" for n, p, b in CASES])
def test_a_bad_value_is_refused_and_names_the_parameter(name, param, bad):
    with pytest.raises(ConfigError, match=rf"\b{param}\b"):
        create(name, **{param: bad})


@pytest.mark.parametrize("name,param,kind", TABLE, ids=[f"{n}-{p}" for n, p, _ in TABLE])
def test_the_default_value_is_accepted_and_stored_as_given(name, param, kind):
    default = inspect.signature(attacks.get(name).__init__).parameters[param].default
    if default is None:
        return  # "not set": nothing to check beyond the refusals above
    atk = create(name, **{param: default})
    stored = atk.get_params().get(param, default)
    assert stored == default and type(stored) is type(default)


def test_pgd_steps_is_never_truncated_or_read_from_a_boolean():
    for bad in (2.5, True, False, "10", None):
        with pytest.raises(ConfigError, match="steps"):
            create("pgd", steps=bad)
    # an integral float (YAML/JSON "10.0") is the integer it is
    assert create("pgd", steps=10.0).steps == 10 and type(create("pgd", steps=10.0).steps) is int


def test_bounds_of_the_intervals():
    for name, params in [
        ("pgd", {"l1_sparsity": 0.0}), ("pgd", {"l1_sparsity": 1.01}), ("pgd", {"step_size": 0.0}),
        ("pgd", {"init_std": -0.1}), ("pgd", {"targets": -1}), ("apgd", {"rho": 0.0}),
        ("apgd-t", {"targets": 0}), ("square", {"p_init": 0.0}), ("fab", {"beta": 1.5}),
        ("fab", {"alpha_max": -0.1}), ("cw-l2", {"kappa": -1.0}), ("eot", {"samples": 0}),
    ]:
        with pytest.raises(ConfigError, match=next(iter(params))):
            create(name, **params)
    # the closed ends are accepted
    assert create("pgd", l1_sparsity=1.0).l1_sparsity == 1.0
    assert create("fab", alpha_max=0.0, beta=1.0).alpha_max == 0.0
    assert create("cw-l2", kappa=0.0).kappa == 0.0 and create("pgd", init_std=0.0).init_std == 0.0


def test_the_old_helper_names_are_thin_aliases_of_the_shared_validators():
    from robustlab.attacks.base import float_param, int_param

    assert int_param("steps", 3, 1) == 3 and float_param("lr", 0.5) == 0.5
    for call in (lambda: int_param("steps", 2.5, 1), lambda: int_param("steps", True, 1),
                 lambda: float_param("lr", True), lambda: float_param("lr", "0.1"),
                 lambda: float_param("lr", 0.0)):
        with pytest.raises(ConfigError):
            call()
