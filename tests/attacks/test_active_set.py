"""The active-set helper (engine.ActiveSet) and the layout of the attack package: the rows
still attacked are gathered, retired and scattered back correctly, attacks that compact
their batch give every point the result it gets in any other batch, the objectives and
the engine never import the template, and a broken attack module fails the import."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import robustlab.attacks
from robustlab.attacks import ActiveSet, ThreatModel, available, create
from tests.attacks.helpers import gen, linear_model

ATTACKS_DIR = Path(robustlab.attacks.__file__).parent


def test_gather_retire_scatter_keep_rows_aligned_with_the_full_batch():
    act = ActiveSet(torch.tensor([True, False, True, True, False, True]))
    assert act.rows.tolist() == [0, 2, 3, 5] and len(act) == 4 and act.n == 6 and act
    full = torch.arange(6.0) * 10
    xa = act.gather(full)
    assert xa.tolist() == [0.0, 20.0, 30.0, 50.0]
    assert act.gather(None) is None
    # rows 2 and 5 of the batch are done: they leave, the state follows
    done = torch.tensor([False, True, False, True])
    xa, none, ya = act.retire(done, xa, None, torch.tensor([7, 8, 9, 10]))
    assert act.rows.tolist() == [0, 3] and xa.tolist() == [0.0, 30.0] and ya.tolist() == [7, 9]
    assert none is None
    out = torch.zeros(6)
    act.scatter(out, torch.tensor([1.0, 2.0]))
    assert out.tolist() == [1.0, 0.0, 0.0, 2.0, 0.0, 0.0]
    act.scatter(out, torch.tensor([5.0, 6.0]), torch.tensor([False, True]))  # only where True
    assert out.tolist() == [1.0, 0.0, 0.0, 6.0, 0.0, 0.0]
    flags = torch.zeros(6, dtype=torch.bool)
    act.scatter(flags, True, torch.tensor([True, False]))  # a scalar fills
    assert flags.tolist() == [True, False, False, False, False, False]
    act.retire(torch.tensor([True, True]))
    assert not act and len(act) == 0 and act.rows.tolist() == []


def test_retire_with_nothing_done_hands_the_state_back_untouched():
    act = ActiveSet.everyone(3, "cpu")
    a, b = torch.rand(3), torch.rand(3, 2)
    out = act.retire(torch.zeros(3, dtype=torch.bool), a, b)
    assert out[0] is a and out[1] is b and act.rows.tolist() == [0, 1, 2]


def test_a_loop_that_retires_rows_records_what_the_full_batch_loop_records():
    # each row grows by its own rate and stops at 1; record the step it got there and
    # its value then: compaction must give every row exactly its own history
    rate = torch.rand(50, generator=gen(0)) * 0.3 + 0.01
    v_full, first_full = torch.zeros(50), torch.full((50,), -1)
    for step in range(200):
        v_full = torch.where(first_full < 0, v_full + rate, v_full)
        first_full = torch.where((first_full < 0) & (v_full >= 1), step, first_full)
    act = ActiveSet(torch.ones(50, dtype=torch.bool))
    v, r = torch.zeros(50), rate.clone()
    first, value = torch.full((50,), -1), torch.zeros(50)
    for step in range(200):
        if not act:
            break
        v = v + r
        hit = v >= 1
        act.scatter(first, step, hit)
        act.scatter(value, v, hit)
        v, r = act.retire(hit, v, r)
    assert not act  # every row reached 1 before the loop ended
    assert torch.equal(first, first_full) and torch.equal(value, v_full)


@pytest.mark.parametrize(
    "name,params,norm,eps",
    [
        ("pgd", {"steps": 20, "random_start": False, "loss": "margin", "targets": 3}, "linf", 0.05),
        ("fab", {"n_iter": 20}, "l2", 0.3),
        ("cw-l2", {"steps": 40, "binary_search_steps": 3}, "l2", 0.3),
    ],
)
def test_a_point_gets_the_same_result_in_any_batch(name, params, norm, eps):
    # deterministic attacks that drop broken (or stalled) rows as they go: a point's
    # result must not depend on which other points were dropped around it
    lin = linear_model(d=10, k=4, seed=2).double()
    x = torch.rand(60, 10, generator=gen(3), dtype=torch.float64)
    y = lin(x).argmax(1).detach()
    threat = ThreatModel(norm, eps)
    whole = create(name, **params)(lin, x, y, threat)
    assert 0 < int(whole.success.sum()) < len(x)  # some rows retire early, some never
    part = slice(1, 60, 3)
    alone = create(name, **params)(lin, x[part], y[part], threat)
    assert torch.equal(alone.success, whole.success[part])
    assert torch.allclose(alone.x_adv, whole.x_adv[part], rtol=0, atol=1e-12)


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_objectives_and_engine_never_import_the_template():
    # arrows point one way: base -> {engine, losses}; engine -> threat; losses -> nothing
    engine = {m for m in _imported_modules(ATTACKS_DIR / "engine.py") if m.startswith("robustlab.attacks")}
    losses = {m for m in _imported_modules(ATTACKS_DIR / "losses.py") if m.startswith("robustlab.attacks")}
    assert losses == set()
    assert engine and all(m.startswith("robustlab.attacks.threat") for m in engine), engine
    base = _imported_modules(ATTACKS_DIR / "base.py")
    assert "robustlab.attacks.engine" in base and "robustlab.attacks.losses" in base


def test_every_attack_is_registered_on_import():
    assert set(available()) == {
        "apgd", "apgd-ce", "apgd-dlr", "apgd-t", "cw-l2", "cwa", "ensemble", "eot", "fab", "fab-t",
        "fast", "fgsm", "mi-fgsm", "pgd", "pma", "rand", "square", "standard",
    }


@pytest.mark.parametrize("module", ["fab", "square", "cw"])
def test_a_broken_attack_module_fails_the_import_loudly(module):
    # sys.modules[name] = None makes importing that module raise ImportError
    code = (
        f"import sys; sys.modules['robustlab.attacks.{module}'] = None\n"
        "try:\n    import robustlab.attacks\nexcept ImportError:\n    sys.exit(3)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
